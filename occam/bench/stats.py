"""Small, dependency-free statistics for the benchmarks: Wilson intervals, the exact McNemar test,
Holm's step-down correction, and a paired verdict (win / loss / tie). Pure functions of counts."""
from __future__ import annotations

import math
from typing import Sequence

Z95 = 1.959963984540054  # the 97.5% quantile of the standard normal


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval (default 95%) for a proportion successes / n; (0, 1) when n = 0."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"wilson(): successes={successes} must lie in 0..n={n}.")
    p, z2 = successes / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def binom_two_sided_half(k: int, n: int) -> float:
    """Exact two-sided p-value of k successes in n fair coin flips (twice the smaller tail, capped at 1)."""
    if n == 0:
        return 1.0
    lo = min(k, n - k)
    tail = sum(math.comb(n, i) for i in range(lo + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def discordant(a: Sequence[bool], b: Sequence[bool]) -> tuple[int, int]:
    """(questions only ``a`` answers right, questions only ``b`` answers right): the paired counts."""
    if len(a) != len(b):
        raise ValueError(f"paired outcomes must cover the same questions: {len(a)} vs {len(b)}.")
    only_a = sum(1 for x, y in zip(a, b) if x and not y)
    only_b = sum(1 for x, y in zip(a, b) if y and not x)
    return only_a, only_b


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Exact McNemar p-value: a binomial test of the discordant pairs against 1/2."""
    return binom_two_sided_half(only_a, only_a + only_b)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values, in the input order (family-wise error control)."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def verdict(only_a: int, only_b: int, p_adjusted: float, level: float = 0.05) -> str:
    """'win' / 'loss' for ``a`` when the adjusted p-value is below ``level``, else 'tie'."""
    if p_adjusted >= level or only_a == only_b:
        return "tie"
    return "win" if only_a > only_b else "loss"
