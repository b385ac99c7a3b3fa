"""Cost model of the language-model prefill: FLOPs estimate and KV-cache bytes. Pure arithmetic."""
from __future__ import annotations


def _text_dims(cfg) -> tuple[int, int, int, int, int, int]:
    d = cfg.hidden_size
    heads = cfg.num_attention_heads
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    hd = getattr(cfg, "head_dim", None) or d // heads
    return d, heads, kv, hd, cfg.intermediate_size, cfg.vocab_size


def layer_matmul_params(cfg) -> int:
    """Weights one decoder layer multiplies each token by: q, k, v, o projections and a gated MLP."""
    d, heads, kv, hd, inter, _ = _text_dims(cfg)
    return d * heads * hd + 2 * d * kv * hd + heads * hd * d + 3 * d * inter


def prefill_flops(cfg, lengths: list[int]) -> int:
    """FLOPs of a prefill where decoder layer i sees lengths[i] tokens (causal attention).

    Per layer: 2 * L * params (matmuls) + 2 * L^2 * heads * head_dim (QK^T and AV on the causal half),
    plus the LM head for the last position. Norms, RoPE and softmax are ignored (< 1%).
    """
    d, heads, _, hd, _, vocab = _text_dims(cfg)
    p = layer_matmul_params(cfg)
    return sum(2 * n * p + 2 * n * n * heads * hd for n in lengths) + 2 * d * vocab


def prefill_roofline_s(cfg, lengths: list[int], bytes_per_weight: int, peak_flops: float,
                       bandwidth: float) -> float:
    """A lower bound on the prefill time: per layer, max(FLOPs / peak, weight bytes / memory bandwidth).

    Once few tokens are left a layer is bound by streaming its weights, not by its FLOPs; this is the
    honest limit of a speed-up there. KV-cache and activation traffic are ignored (small at prefill).
    """
    d, heads, _, hd, _, vocab = _text_dims(cfg)
    p = layer_matmul_params(cfg)
    layer_bytes = p * bytes_per_weight / bandwidth
    head = max(2 * d * vocab / peak_flops, d * vocab * bytes_per_weight / bandwidth)
    return sum(max((2 * n * p + 2 * n * n * heads * hd) / peak_flops, layer_bytes) for n in lengths) + head


def kv_cache_bytes(cache) -> int:
    """Bytes held by the keys and values of a transformers Cache (every layer)."""
    total = 0
    for layer in getattr(cache, "layers", []):
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if t is not None and hasattr(t, "numel"):
                total += t.numel() * t.element_size()
    return total
