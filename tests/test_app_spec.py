"""The method spec the page links to (docs/method.md): the link in the model status, and `python app.py`
serving exactly that file (and not its neighbours) at the link's address."""
from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import pytest

from app import spec, ui
from tests.conftest import REPO, served_app


def test_the_spec_is_the_repository_file():
    assert spec.METHOD_DOC == REPO / "docs" / "method.md" and spec.METHOD_DOC.is_file()
    assert spec.method_link(8) == f"[docs/method.md §8]({spec.METHOD_URL})"
    assert "## 8. Decisions taken after the first measurements" in spec.METHOD_DOC.read_text()


def test_model_status_links_the_spec_when_a_model_has_no_thresholds():
    class Cache:   # a loaded model without recommended thresholds
        current = "m"

        def loaded(self):
            return ["m"]

        def peek(self, name):
            return type("VLM", (), {"recommended": None})()

    text = ui.model_status(Cache())
    assert "No recommended thresholds" in text and spec.method_link(8) in text


def test_served_app_serves_the_spec_and_nothing_beside_it(tmp_path):
    with served_app(Path(tmp_path) / "server.log", OCCAM_APP_PRELOAD="0") as (url, _):
        with urllib.request.urlopen(url.rstrip("/") + spec.METHOD_URL, timeout=30) as r:
            assert r.status == 200 and r.read().decode() == spec.METHOD_DOC.read_text()
        beside = url.rstrip("/") + spec.METHOD_URL.replace("method.md", "architecture.md")
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(beside, timeout=30)
        assert e.value.code == 403
