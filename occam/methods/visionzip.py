"""VisionZip (Yang et al. 2025): dominant tokens by [CLS] attention at the feature layer, plus contextual
tokens merged by key similarity into evenly spread targets; a fixed budget."""
from __future__ import annotations

import torch

from ..evidence import budget, visionzip_groups
from .base import Method
from .common import budget_stage


class VisionZip(Method):
    name = "visionzip"
    label = "VisionZip"
    side = "vision"
    fixed_budget = True
    stages = {"visionzip": "vision"}
    stage_labels = {"visionzip": "VisionZip"}

    def needs_vision_stats(self, cfg) -> bool:
        return True

    def needs_keys(self, cfg) -> bool:
        return True

    def stage1(self, vis, stats, cfg, input_seed: int = 0):
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
