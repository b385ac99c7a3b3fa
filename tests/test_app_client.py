"""The public API through gradio_client, against the app served on 127.0.0.1 (a free port)."""
from __future__ import annotations

import os
import socket

import numpy as np
import pytest
from PIL import Image

from occam.loading import toy_path

MODEL = os.environ.get("OCCAM_APP_MODEL") or ("toy" if (toy_path() / "config.json").is_file() else "tiny-llava")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def url():
    from app import ui
    old = {k: os.environ.get(k) for k in ("OCCAM_APP_MODEL", "OCCAM_APP_CACHE_EXAMPLES")}
    os.environ.update(OCCAM_APP_MODEL=MODEL, OCCAM_APP_CACHE_EXAMPLES="0")
    demo = ui.build_demo()
    port = free_port()
    try:
        demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                    **ui.launch_options(demo))
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def client(url):
    from gradio_client import Client
    return Client(url, verbose=False)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("client")
    Image.fromarray((np.random.default_rng(2).random((72, 100, 3)) * 255).astype(np.uint8)).save(d / "img.png")
    (d / "notes.png").write_text("definitely not an image")
    Image.new("1", (8000, 6000)).save(d / "bomb.png")  # 48 MP in a 6 kB file
    Image.new("CMYK", (50, 40), (0, 200, 200, 0)).save(d / "cmyk.jpg")
    return {p.stem: str(p) for p in d.iterdir()}


def test_compare_returns_both_answers_and_the_trace(client, files):
    from gradio_client import handle_file
    res = client.predict(handle_file(files["img"]), "What is in the picture?",
                         {"method": "occam", "max_new_tokens": 4}, api_name="/compare")
    assert res["model"] == MODEL
    assert isinstance(res["full"]["answer"], str) and isinstance(res["pruned"]["answer"], str)
    trace = res["pruned"]["trace"]
    assert trace["image_size"] == [100, 72] and len(trace["boxes"]) == trace["num_visual"]
    assert [s["name"] for s in trace["stages"]] == ["stage1", "stage2"]
    assert res["full"]["trace"]["config"]["method"] == "none"
    assert res["pruned"]["kept_tokens"] == trace["counts"]["final"] <= res["full"]["visual_tokens"]
    # the same input through the library gives the same answers (one shared model, greedy decoding)
    from app import backend
    comp = backend.run_compare(files["img"], "What is in the picture?", {"model": MODEL, "max_new_tokens": 4})
    assert (comp.full.text, comp.pruned.text) == (res["full"]["answer"], res["pruned"]["answer"])


def test_compare_defaults_and_other_image_modes(client, files):
    from gradio_client import handle_file
    res = client.predict(handle_file(files["cmyk"]), "What color?", api_name="/compare")
    assert res["settings"]["method"] == "occam" and res["pruned"]["trace"]["image_size"] == [50, 40]


def test_sweep_endpoint(client, files):
    from gradio_client import handle_file
    res = client.predict(handle_file(files["img"]), "What?", {"max_new_tokens": 2}, "alpha=beta", "0.5, 2",
                         api_name="/sweep")
    assert [r["value"] for r in res["rows"]] == [0.5, 2.0] and "answer" in res["full"]


@pytest.mark.parametrize("image, question, settings, message", [
    ("notes", "What?", {}, "not an image Pillow can read"),
    ("bomb", "What?", {}, "Image too large: 8000x6000"),
    ("img", "   ", {}, "The question is empty"),
    ("img", "q" * 3000, {}, "The question is too long"),
    ("img", "What?", {"alpha": 0}, "alpha=0 is invalid: accepted a finite number > 0"),
    ("img", "What?", {"method": "magic"}, "method='magic' is invalid"),
    ("img", "What?", {"colour": "red"}, "Unknown setting(s) 'colour'"),
    ("img", "What?", {"model": "no-such-org/no-such-model"}, "Could not load model 'no-such-org/no-such-model'"),
])
def test_bad_inputs_come_back_as_errors(client, files, image, question, settings, message):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError
    with pytest.raises(AppError) as e:
        client.predict(handle_file(files[image]), question, settings, api_name="/compare")
    assert message in str(e.value)
    # and the app still serves the current model
    ok = client.predict(handle_file(files["img"]), "What?", {"max_new_tokens": 1}, api_name="/compare")
    assert ok["model"] == MODEL


def test_methods_and_inspect_endpoints(client, files):
    """The method comparison and the token inspector as named endpoints, with the trace JSON."""
    from gradio_client import handle_file
    res = client.predict(handle_file(files["img"]), "What is it?", {"max_new_tokens": 2, "target_retention": 0.25},
                         "red", api_name="/methods")
    assert [r["method"] for r in res["rows"]] == ["occam", "topk", "fastv", "visionzip", "random"]
    assert res["reference"] == "red" and all(len(r["trace"]["kept"]) == r["visual"] for r in res["rows"])
    comp = client.predict(handle_file(files["img"]), "What is it?", {"max_new_tokens": 2}, api_name="/compare")
    boxes = comp["pruned"]["trace"]["boxes"]
    j = next(k for k, b in enumerate(boxes) if b is not None)
    out = client.predict(comp, f"{boxes[j][0] + 1},{boxes[j][1] + 1}", api_name="/inspect")
    assert out["inspection"]["token"] == j and out["trace"]["num_visual"] == len(boxes)
    assert [s["stage"] for s in out["inspection"]["stages"]] == ["stage1", "stage2"]
    from gradio_client.exceptions import AppError
    with pytest.raises(AppError, match="Token 9999 is invalid"):
        client.predict(comp, "9999", api_name="/inspect")
