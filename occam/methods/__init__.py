"""The pruning methods, one module each, behind one interface (``Method``).

``METHODS`` (display order) is the one list the config, the engine, the app, the benchmarks, the
lmms-eval model and the tests iterate. A new method is one module plus one line here.
"""
from __future__ import annotations

from .base import Method
from .fastv import FastV
from .none import Full
from .occam import OccamToken
from .random import Random
from .topk import TopK
from .visionzip import VisionZip

REGISTRY: dict[str, Method] = {m.name: m for m in (Full(), OccamToken(), TopK(), FastV(), VisionZip(), Random())}
METHODS: tuple[str, ...] = tuple(REGISTRY)
FULL: str = Full.name                     # the unmodified model, the reference every pruned run is compared with
PRUNING_METHODS: tuple[str, ...] = tuple(n for n, m in REGISTRY.items() if m.prunes)   # all but the full model
FIXED_BUDGET_METHODS: tuple[str, ...] = tuple(n for n, m in REGISTRY.items() if m.fixed_budget)
#: what the speed benchmarks time: every method whose selection is not a control drawn from the input's digest
TIMED_METHODS: tuple[str, ...] = tuple(n for n, m in REGISTRY.items() if not m.seeded_by_input)
STAGE_SIDES: dict[str, str] = {s: side for m in REGISTRY.values() for s, side in m.stages.items()}
STAGE_LABELS: dict[str, str] = {s: label for m in REGISTRY.values() for s, label in m.stage_labels.items()}


def get(name: str) -> Method:
    """The method called ``name``; ValueError naming the accepted ones otherwise."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"Unknown method {name!r}: accepted one of {', '.join(METHODS)}.") from None


def vision_stages() -> tuple[str, ...]:
    """Trace stage names that act before the language model (Stage I, VisionZip, Random, ...)."""
    return tuple(s for s, side in STAGE_SIDES.items() if side == "vision")


def language_stages() -> tuple[str, ...]:
    """Trace stage names that act inside it, at a decoder layer K (Stage II, FastV, ...)."""
    return tuple(s for s, side in STAGE_SIDES.items() if side == "language")
