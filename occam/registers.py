"""Register detection, all of it: tensors in, masks or indices out (docs/method.md section 1). No transformers.

Three sources, tried in this order:
1. explicit   - the vision tower has register tokens by construction (e.g. DINOv2-with-registers);
   the adapters read them from the tower's layout;
2. emergent   - high-norm tokens at the vision feature layer (Darcet et al.): ``emergent_registers``,
   batched on the device, which the adapters call;
3. sink       - visual tokens with massive activations in the language model at layer K (Kang et al.):
   ``lm_sinks``, which the engine calls at layer K.
``high_norm_tokens`` / ``massive_activation_tokens`` are the same rules on one (N, C) tensor, as indices:
the readable reference the tests hold the batched forms to.
"""
from __future__ import annotations

import math

import torch


def _cap(n: int, max_frac: float) -> int:
    return max(1, math.ceil(max_frac * n))


def high_norm_tokens(hidden: torch.Tensor, kappa: float = 4.0, max_frac: float = 0.02) -> torch.Tensor:
    """Indices of tokens whose L2 norm is >= kappa * median norm, at most ceil(max_frac * N), largest first.

    hidden: (N, C) hidden states of the candidate tokens at the vision feature layer.
    """
    return outlier_indices(hidden.float().norm(dim=-1), kappa, max_frac)


def massive_activation_tokens(hidden: torch.Tensor, kappa: float = 10.0, max_frac: float = 0.02) -> torch.Tensor:
    """Indices of tokens whose largest |activation| is >= kappa * the median of that quantity (LM sinks).

    hidden: (N, D) residual-stream hidden states of the visual tokens entering decoder layer K.
    """
    return outlier_indices(hidden.float().abs().amax(dim=-1), kappa, max_frac)


def emergent_registers(hidden: torch.Tensor, candidates: torch.Tensor, count: int, kappa: float,
                       max_frac: float) -> torch.Tensor:
    """(B, T) bool mask of high-norm tokens among ``candidates`` ((B, T) bool, ``count`` per row); no host sync."""
    norms = hidden.float().norm(dim=-1).masked_fill(~candidates, float("nan"))
    return outlier_mask(norms, kappa, max_frac, count)


def lm_sinks(peak: torch.Tensor, kappa: float, max_frac: float) -> torch.Tensor:
    """(N,) bool: LM sinks among N visual tokens from each one's largest |activation| entering layer K."""
    sinks = torch.zeros(peak.numel(), dtype=torch.bool)
    sinks[outlier_indices(peak, kappa, max_frac)] = True
    return sinks


def outlier_mask(values: torch.Tensor, kappa: float, max_frac: float, count: int) -> torch.Tensor:
    """``outlier_indices`` as a bool mask over the last dim, batched and without a host synchronisation (GPU).

    values: (..., N) with NaN where a token is not a candidate; ``count``: the candidates per row (the
    cap is ceil(max_frac * count)). The same tokens as ``outlier_indices`` on the candidates, except that
    exact ties at the cap may be broken differently.
    """
    mask = torch.zeros(values.shape, dtype=torch.bool, device=values.device)
    if count == 0 or values.shape[-1] == 0:
        return mask
    median = values.nanmedian(dim=-1, keepdim=True).values
    top = torch.nan_to_num(values, nan=-math.inf).topk(min(_cap(count, max_frac), values.shape[-1]), dim=-1)
    return mask.scatter_(-1, top.indices, (top.values >= kappa * median) & (median > 0))


def outlier_indices(values: torch.Tensor, kappa: float, max_frac: float) -> torch.Tensor:
    """Indices of ``values`` >= kappa * their median, at most ceil(max_frac * N), largest first; sorted."""
    if values.numel() == 0:
        return torch.zeros(0, dtype=torch.long)
    median = values.median()
    idx = torch.nonzero(values >= kappa * median).flatten()
    if idx.numel() == 0 or median <= 0:
        return torch.zeros(0, dtype=torch.long)
    order = torch.argsort(values[idx], descending=True, stable=True)
    return idx[order[: _cap(values.numel(), max_frac)]].sort().values
