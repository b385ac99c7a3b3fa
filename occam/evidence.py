"""Relative evidence, thresholds and keep masks (docs/method.md sections 2-5). Pure tensor functions.

Conventions: a stage scores the tokens of one list (length n). ``candidates`` and ``registers`` are
bool masks of length n; the returned keep mask is a bool tensor of length n.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


ONE_SHOT_ELEMENTS = 1 << 24   # score all query rows at once while heads x rows x keys stays below this


def _softmax_chunks(q: torch.Tensor, k: torch.Tensor, scale: float, chunk: int,
                    row_positions: torch.Tensor | None):
    """softmax(q k^T * scale) for slices of the query rows: yields (H, r, S) float32 blocks in order.

    One block when heads x rows x keys <= ONE_SHOT_ELEMENTS, else blocks of at least ``chunk`` rows, so
    memory is O(H x chunk x S), never R x S per head. No host synchronisation inside.
    """
    heads, rows, length = k.shape[0], q.shape[1], k.shape[1]
    step = max(chunk, ONE_SHOT_ELEMENTS // max(1, heads * length))
    kf = k.float()
    keys = torch.arange(length, device=k.device)
    for start in range(0, rows, step):
        logits = torch.einsum("hrd,hsd->hrs", q[:, start:start + step].float(), kf) * scale
        if row_positions is not None:
            pos = row_positions[start:start + step].to(k.device)
            logits.masked_fill_(keys[None, None, :] > pos[None, :, None], float("-inf"))
        yield logits.softmax(dim=-1)


def attention_colmeans(q: torch.Tensor, k: torch.Tensor, scale: float, weights: torch.Tensor,
                       chunk: int = 256) -> torch.Tensor:
    """Several weighted means over query rows of the head-averaged softmax(q k^T * scale), in one pass.

    q, k: (B, H, T, d); weights: (B, W, T) query weights (a row sums to 1, or is 0 for an empty set).
    Returns (B, W, T) float32. Rows are taken in blocks so that B x H x rows x T stays under
    ``ONE_SHOT_ELEMENTS`` (at least ``chunk`` rows); no host synchronisation.
    """
    b, heads, rows, length = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    step = max(chunk, ONE_SHOT_ELEMENTS // max(1, b * heads * length))
    kf, w = k.float(), weights.float()
    out = torch.zeros(b, w.shape[1], length, dtype=torch.float32, device=k.device)
    for start in range(0, rows, step):
        probs = (torch.einsum("bhrd,bhsd->bhrs", q[:, :, start:start + step].float(), kf) * scale).softmax(dim=-1)
        out += torch.bmm(w[:, :, start:start + step], probs.sum(dim=1))
    return out / heads


def attention_rows(q: torch.Tensor, k: torch.Tensor, scale: float, chunk: int = 256,
                   row_positions: torch.Tensor | None = None) -> torch.Tensor:
    """Per query row, the head-averaged softmax(q k^T * scale): shape (R, S). For few rows (Stage II)."""
    blocks = [probs.mean(dim=0) for probs in _softmax_chunks(q, k, scale, chunk, row_positions)]
    return torch.cat(blocks) if blocks else torch.zeros(0, k.shape[1], device=k.device)


@dataclass(frozen=True)
class Scored:
    """Relative evidence of one stage: s = evidence / reference."""
    scores: torch.Tensor       # (n,) float; NaN where not a candidate and not a register
    reference: float
    reference_kind: str        # "register" or "mean" (requested, or the fallback when no register exists)


def relative_evidence(evidence: torch.Tensor, candidates: torch.Tensor, registers: torch.Tensor,
                      reference: str = "register", register_values: torch.Tensor | None = None) -> Scored:
    """s_j = e_j / rho, with rho the mean evidence of the registers, or of the candidates ("mean").

    ``register_values`` overrides e[registers] when the reference is taken at a finer granularity
    (Qwen: ViT patches before the 2x2 merge). With no register the reference falls back to "mean".
    """
    evidence = evidence.float()
    reg_vals = register_values.float() if register_values is not None else evidence[registers]
    if reference == "register" and reg_vals.numel() > 0:
        rho, kind = reg_vals.mean(), "register"
    else:
        cand = evidence[candidates]
        rho, kind = (cand.mean() if cand.numel() else evidence.new_tensor(1.0)), "mean"
    rho = torch.clamp(rho, min=torch.finfo(torch.float32).tiny)
    scores = torch.full_like(evidence, float("nan"))
    scored = candidates | registers
    scores[scored] = evidence[scored] / rho
    return Scored(scores, float(rho), kind)


def relative_evidence_by_group(evidence: torch.Tensor, candidates: torch.Tensor, registers: torch.Tensor,
                               groups: torch.Tensor, reference: str = "register",
                               register_values: torch.Tensor | None = None,
                               register_groups: torch.Tensor | None = None) -> tuple[Scored, list[Scored]]:
    """``relative_evidence`` within each group (video: each frame against its own register reference).

    groups: (n,) long group of each token; register_groups: the group of each ``register_values`` entry.
    Returns the scores of all tokens together (reference: the mean of the groups' references; kind
    "register", "mean", or "register+mean" when some groups fell back) and each group's own ``Scored``.
    """
    scores = torch.full_like(evidence.float(), float("nan"))
    per_group = []
    for g in torch.unique(groups).tolist():
        m = groups == g
        vals = register_values[register_groups == g] if register_values is not None else None
        sc = relative_evidence(evidence[m], candidates[m], registers[m], reference, vals)
        scores[m] = sc.scores
        per_group.append(sc)
    kinds = sorted({sc.reference_kind for sc in per_group}, reverse=True)
    rho = sum(sc.reference for sc in per_group) / max(1, len(per_group))
    return Scored(scores, rho, "+".join(kinds) or "mean"), per_group


def temporal_repeats(keys: torch.Tensor, grid: list, threshold: float) -> torch.Tensor:
    """(N,) bool: tokens whose key has cosine similarity >= ``threshold`` with the token at the same place
    ([row, col] of ``grid``) in the previous frame (``grid[j] = [frame, row, col]``); first frames never repeat."""
    where = {tuple(g): j for j, g in enumerate(grid)}
    prev = torch.tensor([where.get((g[0] - 1, g[1], g[2]), -1) for g in grid], dtype=torch.long)
    out = torch.zeros(len(grid), dtype=torch.bool)
    has = prev >= 0
    if has.any():   # keys may live on the model's device
        k = torch.nn.functional.normalize(keys.float(), dim=-1)
        at, before = torch.nonzero(has).flatten().to(k.device), prev[has].to(k.device)
        out[has] = ((k[at] * k[before]).sum(-1) >= threshold).cpu()
    return out


def _rank(scores: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    """Indices of ``pool`` (bool mask) ordered by descending score, ties by index (deterministic)."""
    idx = torch.nonzero(pool).flatten()
    order = torch.argsort(torch.nan_to_num(scores[idx].float(), nan=-math.inf), descending=True, stable=True)
    return idx[order]


def keep_by_threshold(scores: torch.Tensor, candidates: torch.Tensor, forced: torch.Tensor,
                      threshold: float, min_tokens: int | None = None,
                      max_tokens: int | None = None) -> tuple[torch.Tensor, str | None]:
    """Keep candidate j iff s_j >= threshold, and every ``forced`` token; rails on the total count.

    Returns (keep mask, rail) where rail is "min" or "max" when a floor or cap changed the result.
    """
    keep = candidates & (torch.nan_to_num(scores, nan=-math.inf) >= threshold) | forced
    rail = None
    n = int(keep.sum())
    if max_tokens is not None and n > max_tokens:
        keep = forced.clone()
        room = max(0, max_tokens - int(forced.sum()))
        keep[_rank(scores, candidates & ~forced)[:room]] = True
        rail = "max"
    elif min_tokens is not None and n < min_tokens:
        extra = _rank(scores, candidates & ~keep)[: min_tokens - n]
        keep[extra] = True
        rail = "min" if extra.numel() else None
    return keep, rail


def keep_top(scores: torch.Tensor, pool: torch.Tensor, count: int,
             forced: torch.Tensor | None = None) -> torch.Tensor:
    """Fixed budget: the ``forced`` tokens plus the best-scoring tokens of ``pool`` up to ``count`` in total."""
    keep = forced.clone() if forced is not None else torch.zeros_like(pool)
    room = max(0, count - int(keep.sum()))
    keep[_rank(scores, pool & ~keep)[:room]] = True
    return keep


def budget(n: int, retention: float) -> int:
    """Number of tokens a fixed-budget method keeps out of n: ceil(retention * n), at least 1."""
    return max(1, min(n, math.ceil(retention * n - 1e-9)))


def random_keep(n: int, count: int, seed: int) -> torch.Tensor:
    """``count`` of n tokens uniformly at random, reproducible by seed (own generator, no global RNG)."""
    gen = torch.Generator().manual_seed(int(seed))
    keep = torch.zeros(n, dtype=torch.bool)
    keep[torch.randperm(n, generator=gen)[:count]] = True
    return keep


def visionzip_groups(cls_attention: torch.Tensor, keys: torch.Tensor, n_dominant: int,
                     n_contextual: int) -> tuple[torch.Tensor, torch.Tensor]:
    """VisionZip (Yang et al. 2025): dominant tokens by [CLS] attention, the rest merged by key similarity.

    Returns (dominant mask (N,), assign (N,) long) where assign[j] is the contextual target that token j
    is merged into (-1 for dominant tokens). Targets are spread evenly over the non-dominant tokens,
    every other non-dominant token joins its most similar target (cosine similarity of keys).
    """
    n = cls_attention.numel()
    dominant = keep_top(cls_attention.float(), torch.ones(n, dtype=torch.bool), n_dominant)
    assign = torch.full((n,), -1, dtype=torch.long)
    rest = torch.nonzero(~dominant).flatten()
    if rest.numel() == 0 or n_contextual <= 0:
        return dominant, assign
    n_contextual = min(n_contextual, rest.numel())
    step = rest.numel() / n_contextual
    targets = rest[(torch.arange(n_contextual) * step).long()]
    normed = torch.nn.functional.normalize(keys.float(), dim=-1)      # keys may live on the model's device
    nearest = (normed[rest.to(keys.device)] @ normed[targets.to(keys.device)].T).argmax(dim=-1).cpu()
    assign[rest] = targets[nearest]
    assign[targets] = targets
    return dominant, assign
