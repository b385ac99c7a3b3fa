"""What a pruning method is: the one interface every method module implements.

A method says what it needs (vision statistics, the scored layer's keys, LM sinks), where it cuts
(its Stage-I selection at the vision output, its cut at a decoder layer K), which query rows its
Stage II reads, and how it selects. The engine and the adapters ask the method; they name none.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..trace import StageTrace

if TYPE_CHECKING:   # for hints only: occam.config imports this package
    from ..config import OccamConfig
    from ..types import VisionOutput, VisionStats


class Method:
    """A method with nothing to do: the unmodified model (``none``). Subclasses override what they use."""

    name = "none"
    label = "Full model"
    side = "none"              # where it removes tokens: "none", "vision", "language" or "both"
    fixed_budget = False       # whether ``retention`` is its budget (else thresholds decide the count)
    thresholded = False        # whether alpha / beta decide (OccamToken)
    stages: dict[str, str] = {}   # trace stage name -> "vision" (before the LM) or "language" (at layer K)
    stage_labels: dict[str, str] = {}   # trace stage name -> its name on the page ("Stage I", "FastV", ...)
    layer_field: str | None = None   # the OccamConfig field naming its decoder layer K, if it cuts there
    reads_sinks = False        # whether its Stage II adds LM sinks at layer K to the reference
    seeded_by_input = False    # whether its selection depends on a digest of the input (random)

    @property
    def prunes(self) -> bool:
        """Whether it removes any token (every method but the unmodified model)."""
        return self.side != "none"

    # -- what it needs ---------------------------------------------------------------------------------
    def uses_stage2(self, cfg: OccamConfig) -> bool:
        """Whether the run cuts inside the language model (at ``cfg.decoder_layer``)."""
        return False

    def needs_vision_stats(self, cfg: OccamConfig) -> bool:
        """Whether the run needs the scored vision layer's statistics."""
        return False

    def needs_keys(self, cfg: OccamConfig) -> bool:
        """Whether the statistics must include the scored layer's keys (costly on large inputs)."""
        return False

    def query_rows(self, n_query: int) -> int:
        """How many of the last prompt rows its Stage II reads (``n_query``: the text after the image)."""
        return n_query

    def stage1_share(self, cfg: OccamConfig, target: float) -> float:
        """The retention its vision-side selection aims at for an overall target."""
        return target

    def validate(self, cfg: OccamConfig) -> None:
        """Raise ValueError when ``cfg``'s knobs make no sense for this method."""

    # -- what it does ----------------------------------------------------------------------------------
    def stage1(self, vis: VisionOutput, stats: VisionStats | None, cfg: OccamConfig,
               input_seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, StageTrace | None]:
        """(keep (N,), the LM input embeddings, trace or None) at the vision output."""
        return torch.ones(vis.n, dtype=torch.bool), vis.embeds, None

    def stage2(self, attention: torch.Tensor, vis_ids: torch.Tensor, n: int, stats: VisionStats | None,
               sinks: torch.Tensor, cfg: OccamConfig, layer: int) -> tuple[torch.Tensor, StageTrace]:
        """(keep (n_vis,), trace) at decoder layer K over the visual tokens still present.

        attention: (n_vis,) mean attention of the query rows to each present token; vis_ids: (n_vis,)
        which visual token (0..n-1) each is; sinks: (n_vis,) bool, LM sinks among them."""
        raise NotImplementedError(f"method {self.name!r} does not cut inside the language model")
