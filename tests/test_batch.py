"""``VLM.generate_batch``: every request of a batch equals that request run alone, on every family and method.

Mixed configs, mixed image sizes, images and videos together, requests that stop early next to ones that
run to ``max_new_tokens``, a batch split by its KV budget, bad input found before any work, threads.
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

import occam
from occam import archs
from occam.config import OccamConfig
from occam.methods import METHODS

FAMILIES = ["tiny-llava", "tiny-llava-next", "tiny-qwen2.5-vl", "tiny-qwen3-vl", "tiny-video-llava"]
QUESTIONS = ["what is in the picture", "Which colour is the largest shape, and where is it?", "count", "describe it"]
# one config per method, each with knobs that make it cut (K = 1 so that the cut happens in 2-layer models)
BY_METHOD = {"none": OccamConfig(method="none"), "occam": OccamConfig(alpha=0.9, beta=1.0, stage2_layer=1),
             "topk": OccamConfig(method="topk", retention=0.3, stage2_layer=1),
             "fastv": OccamConfig(method="fastv", retention=0.3, fastv_layer=1),
             "visionzip": OccamConfig(method="visionzip", retention=0.4),
             "random": OccamConfig(method="random", retention=0.5, seed=3)}
assert set(BY_METHOD) == set(METHODS), "a new method needs its config here"


def _image(seed: int, size=(64, 48)) -> Image.Image:
    rng = np.random.RandomState(seed)
    return Image.fromarray((rng.rand(size[1], size[0], 3) * 255).astype(np.uint8))


IMAGES = [_image(0), _image(1, (80, 48)), _image(2, (48, 64)), _image(3)]


@pytest.fixture(scope="module", params=FAMILIES)
def vlm(request):
    model, processor = archs.build(request.param)
    return occam.load(model=model, processor=processor)


@pytest.fixture(scope="module")
def toy():
    return occam.load("toy")


def _scores(res) -> list:
    return [[math.nan if v is None else v for v in st.scores] for st in res.trace.stages]


def assert_same(batched, single):
    """What generate_batch promises: the same ids, kept masks, stage scores (1e-5) and first logits."""
    assert batched.token_ids == single.token_ids
    assert batched.text == single.text
    assert batched.trace.kept == single.trace.kept
    assert [s.name for s in batched.trace.stages] == [s.name for s in single.trace.stages]
    for a, b in zip(_scores(batched), _scores(single)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(batched.logits, single.logits, rtol=1e-4, atol=1e-5)
    assert batched.trace.sequence["per_layer"] == single.trace.sequence["per_layer"]
    assert batched.trace.kv_cache_bytes == single.trace.kv_cache_bytes
    assert batched.trace.counts == single.trace.counts


@pytest.mark.parametrize("method", METHODS)
def test_batch_of_one_method_each_image_equals_single(vlm, method):
    cfg = BY_METHOD[method]
    singles = [vlm.generate(im, q, cfg, max_new_tokens=4) for im, q in zip(IMAGES, QUESTIONS)]
    batched = vlm.generate_batch(IMAGES, QUESTIONS, cfg, max_new_tokens=4)
    assert [r.trace.sequence["batch_size"] for r in batched] == [len(IMAGES)] * len(IMAGES)
    for b, s in zip(batched, singles):
        assert_same(b, s)


def test_mixed_methods_and_sizes_in_one_batch(vlm):
    cfgs = list(BY_METHOD.values())
    images = [IMAGES[i % len(IMAGES)] for i in range(len(cfgs))]
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(len(cfgs))]
    singles = [vlm.generate(im, q, c, max_new_tokens=5) for im, q, c in zip(images, questions, cfgs)]
    for b, s in zip(vlm.generate_batch(images, questions, cfgs, max_new_tokens=5), singles):
        assert_same(b, s)
    static = occam.VLM(vlm.model, vlm.processor, prefill="padded", decode="static")   # the CUDA-graph shapes
    for b, s in zip(static.generate_batch(images, questions, cfgs, max_new_tokens=5), singles):
        assert b.trace.sequence["decode_path"] == "static"
        assert_same(b, s)
    cut = [r.trace.sequence["per_layer"] for r in singles]
    assert len({tuple(c) for c in cut}) > 2     # the batch really was ragged, with different cuts


def test_mixed_cut_layers_and_thresholds(vlm):
    n = vlm.num_layers
    cfgs = [OccamConfig(alpha=0.5, beta=2.0, stage2_layer=0), OccamConfig(alpha=1.2, beta=0.8, stage2_layer=n - 1),
            OccamConfig(method="fastv", retention=0.2, fastv_layer=n - 1), OccamConfig(alpha=0.9, stage2=False)]
    singles = [vlm.generate(IMAGES[i], QUESTIONS[i], c, max_new_tokens=3) for i, c in enumerate(cfgs)]
    for b, s in zip(vlm.generate_batch(IMAGES, QUESTIONS, cfgs, max_new_tokens=3), singles):
        assert_same(b, s)


def test_early_stop_next_to_a_long_answer_and_return_cache(toy):
    """The toy answers in a word or two and stops at EOS; a zero-threshold run talks on to the limit."""
    img = _image(5)
    questions = ["What colour is the circle?", "How many shapes are there?", "Is there a square?", "What shape?"]
    cfgs = [OccamConfig(), OccamConfig(method="none"), OccamConfig(method="topk", retention=0.25),
            OccamConfig(method="fastv", retention=0.3)]
    singles = [toy.generate(img, q, c, max_new_tokens=20, return_cache=True) for q, c in zip(questions, cfgs)]
    batched = toy.generate_batch([img] * 4, questions, cfgs, max_new_tokens=20, return_cache=True)
    lengths = sorted(len(s.token_ids) for s in singles)
    assert lengths[0] < 20, "the toy should stop early on some of these"
    for b, s in zip(batched, singles):
        assert_same(b, s)
        assert [layer.keys.shape for layer in b.cache.layers] == [layer.keys.shape for layer in s.cache.layers]
        for lb, ls in zip(b.cache.layers, s.cache.layers):
            torch.testing.assert_close(lb.keys, ls.keys, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("decode", ["eager", "static"])
def test_long_batch_stops_early_across_sync_points(decode):
    """More than SYNC_EVERY steps: finished rows are dropped mid-way (the static path moves the live rows to
    a smaller batch bucket) and the rest still decode correctly."""
    from occam import engine
    from occam.models import decoding

    model, processor = archs.build("tiny-llava")
    vlm = occam.VLM(model, processor, decode=decode)
    eos = next(iter(vlm.adapter.eos_token_ids))
    n = engine.SYNC_EVERY * 3
    free = [vlm.generate(im, q, BY_METHOD["none"], max_new_tokens=n) for im, q in zip(IMAGES, QUESTIONS)]
    # make the tiny random model stop early for some requests: its 2nd / 10th token becomes EOS
    stoppers = {free[0].token_ids[1], free[2].token_ids[9]} - {eos}
    model.generation_config.eos_token_id = sorted(stoppers | {eos})     # this test's own model
    singles = [vlm.generate(im, q, BY_METHOD["none"], max_new_tokens=n) for im, q in zip(IMAGES * 2, QUESTIONS * 2)]
    assert min(len(s.token_ids) for s in singles) < engine.SYNC_EVERY < max(len(s.token_ids) for s in singles)
    moves = []
    if decode == "static":
        def keep(*args):
            state, moved = decoding.StaticDecode.keep(vlm.decoder, *args)
            moves.append(moved)
            return state, moved
        vlm.decoder.keep = keep
    batched = vlm.generate_batch(IMAGES * 2, QUESTIONS * 2, BY_METHOD["none"], max_new_tokens=n)
    for b, s in zip(batched, singles):
        assert_same(b, s)
    if decode == "static":
        assert any(moves)


def test_kv_budget_splits_the_batch_and_results_stay_equal():
    model, processor = archs.build("tiny-llava")
    whole = occam.load(model=model, processor=processor)
    cfgs = [BY_METHOD["none"], BY_METHOD["occam"], BY_METHOD["fastv"], BY_METHOD["topk"]]
    ref = whole.generate_batch(IMAGES, QUESTIONS, cfgs, max_new_tokens=3)
    per_token = occam.engine.kv_bytes_per_token(whole.adapter) * whole.num_layers
    longest = max(r.trace.sequence["after_stage1"] for r in ref) + 3
    small = occam.load(model=model, processor=processor, kv_budget=per_token * longest * 2)   # two at a time
    split = small.generate_batch(IMAGES, QUESTIONS, cfgs, max_new_tokens=3)
    assert [r.trace.sequence["batch_size"] for r in split] == [2, 2, 2, 2]
    for b, s in zip(split, ref):
        assert_same(b, s)
    tiny = occam.load(model=model, processor=processor, kv_budget=1)        # smaller than any request: one each
    assert [r.trace.sequence["batch_size"] for r in tiny.generate_batch(IMAGES, QUESTIONS, cfgs, 2)] == [1] * 4


@pytest.mark.parametrize("name", ["tiny-qwen2.5-vl", "tiny-video-llava"])
def test_images_and_videos_in_one_batch(name):
    model, processor = archs.build(name)
    vlm = occam.load(model=model, processor=processor)
    frames = [np.asarray(_image(10 + i)) for i in range(4)]
    inputs = [IMAGES[0], frames, IMAGES[1], frames[::-1]]
    cfgs = [BY_METHOD["occam"], BY_METHOD["topk"], BY_METHOD["none"], BY_METHOD["fastv"]]
    singles = [vlm.generate(x, QUESTIONS[0], c, max_new_tokens=3) for x, c in zip(inputs, cfgs)]
    batched = vlm.generate_batch(inputs, [QUESTIONS[0]] * 4, cfgs, max_new_tokens=3)
    assert [r.trace.media for r in batched] == ["image", "video", "image", "video"]
    for b, s in zip(batched, singles):
        assert_same(b, s)


@pytest.mark.parametrize("images, questions, configs, message", [
    ([IMAGES[0]], ["a", "b"], None, "differ in length"),
    ([], [], None, "empty batch"),
    (IMAGES[:2], ["a", ""], None, "Request 1: The question is empty"),
    ([IMAGES[0], b"not an image"], ["a", "b"], None, "Request 1:"),
    (IMAGES[:2], ["a", "b"], [OccamConfig()], "one per request"),
    (IMAGES[:2], ["a", "b"], [OccamConfig(), {"method": "occam"}], "Request 1: config must be an occam.OccamConfig"),
    (IMAGES[:2], ["a", "b"], [OccamConfig(), OccamConfig(stage2_layer=99)], "Request 1: OccamConfig.stage2_layer=99"),
    (IMAGES[0], ["a"], None, "images must be a list"),
])
def test_bad_batches_are_refused_before_any_work(toy, monkeypatch, images, questions, configs, message):
    from occam import engine

    ran = []
    monkeypatch.setattr(engine, "run_batch", lambda *a, **k: ran.append(1))
    with pytest.raises(ValueError, match=message):
        toy.generate_batch(images, questions, configs, max_new_tokens=2)
    assert not ran


def test_bad_max_new_tokens_and_kv_budget(toy):
    with pytest.raises(ValueError, match="max_new_tokens"):
        toy.generate_batch(IMAGES[:1], ["a"], None, max_new_tokens=-1)
    with pytest.raises(ValueError, match="kv_budget"):
        occam.load(model=toy.model, processor=toy.processor, kv_budget=0)


def test_threads_calling_generate_batch_get_their_serial_results(toy):
    jobs = [([IMAGES[i % 4], IMAGES[(i + 1) % 4]], [QUESTIONS[i % 4], QUESTIONS[(i + 2) % 4]],
             [list(BY_METHOD.values())[i % 6], list(BY_METHOD.values())[(i + 3) % 6]]) for i in range(6)]
    serial = [toy.generate_batch(*job, max_new_tokens=4) for job in jobs]
    with ThreadPoolExecutor(max_workers=3) as pool:
        parallel = list(pool.map(lambda job: toy.generate_batch(*job, max_new_tokens=4), jobs))
    for got, want in zip(parallel, serial):
        for b, s in zip(got, want):
            assert_same(b, s)


def test_max_new_tokens_zero_in_a_batch(toy):
    res = toy.generate_batch(IMAGES[:2], QUESTIONS[:2], [BY_METHOD["occam"], BY_METHOD["none"]], max_new_tokens=0)
    assert [r.token_ids for r in res] == [[], []]
    assert all(r.logits.shape == res[0].logits.shape for r in res)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["tiny-llava", "tiny-qwen2.5-vl", "tiny-qwen3-vl"])
def test_cuda_graph_decode_equals_static_on_gpu(name):
    """The captured step replays exactly what the static step computes (same shapes, same kernels)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    with torch.device("cuda"):
        model, processor = archs.build(name)
    static = occam.VLM(model, processor, decode="static", prefill="eager")
    graphed = occam.VLM(model, processor, decode="cuda-graphs", prefill="eager")
    cfgs = list(BY_METHOD.values())[:4]
    want = static.generate_batch(IMAGES, QUESTIONS, cfgs, max_new_tokens=12)
    for _ in range(2):                     # the first call captures, the second replays
        got = graphed.generate_batch(IMAGES, QUESTIONS, cfgs, max_new_tokens=12)
        assert [r.token_ids for r in got] == [r.token_ids for r in want]
        assert all(r.trace.sequence["decode_path"] == "cuda-graphs" for r in got)
