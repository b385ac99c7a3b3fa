"""The engine's paths and the method decisions of docs/method.md section 8, on tiny models and the toy model."""
from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import occam
from occam import archs, cost, evidence
from occam.config import OccamConfig
from occam.models import graphs

from .reference import hf_generate

FAMILIES = ["tiny-llava", "tiny-llava-next", "tiny-qwen2.5-vl", "tiny-qwen3-vl"]
QUESTION = "what is in the picture"
CONFIGS = {"none": OccamConfig(method="none"), "occam-K1": OccamConfig(alpha=0.8, beta=1.0, stage2_layer=1),
           "occam-K0": OccamConfig(alpha=0.8, beta=1.0, stage2_layer=0),
           "fastv": OccamConfig(method="fastv", retention=0.3, fastv_layer=2),
           "topk-stage2-only": OccamConfig(method="topk", retention=0.3, stage1=False, stage2_layer=2)}


def _image(seed: int = 0, size=(64, 48)) -> Image.Image:
    rng = np.random.RandomState(seed)
    return Image.fromarray((rng.rand(size[1], size[0], 3) * 255).astype(np.uint8))


@pytest.fixture(scope="module", params=FAMILIES)
def pair(request):
    """The same tiny model behind an eager VLM and a padded-bucket VLM (the CUDA-graph path's arithmetic)."""
    model, processor = archs.build(request.param)
    return occam.VLM(model, processor), occam.VLM(model, processor, prefill="padded")


@pytest.mark.parametrize("name", list(CONFIGS))
def test_padded_prefill_equals_eager(pair, name):
    eager, padded = pair
    cfg, img = CONFIGS[name], _image()
    a = eager.generate(img, QUESTION, cfg, max_new_tokens=4, return_cache=True)
    b = padded.generate(img, QUESTION, cfg, max_new_tokens=4, return_cache=True)
    assert b.trace.sequence["prefill_path"] == "padded" and a.trace.sequence["prefill_path"] == "eager"
    assert b.token_ids == a.token_ids and b.trace.kept == a.trace.kept
    torch.testing.assert_close(b.logits, a.logits, atol=1e-5, rtol=1e-5)
    assert [layer.keys.shape for layer in b.cache.layers] == [layer.keys.shape for layer in a.cache.layers]
    assert b.trace.kv_cache_bytes == a.trace.kv_cache_bytes


def test_bucket_lengths():
    assert [graphs.bucket(n) for n in (1, 64, 65, 1024, 1025, 2430)] == [64, 64, 128, 1024, 1280, 2560]


def test_prefill_mode_is_validated():
    model, processor = archs.build("tiny-llava")
    with pytest.raises(ValueError, match="accepted 'auto', 'eager', 'padded' or 'cuda-graphs'"):
        occam.VLM(model, processor, prefill="fast")
    with pytest.raises(ValueError, match="needs a model on a CUDA device"):
        occam.VLM(model, processor, prefill="cuda-graphs")
    assert occam.VLM(model, processor).segments is None     # "auto" on a CPU: eager


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", FAMILIES)
def test_cuda_graph_prefill_equals_eager_on_gpu(name):
    model, processor = archs.build(name, device="cuda")
    eager, graphed = occam.VLM(model, processor, prefill="eager"), occam.VLM(model, processor, prefill="cuda-graphs")
    for cfg in CONFIGS.values():
        for seed in (0, 1):   # the second image reuses the graphs of the same buckets
            a = eager.generate(_image(seed), QUESTION, cfg, max_new_tokens=4)
            b = graphed.generate(_image(seed), QUESTION, cfg, max_new_tokens=4)
            assert b.trace.sequence["prefill_path"] == "cuda-graphs"
            assert b.token_ids == a.token_ids and b.trace.kept == a.trace.kept
            torch.testing.assert_close(b.logits, a.logits, atol=1e-4, rtol=1e-4)
    assert graphed.segments.graphs and all(g is not None for g in graphed.segments.graphs.values())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("torchvision") is None,
                    reason="needs a CUDA GPU and torchvision")
@pytest.mark.parametrize("name", FAMILIES)
def test_device_preprocessing_matches_pillow(name):
    """Tolerance, in normalised pixel units (about 4 per 255 grey levels): mean |diff| <= 0.02, max <= 0.5."""
    model, processor = archs.build(name, device="cuda")
    pil, tv = occam.VLM(model, processor, preprocess="pil"), occam.VLM(model, processor, preprocess="torchvision")
    assert pil.adapter.device_processor is None and tv.adapter.device_processor is not None
    img = _image(0, (333, 250))
    a, b = pil.adapter.prepare(img, QUESTION).inputs, tv.adapter.prepare(img, QUESTION).inputs
    assert b["pixel_values"].device.type == "cuda"
    for key in set(a) - {"pixel_values"}:
        assert torch.equal(a[key].cpu(), b[key].cpu()), key
    diff = (a["pixel_values"].float() - b["pixel_values"].float()).abs()
    assert diff.mean() <= 0.02 and diff.max() <= 0.5, (float(diff.mean()), float(diff.max()))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_prefill_serves_concurrent_requests_on_gpu():
    """One graphed model, requests with different settings (so different buckets) from 4 threads, its graphs
    captured while other threads run eager work: each answer equals the one of a model captured serially."""
    from concurrent.futures import ThreadPoolExecutor

    model, processor = archs.build("tiny-qwen2.5-vl", device="cuda")
    serial_vlm = occam.VLM(model, processor, prefill="cuda-graphs")
    parallel_vlm = occam.VLM(model, processor, prefill="cuda-graphs")    # its own graphs, captured below
    jobs = [(seed, cfg) for seed in (0, 1) for cfg in CONFIGS.values()]
    serial = [serial_vlm.generate(_image(s), QUESTION, c, max_new_tokens=4) for s, c in jobs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = list(pool.map(lambda j: parallel_vlm.generate(_image(j[0]), QUESTION, j[1], max_new_tokens=4),
                                 jobs * 3))
    assert all(g is not None for g in parallel_vlm.segments.graphs.values())
    for i, res in enumerate(parallel):
        ref = serial[i % len(jobs)]
        assert res.trace.sequence["prefill_path"] == "cuda-graphs"
        assert res.token_ids == ref.token_ids and res.trace.kept == ref.trace.kept
        torch.testing.assert_close(res.logits, ref.logits)


# -- docs/method.md section 8 --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def toy():
    return occam.load("toy")


@pytest.fixture(scope="module")
def toy_image():
    return Image.open(occam.loading.REPO_ROOT / "assets" / "examples" / "texture_4obj_count.png")


def test_keep_registers_modes_on_explicit_registers(toy, toy_image):
    q = "how many squares are there?"
    runs = {m: toy.generate(toy_image, q, OccamConfig(alpha=50.0, stage2=False, keep_registers=m), max_new_tokens=1)
            for m in ("explicit", "all", "none")}
    regs = runs["explicit"].trace.stage("stage1").registers
    assert len(regs) == 4 and all(toy.generate(toy_image, q, OccamConfig(method="none"), max_new_tokens=1)
                                  .trace.kinds[j] == "register" for j in regs)
    for mode in ("explicit", "all"):   # explicit registers are forced in both modes, not candidates
        st = runs[mode].trace.stage("stage1")
        assert all(st.kept[j] for j in regs) and not set(regs) & set(st.candidates)
    st = runs["none"].trace.stage("stage1")   # none: the registers compete on their score
    assert set(regs) <= set(st.candidates)
    assert all(st.kept[j] == (st.scores[j] >= 50.0) for j in regs)


def test_keep_registers_explicit_lets_emergent_registers_compete():
    model, processor = archs.build("tiny-llava")
    vlm = occam.VLM(model, processor)
    img = _image(3)
    base = OccamConfig(kappa=1.0001, stage2=False, alpha=1e6)   # kappa ~1: the top-norm tokens are registers
    explicit = vlm.generate(img, QUESTION, base, max_new_tokens=1).trace.stage("stage1")
    forced = vlm.generate(img, QUESTION, base.replace(keep_registers="all"), max_new_tokens=1).trace.stage("stage1")
    assert explicit.register_source == "emergent" and explicit.registers
    assert set(explicit.registers) <= set(explicit.candidates) and sum(explicit.kept) == 0
    assert [j for j, k in enumerate(forced.kept) if k] == forced.registers


def test_no_content_flag(toy, toy_image):
    res = toy.generate(toy_image, "how many squares are there?", OccamConfig(alpha=1e6), max_new_tokens=1)
    assert res.trace.flags == {"no_content": "stage1"}
    assert res.trace.counts["final"] == 4      # the explicit registers only: the run still proceeds
    ok = toy.generate(toy_image, "how many squares are there?", OccamConfig(), max_new_tokens=1)
    assert ok.trace.flags == {}


def test_stage_split_exponent_sets_the_stage1_budget(toy, toy_image):
    n = 68
    for split, stage1_budget in ((1.0, evidence.budget(n, 0.25)), (0.5, evidence.budget(n, 0.5)), (0.0, n)):
        cfg = OccamConfig(method="topk", retention=0.25, stage_split=split)
        tr = toy.generate(toy_image, "how many squares are there?", cfg, max_new_tokens=0).trace
        assert tr.counts["after_stage1"] == stage1_budget
        assert tr.counts["final"] == evidence.budget(n, 0.25)
    with pytest.raises(ValueError, match=r"stage_split=1.5 is invalid: accepted a number in \[0, 1\]"):
        OccamConfig(stage_split=1.5)


def test_random_mask_depends_on_seed_and_input(toy):
    a, b = _image(1, (96, 96)), _image(2, (96, 96))
    cfg = OccamConfig(method="random", retention=0.25, seed=5)
    kept = lambda img, c: toy.generate(img, "what is it?", c, max_new_tokens=0).trace.kept  # noqa: E731
    assert kept(a, cfg) == kept(a, cfg)
    assert kept(a, cfg) != kept(b, cfg)
    assert kept(a, cfg) != kept(a, cfg.replace(seed=6))


def test_stage2_trace_has_per_query_attention(toy, toy_image):
    cfg = OccamConfig(alpha=0.5, beta=1.0)
    tr = toy.generate(toy_image, "how many squares are there?", cfg, max_new_tokens=0).trace
    st, s1 = tr.stage("stage2"), tr.stage("stage1")
    rows = np.array([[np.nan if v is None else v for v in row] for row in st.query_attention])
    assert rows.shape == (len(st.query_tokens), tr.num_visual) and "squares" in "".join(st.query_tokens)
    assert np.isnan(rows[:, ~np.array(s1.kept)]).all() and not np.isnan(rows[:, np.array(s1.kept)]).any()
    mean = rows.mean(axis=0)     # the Stage-II evidence is the mean over query rows (scores = a / rho_q)
    for j, s in enumerate(st.scores):
        if s is not None:
            assert mean[j] == pytest.approx(s * st.reference, rel=2e-3, abs=1e-6)


# -- pure pieces -----------------------------------------------------------------------------------
def test_attention_in_chunks_equals_one_shot(monkeypatch):
    torch.manual_seed(0)
    q, k = torch.randn(2, 9, 4), torch.randn(2, 9, 4)
    rows = torch.tensor([1, 4, 6, 8])
    one_rows = evidence.attention_rows(q[:, rows], k, 0.5, chunk=2, row_positions=rows)
    monkeypatch.setattr(evidence, "ONE_SHOT_ELEMENTS", 1)   # force 2-row chunks
    torch.testing.assert_close(evidence.attention_rows(q[:, rows], k, 0.5, chunk=2, row_positions=rows), one_rows)


def test_roofline_bound():
    cfg = archs.config_for("llava-1.5-7b").get_text_config()
    mem_bound = cost.prefill_roofline_s(cfg, [10] * 32, 2, 1e18, 1e9)     # infinite compute: weights dominate
    assert mem_bound == pytest.approx(cost.prefill_roofline_s(cfg, [5] * 32, 2, 1e18, 1e9))
    full, short = [600] * 32, [150] * 32                                 # infinite bandwidth: FLOPs dominate
    ratio = cost.prefill_roofline_s(cfg, full, 2, 1e15, 1e30) / cost.prefill_roofline_s(cfg, short, 2, 1e15, 1e30)
    assert ratio == pytest.approx(cost.prefill_flops(cfg, full) / cost.prefill_flops(cfg, short), rel=1e-3)


def test_registry_and_no_import_cycle():
    from occam.models import FAMILIES
    assert set(archs.HUB_IDS.values()) == {f.hub_id for f in FAMILIES.values()}
    code = "import sys, occam.archs; assert 'occam.loading' not in sys.modules, 'archs imports loading'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-qwen2.5-vl"])
def test_eager_attention_gets_an_explicit_causal_mask(name):
    model, processor = archs.build(name, attn_implementation="eager")
    vlm = occam.VLM(model, processor)
    img = _image(4)
    expect, logits = hf_generate(vlm, img, QUESTION, 4)
    res = vlm.generate(img, QUESTION, OccamConfig(method="none"), max_new_tokens=4)
    assert res.token_ids == expect
    torch.testing.assert_close(res.logits, logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["tiny-video-llava", "tiny-qwen2.5-vl", "tiny-qwen3-vl"])
def test_padded_prefill_equals_eager_on_video(name):
    from occam.video import Video

    from .test_video import busy_frames
    model, processor = archs.build(name)
    eager, padded = occam.VLM(model, processor), occam.VLM(model, processor, prefill="padded")
    clip = Video.from_frames(busy_frames(4), fps=4.0)
    cfg = OccamConfig(alpha=0.8, beta=1.0, stage2_layer=1)
    a = eager.generate(clip, QUESTION, cfg, max_new_tokens=3)
    b = padded.generate(clip, QUESTION, cfg, max_new_tokens=3)
    assert b.trace.sequence["prefill_path"] == "padded"
    assert b.token_ids == a.token_ids and b.trace.kept == a.trace.kept
    torch.testing.assert_close(b.logits, a.logits, atol=1e-5, rtol=1e-5)
