"""Pieces several methods share: forced registers, thresholds and budgets, fixed-budget traces."""
from __future__ import annotations

import torch

from ..evidence import Scored, keep_by_threshold, keep_top
from ..trace import StageTrace, _floats


def forced_registers(keep_registers: str, registers: torch.Tensor, explicit: torch.Tensor) -> torch.Tensor:
    """The registers kept whatever their score (docs/method.md section 8): explicit ones, all, or none."""
    return {"explicit": explicit, "all": registers, "none": torch.zeros_like(registers)}[keep_registers]


def select_by_threshold(cfg, sc: Scored, cand: torch.Tensor, forced: torch.Tensor,
                        threshold: float) -> tuple[torch.Tensor, str | None, float | None]:
    """Keep s >= threshold among ``cand`` plus ``forced``; the floor / cap rails apply."""
    keep, rail = keep_by_threshold(sc.scores, cand, forced, threshold, cfg.min_tokens, cfg.max_tokens)
    return keep, rail, threshold


def select_top(sc: Scored, cand: torch.Tensor, forced: torch.Tensor,
               count: int) -> tuple[torch.Tensor, str | None, float | None]:
    """The same scores with a fixed ``count``; the threshold reported is the lowest kept score."""
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


def scatter(keep: torch.Tensor, vis_ids: torch.Tensor, n: int) -> torch.Tensor:
    """(n_vis,) keep of the present tokens -> (n,) kept over all visual tokens."""
    out = torch.zeros(n, dtype=torch.bool)
    out[vis_ids[keep]] = True
    return out
