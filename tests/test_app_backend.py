"""app.backend: settings validation, the model cache, full-vs-pruned runs, sweeps, bad inputs."""
from __future__ import annotations

import json
import os
import threading
import time

import numpy as np
import pytest
from PIL import Image

from app import backend
from occam.loading import toy_path

# the toy model when it is there, else a tiny random-weight LLaVA ($OCCAM_APP_MODEL overrides)
MODEL = os.environ.get("OCCAM_APP_MODEL") or ("toy" if (toy_path() / "config.json").is_file() else "tiny-llava")


def noise(w: int = 96, h: int = 64, seed: int = 0) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8))


def write(tmp_path, name: str, img: Image.Image, **kw) -> str:
    path = tmp_path / name
    img.save(path, **kw)
    return str(path)


def S(**kw) -> dict:
    return {"model": MODEL, "max_new_tokens": 3, **kw}


# ---------------------------------------------------------------------------------------------
# settings
# ---------------------------------------------------------------------------------------------
def test_defaults_and_coercion():
    s = backend.parse_settings(None)
    assert s == backend.Settings() and s.method == "occam" and s.stage2_layer is None
    s = backend.parse_settings({"alpha": "0.5", "stage2_layer": 2.0, "min_tokens": 0, "max_tokens": 3.0,
                                "stage1": "false", "target_retention": 0, "max_new_tokens": 5.0, "model": " toy "})
    assert (s.alpha, s.stage2_layer, s.min_tokens, s.max_tokens, s.stage1, s.target_retention, s.max_new_tokens,
            s.model) == (0.5, 2, None, 3, False, None, 5, "toy")
    assert backend.parse_settings('{"method": "fastv"}').method == "fastv"
    assert backend.parse_settings({"stage2_layer": "auto"}).stage2_layer is None


def test_default_model_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("OCCAM_APP_MODEL", raising=False)
    assert backend.default_model() == "toy" and backend.Settings().model == "toy"
    monkeypatch.setenv("OCCAM_APP_MODEL", "tiny-qwen3-vl")
    assert backend.Settings().model == "tiny-qwen3-vl" and backend.model_choices()[0] == "tiny-qwen3-vl"
    assert "llava-hf/llava-1.5-7b-hf" in backend.model_choices()


@pytest.mark.parametrize("raw, message", [
    ({"method": "magic"}, "method='magic' is invalid: accepted one of none, occam, topk"),
    ({"alpha": -1}, "alpha=-1 is invalid: accepted a finite number > 0"),
    ({"beta": "x"}, "beta='x' is invalid"),
    ({"alpha": float("nan")}, "alpha=nan is invalid"),
    ({"stage2_layer": 1.5}, "stage2_layer=1.5 is invalid: accepted empty/'auto' or an integer >= 0"),
    ({"stage2_layer": -2}, "stage2_layer=-2 is invalid"),
    ({"reference": "median"}, "reference='median' is invalid: accepted 'register' or 'mean'"),
    ({"min_tokens": -3}, "min_tokens=-3 is invalid"),
    ({"min_tokens": 9, "max_tokens": 3}, "min_tokens=9 is invalid: accepted a value <= max_tokens (3)"),
    ({"target_retention": 1.5}, "target_retention=1.5 is invalid: accepted empty or a retention in (0, 1]"),
    ({"max_new_tokens": 0}, "max_new_tokens=0 is invalid"),
    ({"max_new_tokens": 100000}, "max_new_tokens=100000 is invalid: accepted an integer from 1 to"),
    ({"stage1": "maybe"}, "stage1='maybe' is invalid: accepted true or false"),
    ({"stage1": False, "stage2": False}, "needs at least one of Stage I / Stage II"),
    ({"model": 3}, "model=3 is invalid"),
    ({"colour": "red"}, "Unknown setting(s) 'colour': accepted model, method"),
    ("{not json", "Settings are not valid JSON"),
    ("[1, 2]", "Settings must be a JSON object"),
])
def test_invalid_settings_say_what_is_wrong(raw, message):
    with pytest.raises(ValueError) as e:
        backend.parse_settings(raw)
    assert message in str(e.value)


def test_build_config():
    cfg = backend.build_config(backend.parse_settings({"method": "visionzip", "target_retention": 0.2}))
    assert cfg.method == "visionzip" and cfg.retention == 0.2
    cfg = backend.build_config(backend.parse_settings({"alpha": 2, "beta": 0.5, "reference": "mean"}))
    assert (cfg.alpha, cfg.beta, cfg.reference, cfg.retention) == (2.0, 0.5, "mean", 0.5)


# ---------------------------------------------------------------------------------------------
# model cache
# ---------------------------------------------------------------------------------------------
class FakeVLM:
    family = "fake"

    def __init__(self, name):
        self.name = name

    def generate(self, *a, **kw):
        return None


def test_cache_loads_each_model_once_under_concurrency():
    calls = []

    def loader(name, device=None):
        calls.append(name)
        time.sleep(0.2)
        return FakeVLM(name)

    cache = backend.ModelCache(loader=loader, max_models=2, warmup=False)
    got = []
    threads = [threading.Thread(target=lambda: got.append(cache.get("a"))) for _ in range(6)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert calls == ["a"] and len({id(v) for v in got}) == 1
    cache.get("b"), cache.get("a"), cache.get("c")  # LRU: "b" is evicted
    assert cache.loaded() == ["a", "c"] and cache.current == "c"


def test_cache_failure_keeps_serving_the_current_model():
    def loader(name, device=None):
        if name == "broken":
            raise OSError("no such repository")
        return FakeVLM(name)

    cache = backend.ModelCache(loader=loader, warmup=False)
    good = cache.get("good")
    with pytest.raises(backend.ModelLoadError) as e:
        cache.get("broken")
    assert "Could not load model 'broken': no such repository" in str(e.value)
    assert "keeps serving 'good'" in str(e.value)
    assert cache.current == "good" and cache.get("good") is good
    with pytest.raises(backend.ModelLoadError, match="No model given"):
        cache.get("  ")


def test_device_is_cpu_without_gpu():
    import torch
    assert backend.device() == ("cuda" if torch.cuda.is_available() else "cpu")


# ---------------------------------------------------------------------------------------------
# runs
# ---------------------------------------------------------------------------------------------
def test_run_compare_full_and_pruned():
    comp = backend.run_compare(noise(), "What is in the picture?", S())
    assert comp.full.trace.config["method"] == "none" and comp.pruned.trace.config["method"] == "occam"
    assert comp.full.trace.counts["final"] == comp.full.trace.num_visual
    d = comp.to_dict()
    json.dumps(d)  # JSON-serialisable as a whole
    assert d["full"]["answer"] == comp.full.text and d["pruned"]["answer"] == comp.pruned.text
    assert d["pruned"]["trace"]["stages"] and d["pruned"]["kept_tokens"] <= d["full"]["visual_tokens"]
    assert set(d["speedup"]) == {"prefill", "total", "flops", "kv_cache"} and d["speedup"]["flops"] >= 1
    assert d["settings"]["model"] == MODEL and d["model"] == MODEL


@pytest.mark.parametrize("method", ["topk", "fastv", "visionzip", "random", "none"])
def test_run_compare_baselines(method):
    comp = backend.run_compare(noise(), "What is it?", S(method=method, target_retention=0.25))
    assert comp.pruned.trace.config["method"] == method
    if method != "none":
        assert comp.pruned.trace.counts["retention"] == pytest.approx(0.25, abs=0.1)


def test_target_retention_calibrates_occam():
    comp = backend.run_compare(noise(), "What is it?", S(target_retention=0.3))
    assert comp.config.alpha != 1.0 or comp.config.beta != 1.0
    assert comp.pruned.trace.counts["retention"] == pytest.approx(0.3, abs=0.08)


def test_stage2_layer_out_of_range_is_reported():
    with pytest.raises(ValueError, match="out of range: accepted 0.."):
        backend.run_compare(noise(), "What is it?", S(stage2_layer=99))


def test_bad_model_keeps_the_current_one():
    backend.run_compare(noise(), "What?", S())
    with pytest.raises(backend.ModelLoadError) as e:
        backend.run_compare(noise(), "What?", S(model="/no/such/model/folder"))
    assert "Could not load model '/no/such/model/folder'" in str(e.value)
    assert backend.MODELS.current == MODEL
    assert backend.run_compare(noise(), "What?", S()).model == MODEL


# ---------------------------------------------------------------------------------------------
# images and questions
# ---------------------------------------------------------------------------------------------
def test_image_modes_are_converted(tmp_path):
    rgba = write(tmp_path, "a.png", Image.new("RGBA", (50, 30), (255, 0, 0, 0)))   # fully transparent
    cmyk = write(tmp_path, "c.jpg", Image.new("CMYK", (50, 30), (0, 255, 255, 0)))
    gray = write(tmp_path, "g.png", Image.new("L", (50, 30), 77))
    deep = write(tmp_path, "d.png", Image.fromarray(np.arange(1500, dtype=np.uint16).reshape(30, 50) * 40))
    for path, pixel in ((rgba, (255, 255, 255)), (gray, (77, 77, 77))):
        comp = backend.run_compare(path, "What?", S())
        assert comp.image.mode == "RGB" and comp.image.getpixel((5, 5)) == pixel
    for path in (cmyk, deep):
        comp = backend.run_compare(path, "What?", S())
        assert comp.image.mode == "RGB" and comp.image.size == (50, 30)
        assert tuple(comp.pruned.trace.image_size) == (50, 30)


def test_animated_gif_uses_the_first_frame(tmp_path):
    frames = [Image.new("RGB", (40, 40), c) for c in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    comp = backend.run_compare(str(path), "What?", S())
    r, g, b = comp.image.getpixel((20, 20))
    assert r > 200 and b < 50


def test_exif_rotation_is_respected(tmp_path):
    img = Image.new("RGB", (80, 40), (0, 128, 0))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = write(tmp_path, "rot.jpg", img, exif=exif)
    comp = backend.run_compare(path, "What?", S())
    assert comp.image.size == (40, 80) and tuple(comp.pruned.trace.image_size) == (40, 80)
    boxes = [b for b in comp.pruned.trace.boxes if b is not None]
    assert max(b[3] for b in boxes) <= 80 + 1e-6 and max(b[2] for b in boxes) <= 40 + 1e-6


@pytest.mark.parametrize("kind, message", [
    ("text", "not an image Pillow can read"),
    ("truncated", "corrupt or truncated"),
    ("bomb", "Image too large: 8000x6000 = 48,000,000 pixels"),
    ("missing", "Image file not found"),
    ("none", "No image: upload an image"),
])
def test_bad_images_say_what_is_wrong(tmp_path, kind, message):
    if kind == "text":
        path = tmp_path / "notes.png"
        path.write_text("this is not an image")
    elif kind == "truncated":
        good = write(tmp_path, "good.png", noise(200, 200))
        path = tmp_path / "cut.png"
        path.write_bytes(open(good, "rb").read()[:400])
    elif kind == "bomb":
        path = write(tmp_path, "bomb.png", Image.new("1", (8000, 6000)))
    elif kind == "missing":
        path = tmp_path / "nowhere.png"
    else:
        path = None
    with pytest.raises(ValueError) as e:
        backend.run_compare(None if path is None else str(path), "What?", S())
    assert message in str(e.value)


@pytest.mark.parametrize("question, message", [
    ("   ", "The question is empty"), (None, "The question is empty"), (42, "The question must be text"),
    ("why " * 600, "The question is too long (2399 characters); the limit is 2000"),
])
def test_bad_questions_say_what_is_wrong(question, message):
    with pytest.raises(ValueError) as e:
        backend.run_compare(noise(), question, S())
    assert message in str(e.value)


def test_image_bytes_are_accepted():
    import io
    buf = io.BytesIO()
    noise().save(buf, format="PNG")
    assert backend.run_compare(buf.getvalue(), "What?", S()).image.size == (96, 64)


# ---------------------------------------------------------------------------------------------
# sweeps
# ---------------------------------------------------------------------------------------------
def test_sweep_over_alpha_and_beta():
    sw = backend.run_sweep(noise(), "What is it?", S(), "alpha=beta", "4, 0.25, 1")
    assert [r["value"] for r in sw["rows"]] == [0.25, 1.0, 4.0]
    kept = [r["kept"] for r in sw["rows"]]
    assert kept == sorted(kept, reverse=True)  # a higher threshold keeps fewer tokens
    assert all(r["alpha"] == r["beta"] == r["value"] for r in sw["rows"])
    assert sw["full"]["visual_tokens"] >= kept[0]
    assert all(r["same_as_full"] == (r["answer"] == sw["full"]["answer"]) for r in sw["rows"])
    json.dumps(sw)


def test_sweep_over_target_retention():
    sw = backend.run_sweep(noise(), "What is it?", S(method="random"), "target retention", [0.25, 0.75])
    assert [r["retention"] for r in sw["rows"]] == pytest.approx([0.25, 0.75], abs=0.05)
    sw = backend.run_sweep(noise(), "What is it?", S(), "target retention", "0.4")
    assert sw["rows"][0]["retention"] == pytest.approx(0.4, abs=0.08) and sw["rows"][0]["alpha"] is not None


@pytest.mark.parametrize("settings, param, values, message", [
    ({}, "gamma", "1", "Unknown sweep parameter 'gamma'"),
    ({}, "alpha", "1, x", "Sweep value 'x' is invalid for alpha: accepted numbers > 0"),
    ({}, "alpha", "1, -2", "Sweep value '-2' is invalid for alpha"),
    ({}, "target retention", "0.5, 2", "Sweep value '2' is invalid for target retention"),
    ({}, "alpha", ",", "No sweep values"),
    ({}, "alpha", ",".join(["1"] * 13), None),  # duplicates collapse: fine
    ({}, "alpha", ",".join(str(i + 1) for i in range(13)), "Too many sweep values (13)"),
    ({"method": "none"}, "alpha", "1", "Method 'none' does not prune"),
    ({"method": "fastv"}, "alpha", "1", "Sweeping alpha needs method 'occam'"),
])
def test_sweep_errors(settings, param, values, message):
    if message is None:
        assert backend.parse_sweep_values(values, param) == [1.0]
        return
    with pytest.raises(ValueError) as e:
        backend.run_sweep(noise(), "What?", S(**settings), param, values)
    assert message in str(e.value)


def test_concurrent_requests_keep_their_own_settings():
    """One loaded model, two requests at once with different settings: each gets its own result."""
    requests = [S(method="occam", alpha=0.5), S(method="random", target_retention=0.25),
                S(method="fastv", target_retention=0.5), S(method="occam", alpha=2.0, stage2=False)]
    expected = [backend.run_compare(noise(), "What?", r).to_dict() for r in requests]
    got: dict[int, dict] = {}

    def work(i: int) -> None:
        got[i] = backend.run_compare(noise(), "What?", requests[i]).to_dict()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(requests))]
    [t.start() for t in threads]
    [t.join() for t in threads]
    for i, exp in enumerate(expected):
        assert got[i]["config"] == exp["config"]
        assert got[i]["pruned"]["answer"] == exp["pruned"]["answer"]
        assert got[i]["pruned"]["trace"]["kept"] == exp["pruned"]["trace"]["kept"]
