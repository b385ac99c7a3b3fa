"""Qwen2.5-VL (Qwen2_5_VLForConditionalGeneration) and Qwen3-VL (Qwen3VLForConditionalGeneration).

Reads: the ViT (14- or 16-px patches; no CLS, no explicit registers: emergent high-norm patches are the
registers), whose last block feeds a 2x2 patch merger. Stage I scores the last block's attention at
patch level (its own norm1, fused qkv, vision rotary and scale) and averages the 4 patches of each merged
token. Qwen2.5-VL runs its blocks in a window-permuted order (the model's ``get_vision_window_index``);
statistics are put back in raster order. Qwen3-VL adds deepstack features to the first decoder layers at
the visual positions: the engine cuts them with the kept tokens. Positions are 3-D M-RoPE ids from the
model's own ``get_rope_index``.
Modifies: nothing (see ``base``).
"""
from __future__ import annotations

import torch
from transformers.vision_utils import get_vision_window_index

from ..geometry import grid_boxes, scale_to
from .base import Adapter, Prepared, VisionOutput, VisionStats, emergent_registers, rotary_function, vision_token_stats


class QwenAdapter(Adapter):
    family = "qwen2_5_vl"
    mrope = True

    def __init__(self, model, processor):
        self.visual = model.model.visual
        self.layer_index = len(self.visual.blocks) - 1
        self.merge = self.visual.spatial_merge_size
        super().__init__(model, processor)

    def vision_layer(self) -> torch.nn.Module:
        return self.visual.blocks[self.layer_index]

    def positions(self, prep: Prepared) -> torch.Tensor:
        inp = prep.inputs
        pos, _ = self.model.model.get_rope_index(
            inp["input_ids"], mm_token_type_ids=inp.get("mm_token_type_ids"), image_grid_thw=inp["image_grid_thw"],
            attention_mask=inp.get("attention_mask"))
        return pos[:, 0]

    def _window_order(self, grid_thw: torch.Tensor) -> torch.Tensor | None:
        vc = self.visual.config
        window_index, _ = get_vision_window_index(grid_thw, self.merge, vc.window_size, vc.patch_size)
        return window_index

    def encode(self, prep: Prepared) -> VisionOutput:
        thw = prep.inputs["image_grid_thw"]
        with self.probe.capture() as cap:
            out = self.model.model.get_image_features(prep.inputs["pixel_values"], thw, return_dict=True)
        embeds = torch.cat(list(out.pooler_output), dim=0)
        deepstack = getattr(out, "deepstack_features", None)
        if deepstack:
            deepstack = [torch.cat(list(f), dim=0) if isinstance(f, (list, tuple)) else f for f in deepstack]
        t, gh, gw = (int(v) for v in thw[0])
        w, h = prep.image_size
        patch = self.visual.config.patch_size
        rows, cols = gh // self.merge, gw // self.merge
        aff = scale_to(w, h, gw * patch, gh * patch)
        boxes = grid_boxes(aff, w, h, rows, cols, self.merge * patch, self.merge * patch) * t
        grid = [[f, r, c] for f in range(t) for r in range(rows) for c in range(cols)]
        return VisionOutput(embeds=embeds, boxes=boxes, grid=grid, kinds=["patch"] * embeds.shape[0],
                            layer=self.layer_index, deepstack=deepstack or None, captured={"thw": thw, **cap})

    def stats(self, vis: VisionOutput, cfg) -> VisionStats:
        cap, thw = vis.captured, vis.captured["thw"]
        x_in, x_out = cap["input"], cap["output"]          # (T, C) patches, in the blocks' order
        unit = self.merge ** 2
        n = x_in.shape[0] // unit
        regs = emergent_registers(x_out, torch.ones(x_out.shape[0], dtype=torch.bool, device=x_out.device),
                                  cfg.kappa, cfg.max_register_frac)
        block = self.probe.module
        attn = block.attn
        cos, sin = cap["kwargs"]["position_embeddings"]
        qkv = attn.qkv(block.norm1(x_in)).reshape(x_in.shape[0], 3, attn.num_heads, -1).permute(1, 0, 2, 3)
        q, k = rotary_function(attn, "apply_rotary_pos_emb_vision")(qkv[0], qkv[1], cos, sin)
        st = vision_token_stats(q.transpose(0, 1), k.transpose(0, 1), attn.scaling, regs, None, cfg.attn_chunk)
        order = self._window_order(thw)
        restore = torch.argsort(order) if order is not None else torch.arange(n)

        def merged(values: torch.Tensor, how: str = "mean") -> torch.Tensor:
            v = values.reshape(n, unit, *values.shape[1:])[restore.to(values.device)].float().cpu()
            return v.any(1) if how == "any" else v.amax(1) if how == "max" else v.mean(1)

        evidence = merged(st.evidence)
        return VisionStats(
            evidence=evidence, registers=merged(regs, "any"), register_source="emergent",
            register_values=st.evidence[regs].float().cpu(),
            register_attention=merged(st.register_attention) if st.register_attention is not None else None,
            cls_attention=evidence,            # no [CLS]: VisionZip ranks by attention received
            keys=merged(st.keys), norms=merged(x_out.float().norm(dim=-1), "max"))


class Qwen3Adapter(QwenAdapter):
    family = "qwen3_vl"

    def _window_order(self, grid_thw: torch.Tensor) -> torch.Tensor | None:
        return None
