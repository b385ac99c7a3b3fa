"""Public mode (app/public.py): the allow-list, the model cache's keys and locks, the work budget, one
client's share of the queue, ZeroGPU's decorated path and the requirements a ZeroGPU Space accepts."""
from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from app import backend, public

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def public_on(monkeypatch):
    for k in ("OCCAM_APP_MODELS", "OCCAM_APP_WORK_BUDGET", "OCCAM_APP_CLIENT_SHARE", "SPACE_ID", "SPACES_ZERO_GPU"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("OCCAM_APP_PUBLIC", "1")
    monkeypatch.setenv("OCCAM_APP_MODEL", "toy")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class CountingLoader:
    """A stand-in for occam.load: counts loads, optionally slow."""

    def __init__(self, delay: float = 0.0):
        self.calls, self.delay, self.lock = [], delay, threading.Lock()

    def __call__(self, name, device=None, **kw):
        with self.lock:
            self.calls.append(name)
        time.sleep(self.delay)
        return f"vlm:{name}"


def test_public_mode_switch(monkeypatch):
    for k in ("SPACE_ID", "OCCAM_APP_PUBLIC"):
        monkeypatch.delenv(k, raising=False)
    assert not public.public_mode()                      # a local `python app.py`
    monkeypatch.setenv("SPACE_ID", "someone/occam")
    assert public.public_mode()                          # on a Space
    monkeypatch.setenv("OCCAM_APP_PUBLIC", "0")
    assert not public.public_mode()                      # turned off explicitly
    monkeypatch.delenv("SPACE_ID")
    monkeypatch.setenv("OCCAM_APP_PUBLIC", "1")
    assert public.public_mode()


def test_allow_list_default_and_from_the_environment(public_on, monkeypatch):
    from occam.archs import REAL_ARCH_NAMES, TINY_ARCH_NAMES
    assert public.allowed_models() == ("toy", *TINY_ARCH_NAMES)
    assert backend.model_choices() == list(public.allowed_models())
    assert not set(REAL_ARCH_NAMES) & set(backend.model_choices())     # no real-shape random architectures
    monkeypatch.setenv("OCCAM_APP_MODEL", "llava-hf/llava-1.5-7b-hf")
    monkeypatch.setenv("OCCAM_APP_MODELS", "toy, tiny-llava")
    assert public.allowed_models() == ("llava-hf/llava-1.5-7b-hf", "toy", "tiny-llava")   # the served one first
    assert "Public demo" in public.page_note() and "tiny-llava" in public.page_note()


def test_every_refused_name_gets_one_message_before_any_load(public_on, tmp_path):
    """Real-shape random architectures, hub ids, folders that exist, files, paths that do not exist: one
    message (it maps nothing of the server), no load started, well under a second."""
    a_file = tmp_path / "weights.bin"
    a_file.write_bytes(b"x")
    loader = CountingLoader()
    cache = backend.ModelCache(loader=loader, warmup=False)
    names = ["qwen2.5-vl-7b", "llava-1.5-7b", "Qwen/Qwen2.5-VL-7B-Instruct", str(tmp_path), str(a_file),
             "/no/such/folder", "../../etc", " toy2 "]
    messages = set()
    rss = peak_rss_mb()
    for name in names:
        t0 = time.perf_counter()
        with pytest.raises(backend.ModelLoadError) as err:
            cache.get(name)
        assert time.perf_counter() - t0 < 1.0
        messages.add(str(err.value))
    assert len(messages) == 1, messages
    assert "serves only the models in its list" in messages.pop()
    assert loader.calls == [] and peak_rss_mb() - rss < 50
    assert cache.get(" toy ") == "vlm:toy"            # an allowed name (stripped) loads
    # and a refused name through a whole request: the same message, as a gr.Error of the handler
    from app import ui
    import gradio as gr
    with pytest.raises(gr.Error, match="serves only the models in its list"):
        ui.api_compare(Image.new("RGB", (32, 32)), "What is it?", {"model": "qwen2.5-vl-7b"})


def test_the_served_model_is_never_evicted_in_public_mode(public_on):
    cache = backend.ModelCache(loader=CountingLoader(), max_models=2, warmup=False)
    for name in ["toy", "tiny-llava", "tiny-qwen2.5-vl", "tiny-qwen3-vl", "tiny-llava-next"]:
        cache.get(name)
    assert "toy" in cache.loaded() and len(cache.loaded()) == 2


def test_cache_keys_are_normalised_and_one_id_loads_once(tmp_path, monkeypatch):
    monkeypatch.delenv("OCCAM_APP_PUBLIC", raising=False)
    monkeypatch.delenv("SPACE_ID", raising=False)
    folder = tmp_path / "model"
    folder.mkdir()
    loader = CountingLoader(delay=0.3)
    cache = backend.ModelCache(loader=loader, warmup=False)
    spellings = [str(folder), f"{folder}/", f"{tmp_path}/./model", f"  {folder}  ", f"{tmp_path}/../{tmp_path.name}/model"]
    threads = [threading.Thread(target=cache.get, args=(s,)) for s in spellings * 3]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert loader.calls == [os.path.realpath(folder)], loader.calls      # one load for 15 requests, 5 spellings
    assert cache.loaded() == [os.path.realpath(folder)]


def test_work_budget_refuses_before_any_run_and_the_next_request_answers_the_same(public_on):
    """The attack: one /compare asking for 22 generations of 256 tokens with a long question (45 s on
    tiny-llava). Refused before any generation; the default request still answers, as it did."""
    cache = backend.ModelCache(warmup=False)
    img = Image.new("RGB", (64, 48), (200, 40, 40))
    before = backend.run_compare(img, "What colour is it?", {"model": "tiny-llava", "repeats": 1}, cache=cache)
    vlm = cache.get("tiny-llava")
    calls = []
    real = type(vlm).generate_batch
    type(vlm).generate_batch = lambda self, *a, **k: calls.append(1) or real(self, *a, **k)
    try:
        heavy = {"model": "tiny-llava", "repeats": 10, "max_new_tokens": 256}
        t0 = time.perf_counter()
        with pytest.raises(ValueError, match=r"too much work for this demo: 22 generations x 256 new tokens.*M token-steps; "
                                             r"the limit is 2\.00 M\. Lower repeats"):
            backend.run_compare(img, "Describe every detail " * 90, heavy, cache=cache)
        assert time.perf_counter() - t0 < 1.0
        assert calls == []                                  # nothing ran
        with pytest.raises(ValueError, match="too much work"):
            backend.run_sweep(img, "Describe every detail " * 90, {"model": "tiny-llava", "max_new_tokens": 256,
                                                   "thresholds": "this input"}, "target retention",
                              "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1", cache=cache)
        assert calls == []
    finally:
        type(vlm).generate_batch = real
    after = backend.run_compare(img, "What colour is it?", {"model": "tiny-llava", "repeats": 1}, cache=cache)
    assert (after.full.token_ids, after.pruned.token_ids) == (before.full.token_ids, before.pruned.token_ids)


def test_no_work_budget_locally(monkeypatch):
    for k in ("OCCAM_APP_PUBLIC", "SPACE_ID", "OCCAM_APP_WORK_BUDGET"):
        monkeypatch.delenv(k, raising=False)
    assert public.work_budget() is None
    public.check_work(public.Work(22, 256, 0, 10_000))      # a local user may ask for anything
    monkeypatch.setenv("OCCAM_APP_WORK_BUDGET", "1e5")
    with pytest.raises(ValueError, match="the limit is 0.10 M"):
        public.check_work(public.Work(22, 256, 0, 100))


def test_planned_work_counts_every_run():
    s = backend.parse_settings({"repeats": 3, "max_new_tokens": 24})
    assert backend.plan_work("compare", s) == public.Work(8, 24, 0)
    cal = backend.parse_settings({"thresholds": "this input"})
    assert backend.plan_work("compare", cal).prefills == public.CALIBRATION_PREFILLS
    methods = backend.plan_work("methods", s)
    assert methods.generations == 1 + len(backend.COMPARED_METHODS) and methods.prefills == public.CALIBRATION_PREFILLS
    assert backend.plan_work("sweep", cal, 4, param="target retention").prefills == 4 * public.CALIBRATION_PREFILLS
    assert backend.plan_work("sweep", s, 4, param="alpha").generations == 5


def test_gpu_durations_grow_with_the_work_and_stay_in_zerogpu_bounds():
    small, big = public.Work(8, 24), public.Work(22, 256)
    assert public.GPU_S_MIN <= public.gpu_seconds(small) < public.gpu_seconds(big) <= public.GPU_S_MAX
    assert public.gpu_seconds(public.Work(1, 1)) == public.GPU_S_MIN


def test_handlers_plan_their_work_from_their_own_arguments():
    from app import ui
    knobs = dict(ui.default_values())
    knobs.update(repeats=5, max_new_tokens=40)
    values = [knobs[k] for k in ui.KNOBS]
    assert ui._ui_work("compare")(None, "q", "", *values) == public.Work(12, 40, 0)
    assert ui._ui_work("sweep")(None, "q", "alpha", "0.5, 1, 2", *values).generations == 4
    assert ui._api_work("compare")(None, "q", {"repeats": 2}) == public.Work(6, 24, 0)
    assert ui._api_work("sweep")(None, "q", {}, "alpha=beta", "1,2").generations == 3


def test_zerogpu_decorated_path_with_a_stand_in_spaces_module(tmp_path):
    """A `spaces` module like Hugging Face's: GPU(duration=callable) wraps the handler and calls the
    duration with the handler's own arguments. Run in a fresh interpreter (the app imports it once)."""
    (tmp_path / "spaces.py").write_text(textwrap.dedent("""
        DURATIONS = []
        def GPU(duration=60):
            def wrap(fn):
                def run(*args, **kwargs):
                    DURATIONS.append(duration(*args, **kwargs) if callable(duration) else duration)
                    return fn(*args, **kwargs)
                run.__wrapped__ = fn
                return run
            return wrap
    """))
    script = textwrap.dedent("""
        import spaces
        from PIL import Image
        from app import backend, ui
        img = Image.new("RGB", (48, 48), (20, 200, 20))
        small = ui.api_compare(img, "What colour?", {"repeats": 1, "max_new_tokens": 4})
        big = ui.api_compare(img, "What colour?", {"repeats": 4, "max_new_tokens": 64})
        print("DURATIONS", spaces.DURATIONS, backend.load_options())
    """)
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{REPO}", OCCAM_APP_MODEL="toy", SPACES_ZERO_GPU="true")
    env.pop("OCCAM_APP_PUBLIC", None)
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    line = re.search(r"DURATIONS \[(\d+), (\d+)\] (.*)", out.stdout)
    assert line, out.stdout
    small, big = int(line[1]), int(line[2])
    assert public.GPU_S_MIN <= small < big <= public.GPU_S_MAX
    assert line[3] == "{'prefill': 'eager', 'decode': 'eager'}"     # no CUDA graphs under ZeroGPU


def test_queue_share_middleware_refuses_a_client_over_its_share(monkeypatch):
    """One client holding its share (waiting or running events) gets 429 with a message; others pass."""
    import asyncio

    monkeypatch.setenv("OCCAM_APP_PUBLIC", "1")

    class Req:
        def __init__(self, host):
            self.headers, self.client = {}, type("C", (), {"host": host})()

    class Ev:
        def __init__(self, host):
            self.request = Req(host)

    queue = type("Q", (), {})()
    queue.event_queue_per_concurrency_id = {"model": type("EQ", (), {"queue": [Ev("1.1.1.1"), Ev("2.2.2.2")]})()}
    queue.active_jobs = [[Ev("1.1.1.1")], None]
    blocks = type("B", (), {"_queue": queue})()
    passed = []

    async def inner(scope, receive, send):
        passed.append(scope["client"][0])

    mw = public.FairShare(inner, blocks, share=2)

    def call(host):
        sent = []

        async def send(msg):
            sent.append(msg)
        scope = {"type": "http", "method": "POST", "path": "/gradio_api/queue/join", "headers": [],
                 "client": (host, 1234), "query_string": b""}
        asyncio.run(mw(scope, None, send))
        return sent

    refused = call("1.1.1.1")
    assert refused[0]["status"] == 429 and b"requests waiting or running" in refused[1]["body"]
    assert call("2.2.2.2") == [] and passed == ["2.2.2.2"]
    monkeypatch.setenv("OCCAM_APP_PUBLIC", "0")
    assert call("1.1.1.1") == [] and passed[-1] == "1.1.1.1"          # locally: no share


def test_the_client_address_on_a_space_is_the_proxy_s(monkeypatch):
    client = type("C", (), {"host": "10.0.0.1"})()
    monkeypatch.delenv("SPACE_ID", raising=False)
    assert public.client_of({"x-forwarded-for": "6.6.6.6"}, client) == "10.0.0.1"
    monkeypatch.setenv("SPACE_ID", "a/b")
    assert public.client_of({"x-forwarded-for": "6.6.6.6, 5.5.5.5"}, client) == "5.5.5.5"   # the forged first hop ignored


def test_gradio_queue_internals_the_share_reads():
    """queued_by reads gradio.queueing.Queue.event_queue_per_concurrency_id / active_jobs and Event.request."""
    import inspect

    from gradio import queueing
    src = inspect.getsource(queueing.Queue.__init__)
    assert "self.event_queue_per_concurrency_id" in src and "self.active_jobs" in src
    assert "request" in inspect.signature(queueing.Event.__init__).parameters


def test_requirements_accept_zerogpu_torch_and_the_cpu_wheel_here():
    from packaging.requirements import Requirement
    tomllib = pytest.importorskip("tomllib")
    lines = [ln.split("#")[0].strip() for ln in (REPO / "requirements.txt").read_text().splitlines()]
    reqs = [Requirement(ln) for ln in lines if ln]
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for torch_req in [r for r in reqs if r.name == "torch"] + [Requirement(d) for d in project if d.startswith("torch")]:
        assert torch_req.specifier.contains("2.11.0"), torch_req      # ZeroGPU's newest listed PyTorch
        assert torch_req.specifier.contains("2.13.0"), torch_req      # the CPU wheel of the README's command


@pytest.mark.parametrize("field, value, accepted", [("stage1", "false", "True or False"), ("stage2", 1, "True or False"),
                                                    ("seed", "abc", "an integer"), ("seed", True, "an integer")])
def test_config_refuses_non_bool_stages_and_non_int_seeds(field, value, accepted):
    """Before: stage1="false" ran Stage I (a truthy string) and seed="abc" failed mid-run."""
    import occam
    with pytest.raises(ValueError, match=re.escape(f"OccamConfig.{field}={value!r} is invalid: accepted {accepted}.")):
        occam.OccamConfig(**{field: value})
    assert occam.OccamConfig.from_strings({"stage1": "false", "seed": "3"}).stage1 is False
    assert occam.OccamConfig.from_strings({"seed": "3"}).seed == 3
