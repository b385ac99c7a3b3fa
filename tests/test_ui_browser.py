"""End to end in a real browser: `python app.py` on 127.0.0.1, Chromium driven by Playwright.

Needs the `playwright` Python package and Debian's Chromium (`apt-get install -y chromium`); no
browser is downloaded (never `playwright install`). A missing piece FAILS the test with the fix.
Artefacts: tests/artifacts/*.png (a folder git ignores). OCCAM_APP_SCREENSHOT=path also saves the
main page there, and OCCAM_APP_SCREENSHOT_DIR=docs the other views (how docs/*.png are made).
"""
from __future__ import annotations

import glob
import json
import os
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests.conftest import app_model, served_app

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "tests" / "artifacts"
CHROMIUM = os.environ.get("OCCAM_APP_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
MODEL = app_model()


def example() -> tuple[str, str]:
    """The first shipped example when there is one, else a drawn picture."""
    index = REPO / "assets" / "examples" / "examples.json"
    try:
        first = json.loads(index.read_text())[0]
        path = index.parent / first["image"]
        if path.is_file():
            return str(path), first["question"]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        pass
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray((np.random.default_rng(3).random((240, 320, 3)) * 60 + 180).astype(np.uint8))
    ImageDraw.Draw(img).ellipse([110, 70, 210, 170], fill=(220, 30, 30))
    path = ARTIFACTS / "input.png"
    img.save(path)
    return str(path), "What color is the circle?"


@pytest.fixture(scope="module")
def server():
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / ".gitignore").write_text("*\n")
    with served_app(ARTIFACTS / "server.log") as (url, _):
        yield url
    # stopped (SIGTERM): the folder of downloadable trace files went with the process
    folders = re.findall(r"trace files in (\S+)", (ARTIFACTS / "server.log").read_text())
    assert not any(os.path.exists(f) for f in folders), folders


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"Chromium not found at {CHROMIUM}: install it with `apt-get install -y chromium` "
                    "(or point OCCAM_APP_CHROMIUM at a Chromium binary). Never `playwright install`.")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("The `playwright` Python package is missing: `pip install playwright` (the browser itself "
                    "comes from apt: `apt-get install -y chromium`).")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def examples() -> list[dict]:
    return json.loads((REPO / "assets" / "examples" / "examples.json").read_text())


def example_path(name: str) -> str:
    return str(REPO / "assets" / "examples" / name)


def shot(page, name: str, full_page: bool = True) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full_page)
    out = os.environ.get("OCCAM_APP_SCREENSHOT_DIR")
    if out:
        page.mouse.move(0, 0)
        page.screenshot(path=os.path.join(out, f"{name}.png"), full_page=full_page)


def open_page(browser, server, width=1400, height=1200):
    page = browser.new_page(viewport={"width": width, "height": height})
    page.set_default_timeout(60_000)
    page.goto(server)
    page.wait_for_selector("#image input[type=file]", state="attached")
    return page


def ask(page, image: str, question: str) -> None:
    page.set_input_files("#image input[type=file]", image)
    page.wait_for_function("document.querySelector('#image-info').innerText.includes('RGB')")
    page.fill("#question textarea", question)


def run_and_wait(page, button: str = "#run") -> str:
    """Press the button and wait until the stats panel shows a NEW result; returns the stats text."""
    before = page.inner_text("#stats")
    page.click(button)
    page.wait_for_function("(b) => { const t = document.querySelector('#stats').innerText;"
                           " return t.includes('after Stage I') && t !== b && !t.includes(' ...'); }",
                           arg=before, timeout=180_000)
    return page.inner_text("#stats")


def stats_row(stats: str, name: str) -> str:
    """A row of the stats tables (rendered: cells separated by tabs) whose first cell is ``name``."""
    line = next(ln for ln in stats.splitlines() if ln.split("\t")[0].strip() == name)
    return " ".join(line.split())


def test_upload_ask_and_see_both_answers_and_heatmaps(server, browser):
    image, question = example()
    page = open_page(browser, server)
    ask(page, image, question)
    run_and_wait(page)
    assert "method none" in page.inner_text("#full-meta") and "visual tokens" in page.inner_text("#full-meta")
    assert "n=3" in page.inner_text("#pruned-meta")
    full, pruned = page.input_value("#full-answer textarea"), page.input_value("#pruned-answer textarea")
    # the rendered heatmap: a plotly figure with heatmap layers on the original image
    page.wait_for_selector("#plot-final .js-plotly-plot")
    assert page.locator("#plot-final g.hm").count() >= 1
    assert page.locator("#plot-final .imagelayer image").count() >= 1  # the background photo
    assert "visual tokens kept" in page.locator("#plot-final .gtitle").first.text_content()
    # hovering a patch tells what happened to that token
    drag = page.locator("#plot-final .nsewdrag").first.bounding_box()
    hover = ""
    for fx, fy in ((0.5, 0.45), (0.5, 0.3), (0.4, 0.5), (0.6, 0.5)):
        page.mouse.move(drag["x"] + drag["width"] * fx, drag["y"] + drag["height"] * fy)
        time.sleep(0.4)
        if page.locator("#plot-final .hovertext").count():
            hover = page.locator("#plot-final .hovertext").first.text_content()
            break
    assert "token" in hover and "final:" in hover, hover
    shot(page, "ui")
    if os.environ.get("OCCAM_APP_SCREENSHOT"):
        page.mouse.move(0, 0)
        page.screenshot(path=os.environ["OCCAM_APP_SCREENSHOT"], full_page=True)
    # the same answers as the library gives on the same input
    from app import backend
    comp = backend.run_compare(image, question, {"model": MODEL})

    def nl(s: str) -> str:  # a textarea normalises newlines
        return s.replace("\r\n", "\n").replace("\r", "\n")

    assert (nl(full), nl(pruned)) == (nl(comp.full.text), nl(comp.pruned.text))
    # a bad request shows its message and the page keeps working
    page.fill("#question textarea", "   ")
    page.click("#run")
    page.wait_for_selector("text=The question is empty", timeout=30_000)
    page.close()


def test_opening_the_knobs_panel_does_not_change_the_result(server, browser):
    """Bug: on a fresh page the empty optional number fields showed 0 once the panel opened, and Run
    used K = 0. Same input, run before and after opening the panel: the same tokens are kept."""
    ex = next(e for e in examples() if e["image"] == "texture_4obj_count.png")
    page = open_page(browser, server)
    ask(page, example_path(ex["image"]), ex["question"])
    closed = run_and_wait(page)
    page.get_by_text("Pruning knobs").first.click()
    time.sleep(1.0)
    opened = run_and_wait(page)
    for row in ("final", "after Stage II", "Stage II"):
        assert stats_row(opened, row) == stats_row(closed, row), row
    page.close()


def test_zero_is_a_checked_value_and_empty_is_auto(server, browser):
    page = open_page(browser, server)
    ask(page, *example())
    page.get_by_text("Pruning knobs").first.click()
    for name in ("stage2_layer", "min_tokens", "max_tokens"):
        box = page.locator(f"#knob-{name} input, #knob-{name} textarea").first
        assert box.input_value() == "", name  # stays empty ("auto") when the panel opens
        assert "empty" in page.inner_text(f"#knob-{name}"), name  # the rule is in the label
    page.locator("#knob-max_tokens input, #knob-max_tokens textarea").first.fill("0")
    page.click("#run")
    page.wait_for_selector("text=max_tokens=0 is invalid", timeout=60_000)
    page.close()


def test_speedup_is_measured_with_spread_and_estimates_are_labelled(server, browser):
    page = open_page(browser, server)
    ask(page, *example())
    run_and_wait(page)
    speed = page.inner_text("#speedup")
    assert re.search(r"prefill ×[\d.]+ \(range ×[\d.]+–×[\d.]+\)", speed), speed
    assert "median of 3 timed pairs after 1 warm-up" in speed
    assert "Estimated from token counts (not measured)" in speed
    stats = page.inner_text("#stats")
    assert "time: prefill (measured: median, min–max, n)" in stats and "n=3" in stats
    assert "prefill FLOPs (estimate)" in stats
    page.close()


def test_evidence_heatmap_log_scale_threshold_and_legend(server, browser):
    page = open_page(browser, server)
    ask(page, *example())
    run_and_wait(page)
    for tab, plot, sym in (("Stage I evidence", "#plot-stage1_evidence", "α"),
                           ("Stage II evidence", "#plot-stage2_evidence", "β")):
        page.get_by_role("tab", name=tab).click()
        page.wait_for_selector(f"{plot} .js-plotly-plot")
        ticks = " ".join(page.locator(f"{plot} .colorbar text").all_text_contents())
        assert f"◀ {sym} =" in ticks, ticks  # the threshold marked on the colour bar
        legend = " ".join(page.locator(f"{plot} .legend text").all_text_contents())
        assert "above threshold" in legend and "below threshold" in legend and "register" in legend, legend
        assert "log scale" in page.locator(f"{plot} .gtitle").first.text_content()
        if tab == "Stage I evidence":
            shot(page, "evidence", full_page=False)
    page.close()


def test_changed_answer_is_flagged_and_checked_against_a_typed_reference(server, browser):
    from app import backend
    ex = next(e for e in examples() if e["image"] == "texture_4obj_count.png")
    image = example_path(ex["image"])
    # the setting: 5% target under random pruning changes this answer (checked here with the library)
    settings = {"model": MODEL, "method": "random", "target_retention": 0.05, "repeats": 1}
    comp = backend.run_compare(image, ex["question"], settings)
    assert comp.full.text != comp.pruned.text, "pick a setting that changes the answer"
    page = open_page(browser, server)
    ask(page, image, ex["question"])
    page.fill("#reference textarea", ex["answer"])
    page.locator("#knob-method input").first.click()
    page.get_by_role("option", name="random").click()
    slider = page.locator("#knob-target_retention input[type=number]").first
    slider.fill("0.05")
    slider.press("Enter")
    time.sleep(0.5)
    run_and_wait(page)
    flag = page.inner_text("#agreement")
    assert "Answer changed" in flag, flag
    assert f"Reference answer {ex['answer']}" in flag and "full model ✓ matches" in flag
    assert "pruned ✗ does not match" in flag
    page.wait_for_selector("#plot-final .js-plotly-plot .hm")
    time.sleep(0.5)
    shot(page, "changed_answer", full_page=False)
    page.close()


def test_method_comparison_grid(server, browser):
    ex = next(e for e in examples() if e["image"] == "texture_4obj_count.png")
    page = open_page(browser, server)
    ask(page, example_path(ex["image"]), ex["question"])
    page.fill("#reference textarea", ex["answer"])
    page.get_by_role("tab", name="Method comparison").click()
    page.click("#methods-run")
    page.wait_for_function("document.querySelectorAll('#method-cards figure').length == 6", timeout=180_000)
    methods = page.eval_on_selector_all("#method-cards figure", "els => els.map(e => e.dataset.method)")
    assert methods == ["none", "occam", "topk", "fastv", "visionzip", "random"]
    # every card: a loaded mask image and a caption with the answer
    loaded = page.eval_on_selector_all("#method-cards img", "els => els.map(e => e.complete && e.naturalWidth > 0)")
    assert all(loaded) and len(loaded) == 6
    caps = page.locator("#method-cards figcaption").all_inner_texts()
    assert all(c.strip() for c in caps) and "kept" in caps[1]
    from app import backend
    runs = backend.run_methods(example_path(ex["image"]), ex["question"], {"model": MODEL}, reference=ex["answer"])
    for cap, row in zip(caps[1:], runs.data["rows"]):
        assert row["answer"] in cap and f"{row['kept']}/{row['visual']} kept" in cap, (cap, row["method"])
        assert ("≠ full" in cap) == (not row["same_as_full"])
    table = page.inner_text("#method-table")
    assert "visionzip" in table and "matches reference" in table
    shot(page, "methods")
    page.close()


def test_token_inspector_click(server, browser):
    page = open_page(browser, server)
    image, question = example()
    ask(page, image, question)
    run_and_wait(page)
    page.wait_for_selector("#plot-final .js-plotly-plot .hm")
    page.get_by_role("tab", name="Token inspector").click()
    img = page.locator("#inspect-image img").first
    img.wait_for()
    page.wait_for_function("(() => { const e = document.querySelector('#inspect-image img');"
                           " return e && e.complete && e.naturalWidth > 0; })()")
    img.scroll_into_view_if_needed()
    time.sleep(1.0)  # let the tab finish laying out before the click
    box = img.bounding_box()
    natural = page.eval_on_selector("#inspect-image img", "e => [e.naturalWidth, e.naturalHeight]")
    fx, fy = 0.37, 0.55
    img.click(position={"x": box["width"] * fx, "y": box["height"] * fy})
    from app import backend, ui
    comp = backend.run_compare(image, question, {"model": MODEL, "repeats": 1})
    trace = comp.pruned.trace.to_dict()
    scale = ui.INSPECT_SIDE / max(trace["image_size"])
    expected = backend.token_at(trace, natural[0] * fx / scale, natural[1] * fy / scale)
    try:
        page.wait_for_function(f"document.querySelector('#inspector').innerText.includes('Token {expected} ')",
                               timeout=30_000)
    except Exception:
        shot(page, "inspector_failed", full_page=False)
        raise AssertionError(f"expected token {expected}; inspector shows: {page.inner_text('#inspector')[:300]}")
    text = page.inner_text("#inspector")
    assert "Stage I" in text and "rank" in text and "register reference" in text
    assert "question tokens that drew on it most" in text
    shot(page, "inspector", full_page=False)
    # typing an index works too
    page.locator("#inspect-token input").fill("0")
    page.click("#inspect-go")
    page.wait_for_function("document.querySelector('#inspector').innerText.includes('Token 0 ')")
    page.close()


def test_small_things_gallery_phone_log_and_trace_folders(server, browser):
    before = set(glob.glob(os.path.join(tempfile.gettempdir(), "occam_trace_*")))
    page = open_page(browser, server)
    ask(page, *example())
    run_and_wait(page)
    run_and_wait(page)
    # no folder left behind per run (the trace files live in one per-process folder, pruned, removed at exit)
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "occam_trace_*"))) == before
    log_text = (ARTIFACTS / "server.log").read_text()
    assert "FutureWarning" not in log_text, log_text[-2000:]
    # gallery captions are not cut
    page.get_by_text("Static overlays (PNG)").click()
    page.wait_for_selector("#gallery .caption-label, #gallery figcaption, #gallery .thumbnail-item", timeout=30_000)
    cut = page.eval_on_selector_all(
        "#gallery .caption-label, #gallery figcaption",
        "els => els.filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.innerText)")
    assert cut == [], cut
    # register markers: a readable label in the strip below the image
    marks_js = "[...document.querySelectorAll('#plot-final .scatterlayer text')].map(e => e.textContent)"
    try:   # Plotly may still be drawing on a loaded machine: wait for the labels, then check them
        page.wait_for_function(f"{marks_js}.some(t => t.startsWith('R'))", timeout=30_000)
    except Exception:
        pass
    marks = page.evaluate(marks_js)
    assert any(t.startswith("R") for t in marks), marks
    page.close()
    # phone width: the histogram fits the screen
    phone = open_page(browser, server, width=390, height=844)
    ask(phone, *example())
    run_and_wait(phone)
    phone.get_by_role("tab", name="Histograms").click()
    phone.wait_for_selector("#plot-histogram .js-plotly-plot")
    time.sleep(1.0)
    right = phone.eval_on_selector("#plot-histogram .main-svg", "e => e.getBoundingClientRect().right")
    width = phone.evaluate("window.innerWidth")
    assert right <= width + 1, (right, width)
    shot(phone, "phone_histogram")
    phone.close()
