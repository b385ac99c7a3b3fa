"""End to end in a real browser: `python app.py` on 127.0.0.1, Chromium driven by Playwright.

Needs the `playwright` Python package and Debian's Chromium (`apt-get install -y chromium`); no
browser is downloaded (never `playwright install`). A missing piece FAILS the test with the fix.
Artefact: tests/artifacts/ui.png (a folder git ignores). OCCAM_APP_SCREENSHOT=path also saves the
page there (how docs/screenshot.png is made).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from occam.loading import toy_path

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "tests" / "artifacts"
CHROMIUM = os.environ.get("OCCAM_APP_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
MODEL = os.environ.get("OCCAM_APP_MODEL") or ("toy" if (toy_path() / "config.json").is_file() else "tiny-llava")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    port = free_port()
    env = dict(os.environ, GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port), OCCAM_APP_MODEL=MODEL,
               GRADIO_ANALYTICS_ENABLED="False", OCCAM_APP_CACHE_EXAMPLES="0")
    log = open(ARTIFACTS / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"`python app.py` exited with {proc.returncode}: {(ARTIFACTS / 'server.log').read_text()}")
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if time.time() > deadline:
                    pytest.fail("`python app.py` did not answer within 180 s; see tests/artifacts/server.log")
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


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


def test_upload_ask_and_see_both_answers_and_heatmaps(server, browser):
    image, question = example()
    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    page.set_default_timeout(60_000)
    page.goto(server)
    page.wait_for_selector("#image input[type=file]", state="attached")
    page.set_input_files("#image input[type=file]", image)
    page.wait_for_function("document.querySelector('#image-info').innerText.includes('RGB')")
    page.fill("#question textarea", question)
    page.click("#run")
    # both answers with their metrics
    page.wait_for_function("document.querySelector('#pruned-meta').innerText.includes('visual tokens')",
                           timeout=180_000)
    assert "method none" in page.inner_text("#full-meta") and "visual tokens" in page.inner_text("#full-meta")
    assert "Speed-up" in page.inner_text("#speedup")
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
    page.screenshot(path=str(ARTIFACTS / "ui.png"), full_page=True)
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
