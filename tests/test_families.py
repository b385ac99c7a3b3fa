"""Every model family on tiny models built from configs: exactness, references, cache, boxes, threads."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

import occam
from occam import archs
from occam.config import OccamConfig

from .reference import hf_generate, reference_generate

FAMILIES = ["tiny-llava", "tiny-llava-next", "tiny-qwen2.5-vl", "tiny-qwen3-vl", "tiny-video-llava"]
QUESTION = "what is in the picture"


@pytest.fixture(scope="module", params=FAMILIES)
def vlm(request):
    model, processor = archs.build(request.param)
    return occam.load(model=model, processor=processor)


@pytest.fixture(scope="module")
def image():
    rng = np.random.RandomState(0)
    return Image.fromarray((rng.rand(48, 64, 3) * 255).astype(np.uint8))


@pytest.mark.parametrize("cfg", [OccamConfig(method="none"), OccamConfig(alpha=1e-9, beta=1e-9)],
                         ids=["none", "occam-keep-all"])
def test_unpruned_equals_unmodified_model(vlm, image, cfg):
    tokens, logits = hf_generate(vlm, image, QUESTION, 6)
    res = vlm.generate(image, QUESTION, cfg, max_new_tokens=6)
    assert res.token_ids == tokens
    torch.testing.assert_close(res.logits, logits, atol=1e-5, rtol=1e-5)
    assert res.trace.counts["final"] == res.trace.num_visual


def test_stage1_equals_model_fed_only_kept_tokens(vlm, image):
    cfg = OccamConfig(method="topk", retention=0.4, stage2=False)
    res = vlm.generate(image, QUESTION, cfg, max_new_tokens=4)
    keep1 = torch.tensor(res.trace.stage("stage1").kept)
    assert 0 < int(keep1.sum()) < keep1.numel()
    tokens, logits = reference_generate(vlm, image, QUESTION, keep1, steps=4)
    assert res.token_ids == tokens
    torch.testing.assert_close(res.logits, logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layer_k", [1, 2])
def test_stage2_equals_split_reference(vlm, image, layer_k):
    cfg = OccamConfig(method="occam", alpha=0.8, beta=1.0, stage2_layer=layer_k)
    res = vlm.generate(image, QUESTION, cfg, max_new_tokens=4)
    keep1 = torch.tensor(res.trace.stage("stage1").kept)
    keep2 = torch.tensor(res.trace.kept)
    assert int(keep2.sum()) < int(keep1.sum()) <= keep1.numel()
    tokens, logits = reference_generate(vlm, image, QUESTION, keep1, keep2, layer_k=layer_k, steps=4)
    assert res.token_ids == tokens
    torch.testing.assert_close(res.logits, logits, atol=1e-5, rtol=1e-5)


def test_kv_cache_holds_only_kept_tokens(vlm, image):
    cfg = OccamConfig(method="occam", alpha=0.8, beta=1.0, stage2_layer=2)
    res = vlm.generate(image, QUESTION, cfg, max_new_tokens=3, return_cache=True)
    seq = res.trace.sequence
    decoded = len(res.token_ids) - 1          # the last token is never fed back
    lengths = [layer.keys.shape[-2] for layer in res.cache.layers]
    prompt_text = seq["prompt"] - res.trace.num_visual
    assert lengths[:2] == [seq["after_stage1"] + decoded] * 2
    assert lengths[2:] == [prompt_text + res.trace.counts["final"] + decoded] * (len(lengths) - 2)
    assert seq["per_layer"][2] < seq["per_layer"][1]


def _token_brightness(vlm, prep, trace) -> np.ndarray:
    """Mean processed-pixel value under each visual token, read from the real processor's pixel_values."""
    pv = prep.inputs["pixel_values"].float()
    out = np.full(trace.num_visual, np.nan)
    if vlm.family.startswith("qwen"):
        unit = vlm.adapter.merge ** 2
        return pv.view(trace.num_visual, unit, -1).mean(dim=(1, 2)).numpy()
    tiles = pv.view(-1, *pv.shape[-3:])
    g = vlm.adapter.grid
    cell = tiles.shape[-1] // g
    for j, ((tile, r, c), kind) in enumerate(zip(trace.grid, trace.kinds)):
        if kind == "patch":
            out[j] = tiles[tile, :, r * cell:(r + 1) * cell, c * cell:(c + 1) * cell].mean().item()
    return out


@pytest.mark.parametrize("size,square", [((64, 48), (36, 8, 60, 32)), ((40, 72), (4, 40, 28, 68))])
def test_boxes_cover_the_bright_square(vlm, size, square):
    arr = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    x0, y0, x1, y1 = square
    arr[y0:y1, x0:x1] = 255
    img = Image.fromarray(arr)
    res = vlm.generate(img, QUESTION, OccamConfig(method="none"), max_new_tokens=1)
    prep = vlm.adapter.prepare(img, QUESTION)
    bright = _token_brightness(vlm, prep, res.trace)
    lo, hi = np.nanmin(bright), np.nanmax(bright)
    checked = 0
    for b, box in zip(bright, res.trace.boxes):
        if box is None or np.isnan(b):
            continue
        overlap = max(0, min(box[2], x1) - max(box[0], x0)) * max(0, min(box[3], y1) - max(box[1], y0))
        area = (box[2] - box[0]) * (box[3] - box[1])
        if b > (lo + hi) / 2:
            assert overlap > 0, f"bright token at {box} misses the square {square}"
        if overlap >= 0.99 * area:
            assert b > (lo + hi) / 2, f"token at {box} inside the square is dark"
        if overlap == 0:
            assert b <= lo + 0.05 * (hi - lo) + 1e-6, f"token at {box} outside the square is bright"
        checked += 1
    assert checked >= res.trace.num_visual * 0.5


def test_concurrent_calls_with_different_configs_match_serial(vlm, image):
    configs = [OccamConfig(method="none"), OccamConfig(alpha=0.9, beta=1.1, stage2_layer=1),
               OccamConfig(method="fastv", retention=0.3), OccamConfig(method="topk", retention=0.25),
               OccamConfig(method="visionzip", retention=0.4), OccamConfig(method="random", retention=0.5, seed=3)]
    serial = [vlm.generate(image, QUESTION, c, max_new_tokens=3) for c in configs]
    with ThreadPoolExecutor(max_workers=3) as pool:
        parallel = list(pool.map(lambda c: vlm.generate(image, QUESTION, c, max_new_tokens=3), configs * 2))
    for i, res in enumerate(parallel):
        ref = serial[i % len(configs)]
        assert res.token_ids == ref.token_ids
        assert res.trace.kept == ref.trace.kept
        torch.testing.assert_close(res.logits, ref.logits)


def test_trace_is_json_and_complete(vlm, image):
    res = vlm.generate(image, QUESTION, OccamConfig(alpha=0.9, beta=1.0), max_new_tokens=2)
    d = res.trace.to_dict()
    import json
    json.loads(json.dumps(d))
    n = d["num_visual"]
    assert len(d["boxes"]) == len(d["grid"]) == len(d["kinds"]) == len(d["kept"]) == n
    for st in d["stages"]:
        assert len(st["scores"]) == len(st["kept"]) == n
    assert d["counts"]["after_stage2"] == sum(d["kept"])
    assert d["flops"]["prefill"] < d["flops"]["prefill_full"]
    assert d["kv_cache_bytes"] > 0
    assert {"vision_s", "prefill_s", "decode_s", "scoring_s", "total_s"} <= set(d["timings"])


def test_stage2_layer_out_of_range(vlm, image):
    with pytest.raises(ValueError, match="stage2_layer=99 is out of range: accepted 0.."):
        vlm.generate(image, QUESTION, OccamConfig(stage2_layer=99))
