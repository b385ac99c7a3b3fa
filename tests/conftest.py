"""Test-wide settings and the helpers two app test files share.

The models under test are tiny, where torch's thread pool costs more than it gives. ``served_app``
starts ``python app.py`` on 127.0.0.1 (a free port) for the browser and load tests and stops it.
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]


def app_model() -> str:
    """The model the app tests serve: $OCCAM_APP_MODEL, else the toy model when shipped, else a tiny LLaVA."""
    from occam.loading import toy_path
    return os.environ.get("OCCAM_APP_MODEL") or ("toy" if (toy_path() / "config.json").is_file() else "tiny-llava")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served_app(log_path: Path, timeout: float = 180.0, **env_extra):
    """``python app.py`` on 127.0.0.1:<free port> (examples not cached); yields (url, process)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = dict(os.environ, GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port), OCCAM_APP_MODEL=app_model(),
               GRADIO_ANALYTICS_ENABLED="False", OCCAM_APP_CACHE_EXAMPLES="0")
    env.update(env_extra)
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                pytest.fail(f"`python app.py` exited with {proc.returncode}: {log_path.read_text()}")
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if time.time() > deadline:
                    pytest.fail(f"`python app.py` did not answer within {timeout:.0f} s; see {log_path}")
                time.sleep(0.5)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU; skipped (and reported as skipped) without one")
