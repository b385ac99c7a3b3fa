"""Random: ``retention`` of the visual tokens uniformly at random, seeded by ``seed`` and the input."""
from __future__ import annotations

from ..evidence import budget, random_keep
from .base import Method
from .common import budget_stage


class Random(Method):
    name = "random"
    label = "Random"
    side = "vision"
    fixed_budget = True
    stages = {"random": "vision"}
    stage_labels = {"random": "Random"}
    seeded_by_input = True

    def stage1(self, vis, stats, cfg, input_seed: int = 0):
        n = vis.n
        keep = random_keep(n, budget(n, cfg.retention), (cfg.seed * 1_000_003 + input_seed) % 2**31)
        return keep, vis.embeds, budget_stage("random", None, list(range(n)), None, keep)
