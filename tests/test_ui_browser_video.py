"""The app's Video tab end to end in a real browser (Playwright + Debian's Chromium, as test_ui_browser.py):
a corrupt clip shows its message, then a good clip gives both answers, the frame strip and the plot."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from .test_ui_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, REPO, free_port
from .test_video import _truncated, busy_frames, write_clip

QUESTION = "what moves in the video"


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("clips") / "busy.avi", busy_frames(10), 5.0, "MJPG")


def test_video_tab_in_a_browser(clip_path):
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"Chromium not found at {CHROMIUM}: `apt-get install -y chromium`.")
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = dict(os.environ, GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port), OCCAM_APP_MODEL="tiny-llava",
               GRADIO_ANALYTICS_ENABLED="False", OCCAM_APP_CACHE_EXAMPLES="0")
    log = open(ARTIFACTS / "server_video.log", "w")
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 180
        while True:
            assert proc.poll() is None, (ARTIFACTS / "server_video.log").read_text()
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                assert time.time() < deadline, "the app did not answer within 180 s"
                time.sleep(0.5)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1400})
            page.set_default_timeout(60_000)
            page.goto(url)
            page.get_by_role("tab", name="Video").click()
            page.wait_for_selector("#video-input input[type=file]", state="attached")
            # a corrupt clip first: the message shows, the tab keeps working
            page.set_input_files("#video-input input[type=file]", _truncated(_tmp(clip_path)))
            page.fill("#video-question textarea", QUESTION)
            page.click("#video-run")
            page.wait_for_selector("text=truncated or corrupt", timeout=120_000)
            page.locator("#video-input button[aria-label='Clear'], #video-input button[title='Clear']").first.click()
            page.wait_for_selector("#video-input input[type=file]", state="attached")
            page.set_input_files("#video-input input[type=file]", clip_path)
            page.click("#video-run")
            page.wait_for_function("document.querySelector('#video-summary').innerText.includes('Stage I')",
                                   timeout=240_000)
            assert "video_llava" in page.inner_text("#video-summary")
            assert page.input_value("#video-full textarea") and page.locator("#video-strip img").count() >= 1
            page.wait_for_selector("#video-plot .js-plotly-plot")
            assert page.locator("#video-plot .scatterlayer .trace").count() == 3
            page.screenshot(path=str(ARTIFACTS / "ui_video.png"), full_page=True)
            browser.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _tmp(clip_path):
    folder = Path(clip_path).parent / "bad"
    folder.mkdir(exist_ok=True)
    return folder
