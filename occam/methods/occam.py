"""OccamToken (docs/method.md sections 1-3): register-anchored relative evidence at two stages.

Stage I keeps visual token j iff s_j = e_j / rho >= alpha at the vision output (query-free); Stage II
keeps it iff a_j / rho_q >= beta at decoder layer K, with LM sinks joining the reference.
"""
from __future__ import annotations

import torch

from ..evidence import budget, relative_evidence, relative_evidence_by_group, temporal_repeats
from ..trace import StageTrace, _floats
from .base import Method
from .common import forced_registers, scatter, select_by_threshold


class OccamToken(Method):
    name = "occam"
    label = "OccamToken"
    side = "both"
    thresholded = True
    stages = {"stage1": "vision", "stage2": "language"}
    stage_labels = {"stage1": "Stage I", "stage2": "Stage II"}
    layer_field = "stage2_layer"
    reads_sinks = True

    def uses_stage2(self, cfg) -> bool:
        return cfg.stage2

    def needs_vision_stats(self, cfg) -> bool:
        return True          # Stage II also reads the Stage-I registers

    def needs_keys(self, cfg) -> bool:
        return cfg.temporal_similarity is not None

    def stage1_share(self, cfg, target: float) -> float:
        """target ** stage_split with both stages on (ours: how a budget is split between the stages)."""
        return target ** cfg.stage_split if cfg.stage2 else target

    def validate(self, cfg) -> None:
        if not (cfg.stage1 or cfg.stage2):
            raise ValueError(f"OccamConfig.stage1={cfg.stage1!r} is invalid: accepted at least one of "
                             "stage1 / stage2 switched on.")

    def select(self, cfg, sc, cand, forced, threshold: float, count: int):
        """Thresholded (OccamToken); ``topk`` overrides this with a fixed count."""
        return select_by_threshold(cfg, sc, cand, forced, threshold)

    def stage1(self, vis, stats, cfg, input_seed: int = 0):
        n = vis.n
        if not cfg.stage1:
            return torch.ones(n, dtype=torch.bool), vis.embeds, None
        newline = torch.tensor([k == "newline" for k in vis.kinds], dtype=torch.bool)
        regs = stats.registers
        forced = forced_registers(cfg.keep_registers, regs, stats.explicit)
        cand = ~forced & ~newline
        frame_refs = frame_kinds = None
        if vis.frame is None:
            sc = relative_evidence(stats.evidence, cand, regs, cfg.reference, stats.register_values)
        else:   # video: every frame against its own reference; one threshold (or budget) over all frames (ours)
            sc, per_frame = relative_evidence_by_group(stats.evidence, cand, regs, vis.frame.cpu(), cfg.reference,
                                                       stats.register_values, stats.register_frame)
            frame_refs, frame_kinds = [p.reference for p in per_frame], [p.reference_kind for p in per_frame]
        repeats = None
        if vis.frame is not None and cfg.temporal_similarity is not None:   # video: repeats of the previous frame
            repeats = temporal_repeats(stats.keys, vis.grid, cfg.temporal_similarity) & cand
        select_from = cand if repeats is None else cand & ~repeats
        keep, rail, threshold = self.select(cfg, sc, select_from, forced, cfg.alpha,
                                            budget(n, self.stage1_share(cfg, cfg.retention)))
        if vis.row_id is not None and newline.any():  # a NeXT row-end token stays iff its row keeps a token
            rows_kept = set(vis.row_id[keep & ~newline].tolist())
            keep[newline] = torch.tensor([r in rows_kept for r in vis.row_id[newline].tolist()], dtype=torch.bool)
        return keep, vis.embeds, StageTrace(
            name="stage1", layer=vis.layer, n_in=n, n_out=int(keep.sum()),
            candidates=torch.nonzero(cand).flatten().tolist(), registers=torch.nonzero(regs).flatten().tolist(),
            register_source=stats.register_source if regs.any() else "none", reference_kind=sc.reference_kind,
            reference=sc.reference, threshold=threshold, scores=_floats(sc.scores), kept=keep.tolist(), rail=rail,
            register_attention=None if stats.register_attention is None else _floats(stats.register_attention),
            content_left=int((keep & ~regs & ~newline).sum()), frame_references=frame_refs,
            frame_reference_kinds=frame_kinds,
            repeats=None if repeats is None else torch.nonzero(repeats).flatten().tolist())

    def stage2(self, attention, vis_ids, n, stats, sinks, cfg, layer):
        n_vis = vis_ids.numel()
        all_scores = torch.full((n,), float("nan"))
        no = torch.zeros(n_vis, dtype=torch.bool)
        stage1_regs = stats.registers[vis_ids] if stats is not None else no
        regs = stage1_regs | sinks
        forced = forced_registers(cfg.keep_registers, regs, stats.explicit[vis_ids] if stats is not None else no)
        cand = ~forced
        sc = relative_evidence(attention, cand, regs, cfg.reference)
        keep, rail, threshold = self.select(cfg, sc, cand, forced, cfg.beta, budget(n, cfg.retention))
        source = stats.register_source if stats is not None else "none"
        sources = [s for s, on in ((source, stage1_regs.any()), ("sink", sinks.any())) if on]
        all_scores[vis_ids] = sc.scores
        return keep, StageTrace(
            name="stage2", layer=layer, n_in=n_vis, n_out=int(keep.sum()), candidates=vis_ids[cand].tolist(),
            registers=vis_ids[regs].tolist(), register_source="+".join(sources) or "none",
            reference_kind=sc.reference_kind, reference=sc.reference, threshold=threshold,
            scores=_floats(all_scores), kept=scatter(keep, vis_ids, n).tolist(), rail=rail,
            content_left=int((keep & ~regs).sum()))
