"""occam.cost against hand counts: FLOPs of a tiny config, KV-cache bytes of real DynamicCaches."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import LlamaConfig

import occam
from occam import archs, cost
from occam.config import OccamConfig

QUESTION = "what is in the picture"

# hidden 64, 4 query heads, 2 kv heads, head_dim 16, MLP 128, vocabulary 320
TINY = SimpleNamespace(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                       intermediate_size=128, vocab_size=320)


def test_layer_matmul_params_by_hand():
    # q 64x64 = 4096, k and v 64x32 = 2048 each, o 64x64 = 4096, gate/up/down 3 x 64x128 = 24576
    assert cost.layer_matmul_params(TINY) == 4096 + 2048 + 2048 + 4096 + 24576 == 36864


def test_prefill_flops_by_hand():
    # per layer 2 * n * 36864 (matmuls) + 2 * n^2 * 4 * 16 (QK^T and AV, causal half); LM head 2 * 64 * 320
    # n = 10: 737280 + 12800 = 750080;  n = 4: 294912 + 2048 = 296960;  head: 40960
    assert cost.prefill_flops(TINY, [10, 10, 4]) == 750080 + 750080 + 296960 + 40960 == 1838080
    assert cost.prefill_flops(TINY, []) == 40960


def test_flops_of_a_transformers_config_derive_head_dim_and_kv_heads():
    cfg = LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=4, intermediate_size=128,
                      vocab_size=320, num_hidden_layers=2)
    # head_dim = 64 / 4 = 16; q, k, v, o all 64x64: 4 * 4096 + 24576 = 40960
    assert cost.layer_matmul_params(cfg) == 40960
    assert cost.prefill_flops(cfg, [5]) == 2 * 5 * 40960 + 2 * 25 * 4 * 16 + 2 * 64 * 320 == 453760


def test_kv_cache_bytes_of_an_empty_or_foreign_object():
    assert cost.kv_cache_bytes(object()) == 0
    layer = SimpleNamespace(keys=torch.zeros(1, 2, 7, 16), values=torch.zeros(1, 2, 7, 16, dtype=torch.float16))
    assert cost.kv_cache_bytes(SimpleNamespace(layers=[layer, SimpleNamespace(keys=None, values=None)])) == \
        2 * 7 * 16 * 4 + 2 * 7 * 16 * 2


@pytest.fixture(scope="module", params=["tiny-llava", "tiny-qwen2.5-vl"])
def vlm(request):
    model, processor = archs.build(request.param)
    return occam.load(model=model, processor=processor)


@pytest.fixture(scope="module")
def image():
    rng = np.random.RandomState(1)
    return Image.fromarray((rng.rand(64, 80, 3) * 255).astype(np.uint8))


def _hand_bytes(vlm, lengths):
    c = vlm.adapter.lm.config
    kv = c.num_key_value_heads
    hd = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return sum(2 * kv * hd * n * 4 for n in lengths)        # K and V, float32


def test_kv_cache_bytes_of_a_full_run_match_hand_count(vlm, image):
    res = vlm.generate(image, QUESTION, OccamConfig(method="none"), max_new_tokens=1, return_cache=True)
    n, layers = res.trace.sequence["prompt"], vlm.num_layers
    assert [layer.keys.shape[-2] for layer in res.cache.layers] == [n] * layers
    assert cost.kv_cache_bytes(res.cache) == res.trace.kv_cache_bytes == _hand_bytes(vlm, [n] * layers)


@pytest.mark.parametrize("cfg", [OccamConfig(method="topk", retention=0.3, stage2_layer=2),
                                 OccamConfig(method="fastv", retention=0.3, fastv_layer=1)], ids=["topk", "fastv"])
def test_kv_cache_is_proportional_to_kept_tokens_from_layer_k(vlm, image, cfg):
    res = vlm.generate(image, QUESTION, cfg, max_new_tokens=1, return_cache=True)
    tr = res.trace
    k = tr.sequence["stage2_layer"]
    text = tr.sequence["prompt"] - tr.num_visual
    stage1 = tr.sequence["after_stage1"]
    stage2 = text + tr.counts["final"]
    lengths = [layer.keys.shape[-2] for layer in res.cache.layers]
    assert lengths == [stage1] * k + [stage2] * (vlm.num_layers - k) == tr.sequence["per_layer"]
    assert stage2 < stage1
    assert cost.kv_cache_bytes(res.cache) == tr.kv_cache_bytes == _hand_bytes(vlm, lengths)
    # the bytes of layers >= K grow by exactly one token's K+V per extra kept visual token
    per_token = _hand_bytes(vlm, [1])
    layer_bytes = [cost.kv_cache_bytes(SimpleNamespace(layers=[layer])) for layer in res.cache.layers]
    assert layer_bytes[k:] == [per_token * stage2] * (vlm.num_layers - k)
    assert layer_bytes[:k] == [per_token * stage1] * k
