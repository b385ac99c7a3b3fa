"""Target retention -> config: the one resolver the app, the benchmarks and the lmms-eval model share.

A fixed-budget method (topk, fastv, visionzip, random) keeps ``retention`` = the target of every input.
A thresholded one (OccamToken) gets alpha / beta that give the target on AVERAGE, each input keeping as
many tokens as its evidence warrants (docs/method.md section 4), from one of:
- "recommended": the model's recommended thresholds (``occam.recommended``; alpha = beta = 1 without them),
- "calibrated": a calibration on the given samples (``occam.calibration``),
- "manual": the config's own alpha / beta (the target is not used).
The full model (``none``) is returned as it is.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import recommended
from .config import OccamConfig

MODES = ("recommended", "calibrated", "manual")


@dataclass(frozen=True)
class Budget:
    """A resolved config and where its budget comes from."""
    config: OccamConfig
    source: str      # "budget", "full", "manual", "calibrated", "fallback", or the recommended file's
                     # "exact" / "interpolated" / "clamped"


def for_target(vlm, cfg: OccamConfig, target: float, mode: str = "recommended", samples: list | None = None,
               tol: float = 0.005, iters: int = 24) -> Budget:
    """``cfg`` aiming at average retention ``target`` (see the module docstring for ``mode``)."""
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target <= 1:
        raise ValueError(f"target retention {target!r} is invalid: accepted a number in (0, 1].")
    if mode not in MODES:
        raise ValueError(f"budget mode {mode!r} is invalid: accepted one of {', '.join(MODES)}.")
    spec = cfg.spec
    if spec.fixed_budget:
        return Budget(cfg.replace(retention=target), "budget")
    if not spec.thresholded:
        return Budget(cfg, "full")
    if mode == "manual":
        return Budget(cfg, "manual")
    if mode == "calibrated":
        if not samples:
            raise ValueError("A calibrated budget needs samples: a list of (image, question) pairs.")
        return Budget(vlm.calibrate(samples, target, cfg, tol=tol, iters=iters), "calibrated")
    rec: Any = getattr(vlm, "recommended", None)
    if rec is None:
        return Budget(cfg.replace(**recommended.FALLBACK), "fallback")
    alpha, beta, how = rec.thresholds(target)
    return Budget(cfg.replace(alpha=alpha, beta=beta), how)
