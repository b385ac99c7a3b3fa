"""app.ui: every event handler called directly, the layout's endpoints, examples, the image component."""
from __future__ import annotations

import json
import os

import gradio as gr
import numpy as np
import plotly.graph_objects as go
import pytest
from PIL import Image

from app import backend, render, ui
from occam.loading import toy_path

MODEL = os.environ.get("OCCAM_APP_MODEL") or ("toy" if (toy_path() / "config.json").is_file() else "tiny-llava")


def knobs(**over) -> tuple:
    """The knob values the UI sends, in ui.KNOBS order (optional number fields: "" as an empty text box)."""
    values = ui.default_values()
    values = {k: ("" if v is None else v) for k, v in values.items()}
    values.update(model=MODEL, max_new_tokens=3, repeats=1)
    values.update(over)
    return tuple(values[k] for k in ui.KNOBS)


@pytest.fixture(scope="module")
def img_path(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("img") / "noise.png"
    Image.fromarray((np.random.default_rng(1).random((64, 96, 3)) * 255).astype(np.uint8)).save(path)
    return str(path)


def no_progress(*a, **k):
    return None


N_OUT = 7 + len(render.VIEWS) + 9
TRACE_FILE = 7 + len(render.VIEWS) + 2


def check_run_outputs(out: tuple) -> None:
    (full, full_meta, pruned, pruned_meta, agree, budget, speed, *rest) = out
    figs, hist, stats, trace_file, gallery, status = rest[:5], rest[5], rest[6], rest[7], rest[8], rest[9]
    state, insp_img, insp_token, insp_md = rest[10:]
    assert isinstance(full, str) and isinstance(pruned, str)
    assert full_meta.startswith("**Full model** · method `none`") and "visual tokens" in full_meta
    assert pruned_meta.startswith("**Pruned** · method") and "n=" in pruned_meta
    assert "Same answer" in agree or "Answer changed" in agree
    assert "**Budget**" in budget
    assert speed.startswith("**Measured speed-up (full ÷ pruned):**") and "not measured" in speed
    assert state["trace"]["num_visual"] > 0 and insp_md.startswith(f"### Token {insp_token}")
    assert isinstance(insp_img, Image.Image)
    assert len(figs) == len(render.VIEWS) and all(isinstance(f, go.Figure) for f in figs)
    assert [f.layout.meta["view"] for f in figs] == list(render.VIEWS)
    assert isinstance(hist, go.Figure) and "| after Stage I |" in stats
    data = json.load(open(trace_file))
    assert data["full"]["answer"] == full and data["pruned"]["answer"] == pruned
    assert data["pruned"]["trace"]["num_visual"] > 0 and data["full"]["trace"]["config"]["method"] == "none"
    assert len(gallery) == len(render.VIEWS) and all(isinstance(im, Image.Image) for im, _ in gallery)
    assert f"Serving **{MODEL}**" in status


def test_on_run(img_path):
    out = ui.on_run(img_path, "What is in the picture?", "", *knobs(), progress=no_progress)
    assert len(out) == N_OUT
    check_run_outputs(out)


def test_on_run_baseline_and_knobs(img_path):
    out = ui.on_run(img_path, "What?", "", *knobs(method="fastv", target_retention=0.25), progress=no_progress)
    data = json.load(open(out[TRACE_FILE]))
    assert data["config"]["method"] == "fastv" and data["config"]["retention"] == 0.25
    out = ui.on_run(img_path, "What?", "", *knobs(stage2=False, alpha=0.8, reference="mean", min_tokens="5",
                                                  thresholds="manual"), progress=no_progress)
    cfg = json.load(open(out[TRACE_FILE]))["config"]
    assert (cfg["stage2"], cfg["alpha"], cfg["reference"], cfg["min_tokens"]) == (False, 0.8, "mean", 5)
    assert "not part of this run" in out[7 + render.VIEWS.index("stage2_evidence")].layout.title.text


def test_empty_optional_fields_are_auto_and_zero_is_checked(img_path):
    out = ui.on_run(img_path, "What?", "", *knobs(stage2_layer="", min_tokens="", max_tokens=""),
                    progress=no_progress)
    cfg = json.load(open(out[TRACE_FILE]))["config"]
    assert (cfg["stage2_layer"], cfg["min_tokens"], cfg["max_tokens"]) == (None, None, None)
    with pytest.raises(gr.Error, match="max_tokens=0 is invalid"):
        ui.on_run(img_path, "What?", "", *knobs(max_tokens="0"), progress=no_progress)
    with pytest.raises(gr.Error, match="target_retention=0 is invalid"):
        ui.on_run(img_path, "What?", "", *knobs(target_retention=0), progress=no_progress)


def test_knob_controls_are_derived_from_the_config():
    """Optional numbers are text boxes (empty = auto, never a 0 shown by a number widget); string modes
    with declared choices are dropdowns / radios; every OccamConfig field has a control."""
    import dataclasses
    import occam
    demo = ui.build_demo()
    comps = {c["props"].get("elem_id"): c for c in demo.get_config_file()["components"]}
    for f in dataclasses.fields(occam.OccamConfig):
        if f.name in backend.MANAGED_FIELDS:
            continue
        assert f"knob-{f.name}" in comps, f.name
    for name in ("stage2_layer", "min_tokens", "max_tokens"):
        c = comps[f"knob-{name}"]
        assert c["type"] == "textbox" and c["props"]["value"] == "" and "empty" in c["props"]["label"]
    kr = comps["knob-keep_registers"]
    default = occam.OccamConfig().keep_registers
    assert kr["type"] == ("checkbox" if isinstance(default, bool) else "radio") and kr["props"]["value"] == default
    assert comps["knob-target_retention"]["props"]["value"] == 0.25


@pytest.mark.parametrize("image, question, over, message", [
    ("notes", "What?", {}, "not an image Pillow can read"),
    (None, "What?", {}, "No image"),
    ("img", "  ", {}, "The question is empty"),
    ("img", "x" * 2500, {}, "The question is too long"),
    ("img", "What?", {"alpha": -1.0}, "alpha=-1.0 is invalid"),
    ("img", "What?", {"stage2_layer": "1.5"}, "stage2_layer='1.5' is invalid: accepted empty (auto) or an integer"),
    ("img", "What?", {"stage2_layer": "50"}, "out of range"),
    ("img", "What?", {"model": "no-such-org/no-such-model"}, "Could not load model 'no-such-org/no-such-model'"),
])
def test_on_run_errors_are_gr_errors_with_messages(tmp_path, img_path, image, question, over, message):
    if image == "notes":
        image = tmp_path / "notes.txt"
        image.write_text("hello")
        image = str(image)
    elif image == "img":
        image = img_path
    with pytest.raises(gr.Error) as e:
        ui.on_run(image, question, "", *knobs(**over), progress=no_progress)
    assert message in e.value.message
    # the app keeps working with the current model afterwards
    assert ui.on_run(img_path, "What?", "", *knobs(), progress=no_progress)[0] is not None


def test_unexpected_errors_still_reach_the_user():
    @ui.user_errors
    def boom():
        raise RuntimeError("disk on fire")

    with pytest.raises(gr.Error, match=r"Unexpected error \(RuntimeError\): disk on fire"):
        boom()


def test_on_example(img_path, monkeypatch):
    monkeypatch.setenv("OCCAM_APP_MODEL", MODEL)  # examples run with the default settings
    check_run_outputs(ui.on_example(img_path, "What is it?", "a reference", progress=no_progress))


def test_on_sweep(img_path):
    fig, table, summary = ui.on_sweep(img_path, "What?", "alpha=beta", "0.5, 1, 2", *knobs(thresholds="manual"),
                                      progress=no_progress)
    assert isinstance(fig, go.Figure) and [row[0] for row in table] == [0.5, 1.0, 2.0]
    assert summary.startswith("Full model: **")
    with pytest.raises(gr.Error, match="Sweeping alpha needs method 'occam'"):
        ui.on_sweep(img_path, "What?", "alpha", "1", *knobs(method="random"), progress=no_progress)


def test_on_sweep_param():
    assert ui.on_sweep_param("target retention") == backend.DEFAULT_SWEEP_VALUES["target retention"]
    assert ui.on_sweep_param("alpha") == backend.DEFAULT_SWEEP_VALUES["alpha"]


def test_on_image_change(tmp_path, img_path):
    info, reference = ui.on_image_change(img_path)
    assert info == "Image 96×64 RGB (file: PNG, mode RGB)" and reference == ""
    frames = [Image.new("RGB", (20, 10), c) for c in ("red", "blue")]
    gif = tmp_path / "a.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:])
    assert "2 frames: the first is used" in ui.on_image_change(str(gif))[0]
    assert ui.on_image_change(None) == ("", "")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(gr.Error, match="not an image|corrupt"):
        ui.on_image_change(str(bad))


def test_inspector_handlers(img_path):
    out = ui.on_run(img_path, "What color?", "", *knobs(), progress=no_progress)
    state = out[-4]
    md, token, img = ui.on_inspect_index(state, 5)
    assert md.startswith("### Token 5") and token == 5 and img.size[0] == ui.INSPECT_SIDE
    box = state["trace"]["boxes"][5]
    scale = ui.INSPECT_SIDE / max(state["trace"]["image_size"])
    evt = gr.SelectData(None, {"index": [(box[0] + 1) * scale, (box[1] + 1) * scale], "value": None})
    assert ui.on_inspect_click(state, evt)[1] == 5
    with pytest.raises(gr.Error, match="Run a comparison first"):
        ui.on_inspect_index(None, 3)
    with pytest.raises(gr.Error, match="Token 999 is invalid"):
        ui.on_inspect_index(state, 999)


def test_on_methods(img_path):
    html, table, path = ui.on_methods(img_path, "What color?", "red", *knobs(), progress=no_progress)
    assert html.count('<figure class="occ-card') == 1 + len(backend.COMPARED_METHODS)
    assert [row[0] for row in table] == ["full model", *backend.COMPARED_METHODS]
    data = json.load(open(path))
    assert data["reference"] == "red" and len(data["rows"]) == len(backend.COMPARED_METHODS)


def test_trace_files_are_pruned_and_removed(tmp_path):
    store = ui.TraceFiles(max_age_s=0.0)
    a = store.write({"x": 1})
    import time
    time.sleep(0.01)
    b = store.write({"x": 2})
    assert not os.path.exists(a) and os.path.exists(b)  # older than max_age: deleted at the next write
    folder = store.folder
    store.cleanup()
    assert not os.path.exists(folder)


def test_api_handlers(img_path):
    res = ui.api_compare(img_path, "What?", {"model": MODEL, "method": "topk", "max_new_tokens": 2})
    assert res["pruned"]["trace"]["config"]["method"] == "topk" and "answer" in res["full"]
    assert ui.api_compare(img_path, "What?", json.dumps({"model": MODEL}))["model"] == MODEL
    sw = ui.api_sweep(img_path, "What?", {"model": MODEL, "max_new_tokens": 2}, "alpha", "1, 2")
    assert len(sw["rows"]) == 2
    insp = ui.api_inspect(res, "3")
    assert insp["inspection"]["token"] == 3 and insp["trace"]["num_visual"] == res["pruned"]["trace"]["num_visual"]
    boxes = res["pruned"]["trace"]["boxes"]
    j = next(k for k, b in enumerate(boxes) if b is not None)
    got = ui.api_inspect(json.dumps(res["pruned"]["trace"]), f"{boxes[j][0] + 0.5},{boxes[j][1] + 0.5}")
    assert got["inspection"]["token"] == j
    with pytest.raises(gr.Error, match="not a trace"):
        ui.api_inspect({"a": 1}, "1")
    m = ui.api_methods(img_path, "What?", {"model": MODEL, "max_new_tokens": 2}, "")
    assert [r["method"] for r in m["rows"]] == list(backend.COMPARED_METHODS)
    with pytest.raises(gr.Error, match="Unknown setting"):
        ui.api_compare(img_path, "What?", {"colour": 1})


def test_image_input_passes_the_file_unopened(tmp_path):
    from gradio.data_classes import ImageData
    comp = ui.image_input(label="Image")
    assert isinstance(comp, gr.Image) and comp.get_block_name() == "image"  # the stock widget in the browser
    notes = tmp_path / "x.png"
    notes.write_text("not an image")  # gr.Image's own preprocess fails inside Gradio on this
    with pytest.raises(OSError):  # PIL's UnidentifiedImageError
        gr.Image(type="filepath").preprocess(ImageData(path=str(notes), orig_name="x.png"))
    assert comp.preprocess(ImageData(path=str(notes), orig_name="x.png")) == str(notes)
    assert comp.preprocess(None) is None
    assert comp.preprocess(ImageData(url="data:image/png;base64,aGVsbG8=")) == b"hello"
    assert not (ui.Path(ui.__file__).with_suffix(".pyi")).exists()  # no stub written next to the app


def test_load_examples(tmp_path):
    assert ui.load_examples(tmp_path) == []  # absent: no examples block
    (tmp_path / "examples.json").write_text("{broken")
    assert ui.load_examples(tmp_path) == []
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "examples.json").write_text(json.dumps([
        {"image": "a.png", "question": "What?", "answer": "red"},
        {"image": "missing.png", "question": "Skipped?", "answer": "x"},
        {"question": "no image"}]))
    assert ui.load_examples(tmp_path) == [[str((tmp_path / "a.png").resolve()), "What?", "red"]]


def test_build_demo_endpoints_and_queue():
    demo = ui.build_demo()
    deps = {d["api_name"]: d for d in demo.get_config_file()["dependencies"]}
    assert all(deps[n]["api_visibility"] == "public" for n in ("compare", "sweep", "methods", "inspect"))
    assert all(d["api_visibility"] == "private" for name, d in deps.items() if name.startswith("on_"))
    assert demo._queue is not None and demo._queue.default_concurrency_limit >= 1
    assert (demo._queue.default_concurrency_limit, demo._queue.max_size) == ui.queue_limits()


def test_gpu_decorator_is_harmless_without_spaces():
    pytest.importorskip("gradio")
    from app import public
    try:
        import spaces  # noqa: F401
        present = True
    except ImportError:
        present = False
    assert present or public.gpu(lambda *a: public.Work(1, 1))(len) is len   # no `spaces`: the function itself


def test_examples_block_appears_when_examples_exist(tmp_path, monkeypatch):
    Image.new("RGB", (16, 16), "red").save(tmp_path / "red.png")
    (tmp_path / "examples.json").write_text(json.dumps([{"image": "red.png", "question": "Color?", "answer": "red"}]))
    monkeypatch.setattr(ui, "EXAMPLES_DIR", tmp_path)
    monkeypatch.setenv("OCCAM_APP_CACHE_EXAMPLES", "lazy")
    monkeypatch.setenv("GRADIO_EXAMPLES_CACHE", str(tmp_path / "cache"))
    config = ui.build_demo().get_config_file()
    (dataset,) = [c for c in config["components"] if c["type"] == "dataset"]
    assert dataset["props"]["samples"][0][1] == "Color?" and dataset["props"]["samples"][0][2] == "red"
    monkeypatch.setattr(ui, "EXAMPLES_DIR", tmp_path / "absent")
    config = ui.build_demo().get_config_file()
    assert not [c for c in config["components"] if c["type"] == "dataset"]


def test_no_content_flag_is_shown(img_path):
    """A stage that leaves only registers: the trace flags it and the page warns (docs/method.md section 8)."""
    out = ui.on_run(img_path, "What?", "", *knobs(thresholds="manual", alpha=1000.0), progress=no_progress)
    flags = json.load(open(out[TRACE_FILE]))["pruned"]["trace"]["flags"]
    assert flags.get("no_content") == "stage1"
    assert "Stage I left no content token" in out[5]
