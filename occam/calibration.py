"""Calibration: the alpha / beta that give a target AVERAGE retention (docs/method.md section 4)."""
from __future__ import annotations

import math
from typing import Any, Iterable

import torch

from .config import OccamConfig
from .evidence import keep_by_threshold
from .trace import Trace


def calibrate(vlm, samples: Iterable[tuple[Any, str]], target: float, config: OccamConfig | None = None,
              tol: float = 0.005, iters: int = 24) -> OccamConfig:
    """alpha / beta giving a target AVERAGE retention over ``samples`` (docs/method.md section 4).

    Bisection on log(alpha) with Stage II off (target t ** stage_split when both stages are on, t otherwise),
    then on log(beta) with that alpha. A stage's scores do not depend on its own threshold, so each
    sample is run once per stage and the bisection works on its traced scores; one more pass checks
    the result, and only if it disagrees (NeXT row-end tokens, scores at a rounding edge) does the
    bisection fall back to full runs (``iters`` steps). Returns ``config`` with the found alpha and beta.
    """
    cfg = OccamConfig(method="occam") if config is None else config
    if not cfg.spec.thresholded:
        raise ValueError(f"calibrate() tunes the thresholds of method='occam', got method={cfg.method!r}.")
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target <= 1:
        raise ValueError(f"target={target!r} is invalid: accepted a retention in (0, 1].")
    samples = list(samples)
    if not samples:
        raise ValueError("calibrate() needs at least one (image, question) sample.")

    def traces(c: OccamConfig) -> list[Trace]:
        images, questions = [img for img, _ in samples], [q for _, q in samples]
        return [r.trace for r in vlm.generate_batch(images, questions, c, max_new_tokens=0)]

    def mean_retention(ts: list[Trace]) -> float:
        return sum(t.counts["retention"] for t in ts) / len(ts)

    def bisect(retention_at, goal: float, steps: int) -> float:
        lo, hi = math.log(1e-4), math.log(1e4)   # retention falls as the threshold rises
        best, err = 0.0, math.inf
        for _ in range(steps):
            mid = (lo + hi) / 2
            r = retention_at(math.exp(mid))
            if abs(r - goal) < err:
                best, err = mid, abs(r - goal)
            if err <= tol:
                break
            lo, hi = (mid, hi) if r > goal else (lo, mid)
        return math.exp(best)

    def solve(field: str, base: OccamConfig, goal: float) -> OccamConfig:
        stage = "stage1" if field == "alpha" else "stage2"
        seen = traces(base)
        predicted = lambda t: sum(retention_at(tr, stage, t, base) for tr in seen) / len(seen)  # noqa: E731
        found = base.replace(**{field: snap(bisect(predicted, goal, 60), seen, stage)})
        r = mean_retention(traces(found))
        if abs(r - goal) <= tol or abs(r - predicted(getattr(found, field))) < 1e-9:
            return found
        return base.replace(**{field: bisect(lambda t: mean_retention(traces(base.replace(**{field: t}))),
                                             goal, iters)})

    use_stage2 = cfg.stage2
    if cfg.stage1:
        goal1 = cfg.stage1_share(target)
        cfg = solve("alpha", cfg.replace(stage2=False), goal1).replace(stage2=use_stage2)
    if use_stage2:
        cfg = solve("beta", cfg, target)
    return cfg


def snap(threshold: float, traces: list[Trace], stage: str) -> float:
    """The geometric middle of the gap between traced scores that ``threshold`` falls in.

    Retention only changes at a score, so every threshold in the gap keeps the same tokens; the middle
    is the one farthest from the scores (traced to 6 digits), so a real run keeps what was predicted.
    """
    scores = sorted({v for tr in traces for v in tr.stage(stage).scores if v is not None and v > 0})
    below = [v for v in scores if v < threshold]
    above = [v for v in scores if v >= threshold]
    if not below or not above:
        return threshold
    return math.sqrt(below[-1] * above[0])


def retention_at(trace: Trace, stage: str, threshold: float, cfg: OccamConfig) -> float:
    """Retention the traced run would have had with ``threshold`` for ``stage`` (same selection rule)."""
    st = trace.stage(stage)
    n = trace.num_visual
    scores = torch.tensor([math.nan if v is None else v for v in st.scores])
    cand, forced = torch.zeros(n, dtype=torch.bool), torch.tensor(st.kept, dtype=torch.bool)
    cand[st.candidates] = True
    forced &= ~cand                 # kept and not competing: forced registers (and NeXT row-end tokens, stage I)
    keep, _ = keep_by_threshold(scores, cand, forced, threshold, cfg.min_tokens, cfg.max_tokens)
    return int(keep.sum()) / n
