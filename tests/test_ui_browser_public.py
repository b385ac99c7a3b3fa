"""Public mode in a real browser and over the wire (`OCCAM_APP_PUBLIC=1 python app.py`, Chromium by
Playwright; see test_ui_browser.py): the page says it is a public demo, the model box offers the
allow-list and nothing else, a refused name gets the one message, one client cannot hold more than its
share of the queue, and the next normal request is answered as before."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image

from app import public
from tests.conftest import served_app
from tests.test_ui_browser import ARTIFACTS, browser, shot  # noqa: F401,F811  (the fixture, shared)

SHARE = 2


@pytest.fixture(scope="module")
def served():
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / ".gitignore").write_text("*\n")
    with served_app(ARTIFACTS / "server_public.log", OCCAM_APP_PUBLIC="1", OCCAM_APP_CLIENT_SHARE=str(SHARE),
                    OCCAM_APP_MODEL="toy") as (url, _):
        yield url


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("public") / "red.png"
    Image.new("RGB", (96, 64), (210, 30, 30)).save(path)
    return str(path)


def test_the_page_offers_only_the_allow_list(served, browser, monkeypatch):  # noqa: F811
    monkeypatch.setenv("OCCAM_APP_PUBLIC", "1")
    monkeypatch.setenv("OCCAM_APP_MODEL", "toy")
    monkeypatch.delenv("OCCAM_APP_MODELS", raising=False)
    allowed = list(public.allowed_models())
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.set_default_timeout(60_000)
    page.goto(served)
    page.wait_for_selector("#public-note")
    assert "Public demo" in page.inner_text("#public-note")
    page.click("#knob-model input")
    page.wait_for_selector("ul[role=listbox] li")
    options = [o.replace("✓", "").strip() for o in page.locator("ul[role=listbox] li").all_inner_texts()]
    assert options == allowed, options
    shot(page, "public_models")
    # a name typed into the box does not stick: the box takes list entries only
    page.fill("#knob-model input", "qwen2.5-vl-7b")
    page.keyboard.press("Enter")
    page.click("#title")
    time.sleep(0.5)
    assert page.input_value("#knob-model input") in allowed
    page.close()


def test_a_refused_name_gets_the_one_message_and_the_next_request_answers(served, image_file):
    from gradio_client import Client, handle_file
    client = Client(served, verbose=False)
    before = client.predict(handle_file(image_file), "What colour is it?", {"repeats": 1}, "", api_name="/compare")
    messages = set()
    for name in ["qwen2.5-vl-7b", "/etc", "/no/such/folder", "Qwen/Qwen2.5-VL-7B-Instruct"]:
        t0 = time.perf_counter()
        with pytest.raises(Exception) as err:
            client.predict(handle_file(image_file), "What colour is it?", {"model": name}, "", api_name="/compare")
        assert time.perf_counter() - t0 < 5.0        # refused before any load (measured: see the note)
        messages.add(str(err.value))
    assert len(messages) == 1 and "serves only the models in its list" in messages.pop()
    after = client.predict(handle_file(image_file), "What colour is it?", {"repeats": 1}, "", api_name="/compare")
    assert (after["full"]["answer"], after["pruned"]["answer"]) == (before["full"]["answer"], before["pruned"]["answer"])


def test_one_client_cannot_hold_more_than_its_share_of_the_queue(served, image_file):
    """12 sweeps at once from one address: only SHARE are queued, the rest answered 429 at once."""
    from gradio_client import Client, handle_file
    config = httpx.get(served + "config", timeout=30).json()
    fn = next(d["id"] for d in config["dependencies"] if d.get("api_name") == "sweep")
    # the sweep's inputs: image (a file the server holds: uploaded once), question, settings, param, values
    files = httpx.post(served + "gradio_api/upload", files={"files": open(image_file, "rb")}, timeout=30).json()
    data = [{"path": files[0], "meta": {"_type": "gradio.FileData"}}, "What colour is it?", {"repeats": 1},
            "alpha=beta", "0.25, 0.5, 1, 1.5, 2, 4, 8, 16"]

    def join(i):
        body = {"data": data, "fn_index": fn, "session_hash": f"attacker{i}", "event_data": None, "trigger_id": None}
        return httpx.post(served + "gradio_api/queue/join", json=body, timeout=30)

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(join, range(12)))
    codes = [a.status_code for a in answers]
    assert codes.count(200) <= SHARE + 1 and codes.count(429) >= 12 - SHARE - 1, codes
    refused = next(a for a in answers if a.status_code == 429)
    assert "requests waiting or running on this demo" in refused.json()["detail"]
    # once they are done, the same client is served again
    deadline = time.time() + 120
    while True:
        r = Client(served, verbose=False)
        try:
            out = r.predict(handle_file(image_file), "What colour is it?", {"repeats": 1}, "", api_name="/compare")
            break
        except Exception:
            if time.time() > deadline:
                raise
            time.sleep(1)
    assert out["full"]["answer"]
