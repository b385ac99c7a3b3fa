"""Register detection: tensors in, indices out (METHOD.md section 1). No transformers imports.

Three sources, tried in this order by the adapters:
1. explicit   - the vision tower has register tokens by construction (e.g. DINOv2-with-registers);
2. emergent   - high-norm tokens at the vision feature layer (Darcet et al.);
3. sink       - visual tokens with massive activations in the language model at layer K (Kang et al.).
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
    norms = hidden.float().norm(dim=-1)
    return _outliers(norms, kappa, max_frac)


def massive_activation_tokens(hidden: torch.Tensor, kappa: float = 10.0, max_frac: float = 0.02) -> torch.Tensor:
    """Indices of tokens whose largest |activation| is >= kappa * the median of that quantity (LM sinks).

    hidden: (N, D) residual-stream hidden states of the visual tokens entering decoder layer K.
    """
    peak = hidden.float().abs().amax(dim=-1)
    return _outliers(peak, kappa, max_frac)


def _outliers(values: torch.Tensor, kappa: float, max_frac: float) -> torch.Tensor:
    if values.numel() == 0:
        return torch.zeros(0, dtype=torch.long)
    median = values.median()
    idx = torch.nonzero(values >= kappa * median).flatten()
    if idx.numel() == 0 or median <= 0:
        return torch.zeros(0, dtype=torch.long)
    order = torch.argsort(values[idx], descending=True, stable=True)
    return idx[order[: _cap(values.numel(), max_frac)]].sort().values
