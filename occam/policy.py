"""Method policy: which visual tokens each stage keeps, for OccamToken and every baseline.

Tensors and a config in, a keep mask and a ``StageTrace`` out; no model, no transformers. The
engine (``occam.engine``) computes the statistics and removes the tokens; this file decides.
"""
from __future__ import annotations

import torch

from .config import OccamConfig
from .evidence import (Scored, budget, keep_by_threshold, keep_top, random_keep, relative_evidence,
                       relative_evidence_by_group, temporal_repeats, visionzip_groups)
from .models.base import VisionOutput, VisionStats
from .trace import StageTrace, _floats


def forced_registers(cfg: OccamConfig, registers: torch.Tensor, explicit: torch.Tensor) -> torch.Tensor:
    """The registers kept whatever their score (METHOD.md section 8): explicit ones, all, or none."""
    return {"explicit": explicit, "all": registers, "none": torch.zeros_like(registers)}[cfg.keep_registers]


def stage1(vis: VisionOutput, stats: VisionStats | None, cfg: OccamConfig,
           input_seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, StageTrace | None]:
    """Stage I (or a vision-side baseline): (keep (N,), the LM input embeddings, trace or None).

    ``input_seed`` makes the random baseline's mask depend on the input as well as on ``cfg.seed``.
    """
    n = vis.n
    if cfg.method == "random":
        keep = random_keep(n, budget(n, cfg.retention), (cfg.seed * 1_000_003 + input_seed) % 2**31)
        return keep, vis.embeds, budget_stage("random", None, list(range(n)), None, keep)
    if cfg.method == "visionzip":
        return _visionzip(vis, stats, cfg)
    if not (cfg.method in ("occam", "topk") and cfg.stage1):
        return torch.ones(n, dtype=torch.bool), vis.embeds, None
    newline = torch.tensor([k == "newline" for k in vis.kinds], dtype=torch.bool)
    regs = stats.registers
    forced = forced_registers(cfg, regs, stats.explicit)
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
    keep, rail, threshold = select(cfg, sc, select_from, forced, cfg.alpha,
                                   budget(n, cfg.stage1_share(cfg.retention)))
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


def _visionzip(vis: VisionOutput, stats: VisionStats, cfg: OccamConfig):
    """VisionZip: dominant tokens by [CLS] attention, contextual tokens merged into evenly spread targets."""
    n = vis.n
    total = budget(n, cfg.retention)
    n_ctx = min(total - 1, round(total * cfg.visionzip_contextual)) if total > 1 else 0
    dominant, assign = visionzip_groups(stats.cls_attention, stats.keys, total - n_ctx, n_ctx)
    targets = torch.unique(assign[assign >= 0])
    keep = dominant.clone()
    keep[targets] = True
    embeds = vis.embeds.clone()
    if targets.numel():   # each target becomes the mean of the tokens merged into it: one (targets x N) matmul
        members = torch.nonzero(assign >= 0).flatten()
        weights = torch.zeros(targets.numel(), n)
        weights[torch.searchsorted(targets, assign[members]), members] = 1.0
        weights /= weights.sum(dim=1, keepdim=True)
        dev = embeds.device
        embeds[targets.to(dev)] = (weights.to(dev) @ vis.embeds.float()).to(embeds.dtype)
    st = budget_stage("visionzip", vis.layer, list(range(n)), stats.cls_attention, keep)
    st.merged_into = [int(a) if a >= 0 and a != j else None for j, a in enumerate(assign.tolist())]
    return keep, embeds, st


def stage2(attention: torch.Tensor, vis_ids: torch.Tensor, n: int, stats: VisionStats | None, sinks: torch.Tensor,
           cfg: OccamConfig, layer: int) -> tuple[torch.Tensor, StageTrace]:
    """Stage II (or FastV) at decoder layer K over the n_vis visual tokens still present.

    attention: (n_vis,) mean attention of the query rows to each present token; vis_ids: (n_vis,) which
    visual token (0..n-1) each is; sinks: (n_vis,) bool, LM sinks among them. Returns (keep (n_vis,), trace).
    """
    n_vis = vis_ids.numel()
    all_scores = torch.full((n,), float("nan"))
    if cfg.method == "fastv":
        keep = keep_top(attention, torch.ones(n_vis, dtype=torch.bool), budget(n, cfg.retention))
        all_scores[vis_ids] = attention
        return keep, budget_stage("fastv", layer, vis_ids.tolist(), all_scores, _scatter(keep, vis_ids, n))
    no = torch.zeros(n_vis, dtype=torch.bool)
    stage1_regs = stats.registers[vis_ids] if stats is not None else no
    regs = stage1_regs | sinks
    forced = forced_registers(cfg, regs, stats.explicit[vis_ids] if stats is not None else no)
    cand = ~forced
    sc = relative_evidence(attention, cand, regs, cfg.reference)
    keep, rail, threshold = select(cfg, sc, cand, forced, cfg.beta, budget(n, cfg.retention))
    source = stats.register_source if stats is not None else "none"
    sources = [s for s, on in ((source, stage1_regs.any()), ("sink", sinks.any())) if on]
    all_scores[vis_ids] = sc.scores
    return keep, StageTrace(
        name="stage2", layer=layer, n_in=n_vis, n_out=int(keep.sum()), candidates=vis_ids[cand].tolist(),
        registers=vis_ids[regs].tolist(), register_source="+".join(sources) or "none",
        reference_kind=sc.reference_kind, reference=sc.reference, threshold=threshold,
        scores=_floats(all_scores), kept=_scatter(keep, vis_ids, n).tolist(), rail=rail,
        content_left=int((keep & ~regs).sum()))


def select(cfg: OccamConfig, sc: Scored, cand: torch.Tensor, forced: torch.Tensor, threshold: float,
           count: int) -> tuple[torch.Tensor, str | None, float | None]:
    """occam: keep s >= threshold (rails apply); topk: the same scores with a fixed ``count``."""
    if cfg.method == "occam":
        keep, rail = keep_by_threshold(sc.scores, cand, forced, threshold, cfg.min_tokens, cfg.max_tokens)
        return keep, rail, threshold
    keep = keep_top(sc.scores, cand, count, forced)
    return keep, None, lowest(sc.scores, keep & cand)


def lowest(scores: torch.Tensor, mask: torch.Tensor) -> float | None:
    """The lowest finite score among ``mask`` (the effective threshold of a fixed budget), or None."""
    vals = scores[mask]
    vals = vals[torch.isfinite(vals)]
    return float(vals.min()) if vals.numel() else None


def budget_stage(name: str, layer: int | None, candidates: list[int], scores: torch.Tensor | None,
                 kept: torch.Tensor) -> StageTrace:
    """Trace of a fixed-budget stage (random, visionzip, fastv): no register reference.

    scores: (N,) per visual token (NaN where not scored) or None; kept: (N,) after the stage.
    """
    n = kept.numel()
    scores = torch.full((n,), float("nan")) if scores is None else scores.float()
    return StageTrace(name=name, layer=layer, n_in=len(candidates), n_out=int(kept.sum()), candidates=candidates,
                      registers=[], register_source="none", reference_kind="budget", reference=None,
                      threshold=lowest(scores, kept), scores=_floats(scores), kept=kept.tolist(),
                      content_left=int(kept.sum()))


def _scatter(keep: torch.Tensor, vis_ids: torch.Tensor, n: int) -> torch.Tensor:
    """(n_vis,) keep of the present tokens -> (n,) kept over all visual tokens."""
    out = torch.zeros(n, dtype=torch.bool)
    out[vis_ids[keep]] = True
    return out
