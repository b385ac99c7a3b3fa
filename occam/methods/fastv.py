"""FastV (Chen et al. 2024): at decoder layer K (default 2) keep the top ``retention`` of the visual tokens
by the last prompt token's attention."""
from __future__ import annotations

import torch

from ..evidence import budget, keep_top
from .base import Method
from .common import budget_stage, scatter


class FastV(Method):
    name = "fastv"
    label = "FastV"
    side = "language"
    fixed_budget = True
    stages = {"fastv": "language"}
    stage_labels = {"fastv": "FastV"}
    layer_field = "fastv_layer"

    def uses_stage2(self, cfg) -> bool:
        return True

    def query_rows(self, n_query: int) -> int:
        return 1             # the last token only

    def stage2(self, attention, vis_ids, n, stats, sinks, cfg, layer):
        keep = keep_top(attention, torch.ones(vis_ids.numel(), dtype=torch.bool), budget(n, cfg.retention))
        all_scores = torch.full((n,), float("nan"))
        all_scores[vis_ids] = attention
        return keep, budget_stage("fastv", layer, vis_ids.tolist(), all_scores, scatter(keep, vis_ids, n))
