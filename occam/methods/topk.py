"""Top-K: OccamToken's scores at both stages with a fixed budget (the paper's fixed-budget ablation)."""
from __future__ import annotations

from .common import select_top
from .occam import OccamToken


class TopK(OccamToken):
    name = "topk"
    label = "Top-K (fixed budget)"
    thresholded = False
    fixed_budget = True

    def select(self, cfg, sc, cand, forced, threshold: float, count: int):
        return select_top(sc, cand, forced, count)
