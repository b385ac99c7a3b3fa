"""LLaVA-1.5 (LlavaForConditionalGeneration), LLaVA-NeXT (LlavaNextForConditionalGeneration) and
Video-LLaVA (VideoLlavaForConditionalGeneration).

Reads: the vision tower (CLIP, SigLIP, or DINOv2-with-registers for the project's toy model), whose
hidden state at ``vision_feature_layer`` is projected into the language model; the encoder layer that
produces it is the scored layer (its own layer norm, q / k projections and scale). Visual tokens come
from the model's own ``get_image_features``. LLaVA-NeXT's token layout (base + anyres tiles, unpadding,
image_newline) is obtained by running the model's own ``pack_image_features`` on token indices.
Video-LLaVA: images go through its ``image_tower`` exactly as LLaVA-1.5's; a video goes through its
``video_tower`` (the same CLIP layout, applied frame by frame) via the model's own ``get_video_features``,
which keeps each frame's [CLS]: every frame gives [CLS] + patches to the language model, and the scored
layer is the video tower's layer at ``vision_feature_layer`` (a second ``Probe``).
Modifies: nothing (see ``base``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.image_processing_utils import select_best_resolution

from ..geometry import anyres_canvas, clip_affine, grid_boxes, scale_to
from ..types import CapturedLayer, Prepared, VisionOutput, VisionStats
from ..registers import emergent_registers
from .base import Adapter, Probe, vision_token_stats


def _encoder_layers(tower) -> torch.nn.ModuleList:
    for path in ("vision_model.encoder.layers", "encoder.layers", "encoder.layer"):
        obj = tower
        try:
            for name in path.split("."):
                obj = getattr(obj, name)
            return obj
        except AttributeError:
            continue
    raise TypeError(f"Unsupported vision tower {type(tower).__name__}: expected a CLIP/SigLIP/DINOv2-style encoder.")


@dataclass(frozen=True)
class ScoredLayer:
    """What Stage I reads of a CLIP / SigLIP / DINOv2 encoder layer, looked up once at construction."""
    norm: torch.nn.Module
    q_proj: torch.nn.Module
    k_proj: torch.nn.Module
    heads: int
    scale: float

    @classmethod
    def of(cls, layer: torch.nn.Module) -> "ScoredLayer":
        attn = getattr(layer, "self_attn", None) or getattr(layer, "attention")
        return cls(getattr(layer, "layer_norm1", None) or getattr(layer, "norm1"), attn.q_proj, attn.k_proj,
                   getattr(attn, "num_heads", None) or attn.num_attention_heads,
                   getattr(attn, "scaling", None) or attn.scale)


class LlavaAdapter(Adapter):
    family = "llava"

    def setup(self, model) -> None:
        cfg, vc = model.config, model.config.vision_config
        self.layers = _encoder_layers(self._image_tower(model))
        feature = cfg.vision_feature_layer
        feature = feature[-1] if isinstance(feature, (list, tuple)) else feature  # scored: the last one
        index = feature % (len(self.layers) + 1)          # into hidden_states = (embeddings, layer 0, ...)
        if index == 0:
            raise TypeError("vision_feature_layer points at the patch embeddings; there is no attention to score.")
        self.layer_index = index - 1
        self.n_registers = int(getattr(vc, "num_register_tokens", 0) or 0)   # DINOv2-with-registers
        self.offset = 1 if cfg.vision_feature_select_strategy == "default" else 0   # the LM drops [CLS]
        self.grid = vc.image_size // vc.patch_size
        self.scored = {self.vision_layer(): ScoredLayer.of(self.vision_layer())}   # module -> its parts

    @staticmethod
    def _image_tower(model) -> torch.nn.Module:
        return model.model.vision_tower

    def vision_layer(self) -> torch.nn.Module:
        return self.layers[self.layer_index]

    # -- layout of the language model's visual tokens ------------------------------------------
    def layout(self, prep: Prepared):
        """src[j] = tile * P + p for LM visual token j (-1 for a newline), boxes, grid, kinds, row ids."""
        w, h = prep.image_size
        aff, out_w, out_h = clip_affine(w, h, self.processor.image_processor)
        cell = out_w / self.grid
        patch_boxes = grid_boxes(aff, w, h, self.grid, self.grid, cell, cell)
        lead = self._lead_kinds()
        boxes = [None] * len(lead) + patch_boxes
        grid = [[0, -1, i] for i in range(len(lead))] + [[0, r, c] for r in range(self.grid) for c in range(self.grid)]
        src = torch.arange(len(boxes))
        return src, boxes, grid, lead + ["patch"] * len(patch_boxes), None

    def _lead_kinds(self) -> list[str]:
        """Kinds of the non-patch tokens that reach the LM before the patches (CLS under 'full', registers)."""
        return ["cls"] * (1 - self.offset) + ["register"] * self.n_registers

    def _features(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """The LM's visual tokens (N, D) of each image in one tower call over stacked pixel values."""
        out = self.model.model.get_image_features(pixel_values=pixel_values, return_dict=True)
        return list(out.pooler_output)

    def encode(self, prep: Prepared) -> VisionOutput:
        return self.encode_batch([prep])[0]

    def encode_batch(self, preps: list[Prepared]) -> list[VisionOutput]:
        """Images of one pixel shape go through the tower together; the scored layer is captured for all
        and each image keeps its own rows (the tower treats images independently)."""
        out: list[VisionOutput | None] = [None] * len(preps)
        groups: dict[tuple, list[int]] = {}
        for i, prep in enumerate(preps):
            groups.setdefault(tuple(prep.inputs["pixel_values"].shape[1:]), []).append(i)
        for idx in groups.values():
            with self.probe.capture() as cap:
                feats = self._features(torch.cat([preps[i].inputs["pixel_values"] for i in idx]))
            for j, i in enumerate(idx):
                out[i] = self._output(preps[i], feats[j], cap["input"][j:j + 1], cap["output"][j:j + 1])
        return out

    def _output(self, prep: Prepared, embeds: torch.Tensor, x_in: torch.Tensor, x_out: torch.Tensor) -> VisionOutput:
        key = (prep.image_size, tuple(prep.inputs["pixel_values"].shape[1:]))
        src, boxes, grid, kinds, row_id = self.cached_layout(key, lambda: self.layout(prep))
        return VisionOutput(embeds=embeds, boxes=boxes, grid=grid, kinds=kinds, layer=self.layer_index,
                            row_id=row_id, captured=CapturedLayer(x_in, x_out, module=self.probe.module, src=src,
                                                                  offset=self.offset))

    def stats(self, vis: VisionOutput, cfg) -> VisionStats:
        """Stage-I statistics per tile, one register reference for the whole image (ours for NeXT).

        Every supported tower (CLIP, SigLIP with a head token, DINOv2) puts a [CLS] token first: it is
        a query, never a register, and its attention row is VisionZip's ranking. All tiles are scored in
        one batch on the device, and the per-token results reach the host in one transfer.
        """
        cap = vis.captured
        src, x_in, x_out = cap.src, cap.input, cap.output   # (tiles, T, C)
        per_frame = vis.frame is not None        # video: tiles are frames, each with its own registers
        tiles, tokens = x_in.shape[0], x_in.shape[1]
        dev = x_in.device
        if self.n_registers:
            regs = torch.zeros(tiles, tokens, dtype=torch.bool, device=dev)
            regs[:, 1:1 + self.n_registers] = True
            source = "explicit"
        else:
            cand = torch.ones(tiles, tokens, dtype=torch.bool, device=dev)
            cand[:, 0] = False
            if per_frame:
                regs = emergent_registers(x_out, cand, tokens - 1, cfg.kappa, cfg.max_register_frac)
            else:
                regs = emergent_registers(x_out.reshape(1, tiles * tokens, -1), cand.view(1, -1), tiles * (tokens - 1),
                                          cfg.kappa, cfg.max_register_frac).view(tiles, tokens)
            source = "emergent"
        layer = self.scored[cap.module]
        h = layer.norm(x_in)
        q, k = (proj(h).view(tiles, tokens, layer.heads, -1).transpose(1, 2) for proj in (layer.q_proj, layer.k_proj))
        st = vision_token_stats(q, k, layer.scale, regs, 0, cfg.attn_chunk)
        host = torch.stack([st.evidence, st.register_attention, st.cls_attention, regs.float(),
                            x_out.float().norm(dim=-1)], dim=-1).cpu()                       # (tiles, T, 5)
        evidence, regs = host[..., 0], host[..., 3].bool()
        lm = slice(cap.offset, None)
        ok = src >= 0

        def gather(values: torch.Tensor, fill: float = float("nan")) -> torch.Tensor:   # (tiles, T) -> (N,)
            out = values.new_full((src.numel(),), fill)
            out[ok] = values[:, lm].flatten()[src[ok]]
            return out

        keys = None
        if cfg.needs_keys:   # only some methods read the keys (VisionZip, temporal repeats)
            flat, at = st.keys[:, lm].flatten(0, 1), torch.nonzero(ok).flatten()
            keys = flat.new_zeros((src.numel(), flat.shape[1])).index_copy_(
                0, at.to(dev, non_blocking=True), flat.index_select(0, src[at].to(dev, non_blocking=True)))
        return VisionStats(
            evidence=gather(evidence), registers=gather(regs.float(), 0.0).bool(), register_source=source,
            register_values=evidence[regs],
            register_attention=gather(host[..., 1]) if regs.any(dim=1).all() else None,
            cls_attention=gather(host[..., 2]), keys=keys, norms=gather(host[..., 4]),
            register_frame=torch.arange(tiles).repeat_interleave(regs.sum(dim=1)) if per_frame else None)


class LlavaNextAdapter(LlavaAdapter):
    family = "llava_next"

    def encode(self, prep: Prepared) -> VisionOutput:
        """One image at a time: its tiles (count and unpadding depend on the image's size) are one batch."""
        with self.probe.capture() as cap:
            out = self.model.model.get_image_features(pixel_values=prep.inputs["pixel_values"],
                                                      image_sizes=prep.inputs["image_sizes"], return_dict=True)
        return self._output(prep, torch.cat(list(out.pooler_output), dim=0), cap["input"], cap["output"])

    def encode_batch(self, preps: list[Prepared]) -> list[VisionOutput]:
        return [self.encode(p) for p in preps]

    def layout(self, prep: Prepared):
        """Base image tokens, then the unpadded tile grid with one image_newline token per row."""
        w, h = prep.image_size
        n_tiles = prep.inputs["pixel_values"].shape[1]          # (images, tiles, C, H, W)
        per_tile = self.grid * self.grid
        index = torch.arange(n_tiles * per_tile, dtype=torch.float32).view(n_tiles, per_tile, 1)
        packed, _ = self.model.model.pack_image_features(
            [index], prep.inputs["image_sizes"].cpu(), self.config.vision_feature_select_strategy,
            image_newline=torch.tensor([-1.0]))
        src = packed[0][:, 0].round().long()
        size = self.config.vision_config.image_size
        pinpoints = getattr(self.processor.image_processor, "image_grid_pinpoints", None) or \
            self.config.image_grid_pinpoints
        best_h, best_w = select_best_resolution((h, w), pinpoints)
        tiles_w = best_w // size
        base, canvas = scale_to(w, h, size, size), anyres_canvas(w, h, best_w, best_h)
        cell = size / self.grid
        boxes, grid, kinds, rows = [], [], [], []
        for j, s in enumerate(src.tolist()):
            if s < 0:
                boxes.append(None), kinds.append("newline"), rows.append(rows[-1] if rows else -1)
                grid.append([grid[-1][0] if grid else 1, grid[-1][1] if grid else 0, -1])
                continue
            tile, p = divmod(s, per_tile)
            r, c = divmod(p, self.grid)
            kinds.append("patch")
            if tile == 0:
                boxes.append(base.box(c * cell, r * cell, (c + 1) * cell, (r + 1) * cell, w, h))
                grid.append([0, r, c]), rows.append(-1)
            else:
                tr, tc = divmod(tile - 1, tiles_w)
                x0, y0 = tc * size + c * cell, tr * size + r * cell
                boxes.append(canvas.box(x0, y0, x0 + cell, y0 + cell, w, h))
                grid.append([tile, r, c]), rows.append(tr * self.grid + r)
        return src, boxes, grid, kinds, torch.tensor(rows)


class VideoLlavaAdapter(LlavaAdapter):
    """Video-LLaVA: LLaVA-1.5 for images (``image_tower``), frames x ([CLS] + patches) for a video."""

    family = "video_llava"
    takes_video = True

    def setup(self, model) -> None:
        super().setup(model)
        video_layer = _encoder_layers(model.model.video_tower)[self.layer_index]
        self.video_probe = Probe(video_layer)
        self.scored[video_layer] = ScoredLayer.of(video_layer)

    @staticmethod
    def _image_tower(model) -> torch.nn.Module:
        return model.model.image_tower

    def encode_batch(self, preps: list[Prepared]) -> list[VisionOutput]:
        """Images together (as LLaVA-1.5), each video alone."""
        images = [i for i, p in enumerate(preps) if p.video is None]
        out = dict(zip(images, super().encode_batch([preps[i] for i in images])))
        return [out[i] if i in out else self.encode(p) for i, p in enumerate(preps)]

    def encode(self, prep: Prepared) -> VisionOutput:
        if prep.video is None:
            return super().encode(prep)
        pv = prep.inputs["pixel_values_videos"]                     # (1, frames, C, H, W)
        with self.video_probe.capture() as cap:
            out = self.model.model.get_video_features(pixel_values_videos=pv, return_dict=True)
        embeds = out.pooler_output.flatten(0, 1)                    # (frames * (1 + P), D)
        frames = pv.shape[1]
        per = embeds.shape[0] // frames
        w, h = prep.image_size
        aff, out_w, _ = clip_affine(w, h, self.processor.image_processor)
        cell = out_w / self.grid
        patch_boxes = grid_boxes(aff, w, h, self.grid, self.grid, cell, cell)
        lead = per - len(patch_boxes)                               # [CLS] (+ explicit registers)
        kinds = (["cls"] + ["register"] * (lead - 1) + ["patch"] * len(patch_boxes)) * frames
        boxes = ([None] * lead + patch_boxes) * frames
        grid = []
        for f in range(frames):
            grid += [[f, -1, i] for i in range(lead)] + [[f, r, c] for r in range(self.grid) for c in range(self.grid)]
        frame = torch.arange(frames).repeat_interleave(per)
        return VisionOutput(embeds=embeds, boxes=boxes, grid=grid, kinds=kinds, layer=self.layer_index,
                            captured=CapturedLayer(cap["input"], cap["output"], module=self.video_probe.module,
                                                   src=torch.arange(embeds.shape[0]), offset=0),
                            frame=frame, frame_times=list(prep.video.timestamps))
