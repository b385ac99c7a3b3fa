"""The app's Video tab end to end in a real browser (Playwright + Debian's Chromium, as test_ui_browser.py):
a corrupt clip shows its message, then a good clip gives both answers, the frame strip and the plot."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from .conftest import served_app
from .test_ui_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS
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
    with served_app(ARTIFACTS / "server_video.log") as (url, _):
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


def _tmp(clip_path):
    folder = Path(clip_path).parent / "bad"
    folder.mkdir(exist_ok=True)
    return folder
