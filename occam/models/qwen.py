"""Qwen2.5-VL (Qwen2_5_VLForConditionalGeneration) and Qwen3-VL (Qwen3VLForConditionalGeneration).

Reads: the ViT (14- or 16-px patches; no CLS, no explicit registers: emergent high-norm patches are the
registers), whose last block feeds a 2x2 patch merger. Stage I scores the last block's attention at
patch level (its own norm1, fused qkv, vision rotary and scale) and averages the 4 patches of each merged
token. Qwen2.5-VL runs its blocks in a window-permuted order (the model's ``get_vision_window_index``);
statistics are put back in raster order. Qwen3-VL adds deepstack features to the first decoder layers at
the visual positions: the engine cuts them with the kept tokens. Positions are 3-D M-RoPE ids from the
model's own ``get_rope_index``.
Video: frames are paired into temporal patches by the processor; the model's own ``get_video_features``
encodes them and its ViT attends within each temporal patch (one ``cu_seqlens`` segment per patch), so
Stage I scores each temporal patch ("frame" in the trace) separately, with its own emergent registers.
M-RoPE positions come from ``get_rope_index`` with ``video_grid_thw`` (and Qwen2.5-VL's
``second_per_grid_ts``); Qwen3-VL's prompt puts a ``<t seconds>`` text stamp before every temporal patch.
Modifies: nothing (see ``base``).
"""
from __future__ import annotations

import torch
from transformers.vision_utils import get_vision_window_index

from ..geometry import grid_boxes, scale_to
from ..types import CapturedLayer, Prepared, VisionOutput, VisionStats
from ..registers import emergent_registers
from .base import Adapter, rotary_function, vision_token_stats


class QwenAdapter(Adapter):
    family = "qwen2_5_vl"
    mrope = True
    takes_video = True

    def setup(self, model) -> None:
        self.visual = model.model.visual
        self.layer_index = len(self.visual.blocks) - 1
        self.merge = self.visual.spatial_merge_size
        self.rotate = rotary_function(self.vision_layer().attn, "apply_rotary_pos_emb_vision")   # looked up once

    def vision_layer(self) -> torch.nn.Module:
        return self.visual.blocks[self.layer_index]

    def video_sampling(self) -> dict:
        """2 frames per second like the Qwen video processors, clamped to 4..16 frames (ours: they allow 768)."""
        return {"num_frames": None, "fps": 2.0, "min_frames": 4, "max_frames": 16, "multiple": 2}

    def prepare_video(self, video, question: str) -> Prepared:
        prompt = self.build_prompt(question, "video")
        inputs = self.processor(videos=[list(video.frames)], text=[prompt], return_tensors="pt",
                                video_timestamps=[list(video.timestamps)])
        return Prepared(self._to_device(inputs), video.size, prompt, video=video)

    def positions(self, prep: Prepared) -> torch.Tensor:
        inp = prep.inputs
        extra = {"second_per_grid_ts": inp["second_per_grid_ts"]} if "second_per_grid_ts" in inp else {}
        pos, _ = self.model.model.get_rope_index(
            inp["input_ids"], mm_token_type_ids=inp.get("mm_token_type_ids"), image_grid_thw=inp.get("image_grid_thw"),
            video_grid_thw=inp.get("video_grid_thw"), attention_mask=inp.get("attention_mask"), **extra)
        return pos[:, 0]

    def _window_order(self, grid_thw: torch.Tensor) -> torch.Tensor | None:
        vc = self.visual.config
        window_index, _ = get_vision_window_index(grid_thw, self.merge, vc.window_size, vc.patch_size)
        return window_index

    def encode(self, prep: Prepared) -> VisionOutput:
        return self.encode_batch([prep])[0]

    def encode_batch(self, preps: list[Prepared]) -> list[VisionOutput]:
        """All images in one tower call (their patches packed, one grid row each, as the tower takes them);
        each video alone. The captured layer is cut back into each image's own patches: the blocks keep
        every image's patches contiguous (the window order too) and attend within the image."""
        images = [i for i, p in enumerate(preps) if p.video is None]
        out: dict[int, VisionOutput] = {}
        if images:
            thw = torch.cat([preps[i].inputs["image_grid_thw"] for i in images])
            with self.probe.capture() as cap:
                res = self.model.model.get_image_features(
                    torch.cat([preps[i].inputs["pixel_values"] for i in images]), thw, return_dict=True)
            sizes = [int(n) for n in thw.prod(dim=-1).tolist()]         # patches per image
            start = 0
            for j, i in enumerate(images):
                sl = slice(start, start + sizes[j])
                start += sizes[j]
                cos, sin = cap["kwargs"]["position_embeddings"]
                captured = CapturedLayer(cap["input"][sl], cap["output"][sl], {"position_embeddings": (cos[sl], sin[sl])},
                                         self.probe.module, thw=thw[j:j + 1])
                out[i] = self._output(preps[i], res, j, captured)
        for i, prep in enumerate(preps):
            if i not in out:
                thw = prep.inputs["video_grid_thw"]
                with self.probe.capture() as cap:
                    res = self.model.model.get_video_features(prep.inputs["pixel_values_videos"], thw, return_dict=True)
                out[i] = self._output(prep, res, None, CapturedLayer(cap["input"], cap["output"], cap["kwargs"],
                                                                  self.probe.module, thw=thw))
        return [out[i] for i in range(len(preps))]

    def _output(self, prep: Prepared, res, j: int | None, captured: CapturedLayer) -> VisionOutput:
        """Image j's visual tokens from a tower call's result ``res`` (j None: all of it, one video), their
        layout, and its captured layer."""
        def part(f):   # a result per input (a tuple), or one tensor
            if not isinstance(f, (list, tuple)):
                return f
            return f[j] if j is not None else torch.cat(list(f), dim=0)

        embeds = part(res.pooler_output)
        deepstack = getattr(res, "deepstack_features", None)
        if deepstack:
            deepstack = [part(f) for f in deepstack]
        t, gh, gw = captured.thw[0].tolist()             # one host read, not three
        w, h = prep.image_size
        rows, cols = gh // self.merge, gw // self.merge
        boxes, grid = self.cached_layout((w, h, t, gh, gw), lambda: self._layout(w, h, t, rows, cols))
        frame = frame_times = None
        if prep.video is not None:   # a temporal patch pairs frames; its time is the mean of theirs (as Qwen3-VL's prompt)
            ts, tp = list(prep.video.timestamps), self.visual.config.temporal_patch_size
            ts += [ts[-1]] * (t * tp - len(ts))                     # the processor repeats the last frame
            frame_times = [(ts[i * tp] + ts[i * tp + tp - 1]) / 2 for i in range(t)]
            frame = torch.arange(t).repeat_interleave(rows * cols)
        return VisionOutput(embeds=embeds, boxes=boxes, grid=grid, kinds=["patch"] * embeds.shape[0],
                            layer=self.layer_index, deepstack=deepstack or None, captured=captured,
                            frame=frame, frame_times=frame_times)

    def _layout(self, w: int, h: int, t: int, rows: int, cols: int) -> tuple[list, list]:
        """Boxes and [frame, row, col] of the merged tokens of t temporal patches of rows x cols."""
        cell = self.merge * self.visual.config.patch_size
        aff = scale_to(w, h, cols * cell, rows * cell)
        boxes = grid_boxes(aff, w, h, rows, cols, cell, cell) * t
        return boxes, [[f, r, c] for f in range(t) for r in range(rows) for c in range(cols)]

    def stats(self, vis: VisionOutput, cfg) -> VisionStats:
        cap = vis.captured
        thw, x_in, x_out = cap.thw, cap.input, cap.output   # x: (T, C) patches, in the blocks' order
        unit = self.merge ** 2
        n = x_in.shape[0] // unit
        block = cap.module
        attn = block.attn
        cos, sin = cap.kwargs["position_embeddings"]
        # the ViT attends within each temporal patch (one segment for an image): score each segment alone,
        # with its own emergent registers; the window order keeps segments contiguous and in time order
        segments = [int(h) * int(w) for t, h, w in thw.tolist() for _ in range(int(t))] \
            if vis.frame is not None else [x_in.shape[0]]
        parts, regs_parts, start = [], [], 0
        for size in segments:
            sl = slice(start, start + size)
            start += size
            ones = torch.ones(1, size, dtype=torch.bool, device=x_out.device)
            r = emergent_registers(x_out[sl][None], ones, size, cfg.kappa, cfg.max_register_frac)
            qkv = attn.qkv(block.norm1(x_in[sl])).reshape(size, 3, attn.num_heads, -1).permute(1, 0, 2, 3)
            q, k = self.rotate(qkv[0], qkv[1], cos[sl], sin[sl])
            parts.append(vision_token_stats(q.transpose(0, 1)[None], k.transpose(0, 1)[None], attn.scaling, r, None,
                                            cfg.attn_chunk))
            regs_parts.append(r[0])
        regs = torch.cat(regs_parts)
        evidence = torch.cat([p.evidence[0] for p in parts])
        reg_att = torch.cat([p.register_attention[0] for p in parts])   # 0 in a segment without registers
        order = self._window_order(thw)
        restore = (torch.argsort(order) if order is not None else torch.arange(n)).to(x_in.device)

        def merged(values: torch.Tensor) -> torch.Tensor:   # patches (window order) -> (n, unit, ...) raster order
            return values.reshape(n, unit, *values.shape[1:])[restore]

        norms = x_out.float().norm(dim=-1)
        per_token = torch.stack([merged(evidence).mean(1), merged(reg_att).mean(1), merged(regs.float()).amax(1),
                                 merged(norms).amax(1)], dim=-1)
        host = torch.cat([per_token.flatten(), evidence, regs.float()]).cpu()    # one transfer
        per_token, patch_ev, patch_regs = host[:4 * n].view(n, 4), host[4 * n:4 * n + regs.numel()], \
            host[4 * n + regs.numel():].bool()
        keys = None
        if cfg.needs_keys:   # only some methods read the keys (VisionZip, temporal repeats)
            keys = merged(torch.cat([p.keys[0] for p in parts])).float().mean(1)
        return VisionStats(
            evidence=per_token[:, 0], registers=per_token[:, 2].bool(), register_source="emergent",
            register_values=patch_ev[patch_regs],
            register_attention=per_token[:, 1] if patch_regs.any() else None,
            cls_attention=per_token[:, 0],        # no [CLS]: VisionZip ranks by attention received
            keys=keys, norms=per_token[:, 3],
            register_frame=torch.arange(len(segments)).repeat_interleave(
                torch.tensor([int(r.sum()) for r in patch_regs.split(segments)])) if vis.frame is not None else None)


class Qwen3Adapter(QwenAdapter):
    family = "qwen3_vl"

    def _window_order(self, grid_thw: torch.Tensor) -> torch.Tensor | None:
        return None
