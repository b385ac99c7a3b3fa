"""The app's batcher (app/batcher.py): concurrent runs answered together, each exactly as alone.

Batched results equal serial ones for mixed settings (in the backend and through the real Gradio app);
a request that fails inside a batch fails alone with its own message while the others are answered;
the window and the batch-size limit are respected; the queue is bounded. No test asserts a speed.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

import occam
from app import backend, batcher
from tests.conftest import REPO, app_model, served_app

IMAGE = str(REPO / "assets" / "examples" / "texture_4obj_count.png")
IMAGE2 = str(REPO / "assets" / "examples" / "gradient_3obj_shape.png")
QUESTION = "how many circles are there?"
MIXED = [{"method": "occam"}, {"method": "occam", "target_retention": 0.11}, {"method": "topk"},
         {"method": "fastv", "target_retention": 0.5}, {"method": "random", "target_retention": 0.05},
         {"method": "visionzip", "target_retention": 0.3}, {"thresholds": "this input", "target_retention": 0.2},
         {"method": "topk", "max_new_tokens": 5}]


def model():
    return backend.MODELS.get(app_model())


def sig(res) -> tuple:
    return res.text, tuple(res.token_ids), tuple(res.trace.kept), res.trace.counts["final"]


# ---------------------------------------------------------------------------------------------
# a scripted stand-in model: records every call, fails on request
# ---------------------------------------------------------------------------------------------
class Recorder:
    """generate / generate_batch echo their inputs; a question "bad" fails like a refused input."""

    family = "fake"

    def __init__(self, delay: float = 0.0):
        self.calls: list[tuple[str, list]] = []
        self.delay = delay
        self.lock = threading.Lock()

    def _answer(self, q, cfg, n):
        if q == "bad":
            raise ValueError("Question 'bad' is refused.")
        return ("answer", q, cfg, n)

    def generate(self, image, question, config=None, max_new_tokens=64):
        with self.lock:
            self.calls.append(("one", [question]))
        time.sleep(self.delay)
        return self._answer(question, config, max_new_tokens)

    def generate_batch(self, images, questions, configs=None, max_new_tokens=64):
        with self.lock:
            self.calls.append(("batch", list(questions)))
        time.sleep(self.delay)
        for i, q in enumerate(questions):
            if q == "bad":
                raise ValueError(f"Request {i}: Question 'bad' is refused.")
        return [self._answer(q, c, max_new_tokens) for q, c in zip(questions, configs)]


def submit_all(b: batcher.Batcher, vlm, questions, max_new_tokens=8, configs=None):
    futures = []
    for i, q in enumerate(questions):
        futures.append(b.submit(vlm, None, q, None if configs is None else configs[i], max_new_tokens))
    return futures


def test_runs_within_the_window_share_one_call_and_keep_their_own_config():
    rec = Recorder()
    b = batcher.Batcher(window_ms=300, max_batch=16)
    futures = submit_all(b, rec, [f"q{i}" for i in range(5)], configs=[f"cfg{i}" for i in range(5)])
    out = [f.result(timeout=10) for f in futures]
    assert out == [("answer", f"q{i}", f"cfg{i}", 8) for i in range(5)]
    assert rec.calls == [("batch", [f"q{i}" for i in range(5)])]
    assert b.stats()["batches"] == 1 and b.stats()["largest"] == 5


def test_max_batch_is_respected_and_order_kept():
    rec = Recorder(delay=0.05)
    b = batcher.Batcher(window_ms=200, max_batch=3)
    futures = submit_all(b, rec, [f"q{i}" for i in range(8)])
    assert [f.result(timeout=10)[1] for f in futures] == [f"q{i}" for i in range(8)]
    sizes = [len(qs) for _, qs in rec.calls]
    assert max(sizes) <= 3 and sum(sizes) == 8
    assert [q for _, qs in rec.calls for q in qs] == [f"q{i}" for i in range(8)]  # oldest first


def test_the_window_is_waited_for_and_bounds_the_wait():
    rec = Recorder()
    b = batcher.Batcher(window_ms=250, max_batch=8)
    t = time.monotonic()
    first = b.submit(rec, None, "early", None, 8)
    time.sleep(0.05)
    second = b.submit(rec, None, "late", None, 8)   # inside the first one's window: the same batch
    first.result(timeout=10), second.result(timeout=10)
    assert rec.calls == [("batch", ["early", "late"])]
    assert time.monotonic() - t >= 0.2               # nothing ran before the window closed
    rec.calls.clear()
    third = b.submit(rec, None, "alone", None, 8)    # nobody else: answered once its window is over
    assert third.result(timeout=10)[1] == "alone" and rec.calls == [("one", ["alone"])]


def test_a_lone_request_does_not_wait_for_the_window():
    rec = Recorder()
    b = batcher.Batcher(window_ms=5000, max_batch=8)

    @batcher.request
    def one_request():
        return b.generate(rec, None, "q", None, 8)

    t = time.monotonic()
    assert one_request()[1] == "q"
    assert time.monotonic() - t < 4.0  # every request in progress had a run waiting: no reason to wait
    assert b.stats()["pending"] == 0 and not b._active


def test_different_max_new_tokens_never_share_a_batch():
    rec = Recorder()
    b = batcher.Batcher(window_ms=200, max_batch=8)
    futures = [b.submit(rec, None, f"q{i}", None, 4 if i % 2 else 8) for i in range(6)]
    out = [f.result(timeout=10) for f in futures]
    assert [o[3] for o in out] == [8, 4, 8, 4, 8, 4]
    assert sorted(tuple(qs) for _, qs in rec.calls) == [("q0", "q2", "q4"), ("q1", "q3", "q5")]


def test_a_failing_request_fails_alone_with_its_own_message():
    rec = Recorder()
    b = batcher.Batcher(window_ms=200, max_batch=8)
    futures = submit_all(b, rec, ["q0", "bad", "q2"])
    assert futures[0].result(timeout=10)[1] == "q0" and futures[2].result(timeout=10)[1] == "q2"
    with pytest.raises(ValueError) as e:
        futures[1].result(timeout=10)
    assert str(e.value) == "Question 'bad' is refused."     # its own message, as alone (no batch index)
    assert rec.calls[0] == ("batch", ["q0", "bad", "q2"]) and b.stats()["retried_alone"] == 3


def test_the_queue_is_bounded():
    rec = Recorder(delay=1.0)
    b = batcher.Batcher(window_ms=100, max_batch=2, max_queue=2, wait_s=0.05)
    futures = submit_all(b, rec, ["a", "b"])              # a full batch: the worker runs them for 1 s...
    time.sleep(0.2)
    futures += submit_all(b, rec, ["c", "d"])             # ...these two wait...
    with pytest.raises(batcher.Busy, match="busy"):       # ...and the queue is full for this one
        b.submit(rec, None, "e", None, 8)
    assert [f.result(timeout=10)[1] for f in futures] == ["a", "b", "c", "d"]


def test_batching_off_calls_the_model_directly(monkeypatch):
    monkeypatch.setenv("OCCAM_APP_MAX_BATCH", "1")
    rec = Recorder()
    assert batcher.Batcher().enabled is False and not batcher.batching_on()
    assert batcher.batched(rec) is rec
    monkeypatch.setenv("OCCAM_APP_MAX_BATCH", "zero")
    with pytest.raises(ValueError, match="OCCAM_APP_MAX_BATCH"):
        batcher.Batcher()


# ---------------------------------------------------------------------------------------------
# the real model: batched equals serial
# ---------------------------------------------------------------------------------------------
def test_batched_runs_equal_serial_runs_on_the_real_model():
    vlm = model()
    cfgs = [occam.OccamConfig(method="none")] + [occam.OccamConfig(method=m, retention=r) for m, r in
                                                 (("topk", 0.25), ("fastv", 0.5), ("random", 0.1), ("visionzip", 0.3))]
    cfgs.append(occam.OccamConfig(alpha=0.5, beta=2.0))
    images = [IMAGE if i % 2 == 0 else IMAGE2 for i in range(len(cfgs))]
    images = [backend.load_inputs(p, QUESTION)[0] for p in images]
    serial = [vlm.generate(im, QUESTION, config=c, max_new_tokens=6) for im, c in zip(images, cfgs)]
    b = batcher.Batcher(window_ms=500, max_batch=32)
    futures = [b.submit(vlm, im, QUESTION, c, 6) for im, c in zip(images, cfgs)]
    got = [f.result(timeout=120) for f in futures]
    assert [sig(r) for r in got] == [sig(r) for r in serial]
    assert b.stats()["largest"] > 1 and {r.trace.sequence["batch_size"] for r in got} != {1}


def test_a_bad_config_in_a_real_batch_fails_alone():
    vlm = model()
    img, q = backend.load_inputs(IMAGE, QUESTION)
    bad = occam.OccamConfig(stage2_layer=99)
    with pytest.raises(ValueError) as alone:
        vlm.generate(img, q, config=bad, max_new_tokens=4)
    good = vlm.generate(img, q, config=occam.OccamConfig(method="topk"), max_new_tokens=4)
    b = batcher.Batcher(window_ms=500, max_batch=8)
    futures = [b.submit(vlm, img, q, c, 4) for c in (occam.OccamConfig(method="topk"), bad,
                                                     occam.OccamConfig(method="topk"))]
    assert sig(futures[0].result(timeout=120)) == sig(good) == sig(futures[2].result(timeout=120))
    with pytest.raises(ValueError) as inside:
        futures[1].result(timeout=120)
    assert str(inside.value) == str(alone.value)


def test_concurrent_backend_requests_equal_serial_ones():
    """Many threads through run_compare / run_methods / run_sweep at once (they share batches): every
    answer, kept mask and calibrated threshold equals the request alone; the timing says its batch."""
    common = {"model": app_model(), "repeats": 1, "max_new_tokens": 4}
    serial = [backend.run_compare(IMAGE, QUESTION, {**common, **v}) for v in MIXED]
    methods_alone = backend.run_methods(IMAGE2, QUESTION, common).data
    sweep_alone = backend.run_sweep(IMAGE, QUESTION, common, "alpha=beta", "0.5, 1, 2")
    assert all(c.timing["batch"]["alone"] for c in serial)  # nothing else ran: every timed run alone
    tasks = [("compare", j) for j in range(len(MIXED))] * 2 + [("methods", None), ("sweep", None)]
    out: dict = {}

    def work(n, kind, j):
        try:
            if kind == "methods":
                out[n] = backend.run_methods(IMAGE2, QUESTION, common).data
            elif kind == "sweep":
                out[n] = backend.run_sweep(IMAGE, QUESTION, common, "alpha=beta", "0.5, 1, 2")
            else:
                out[n] = backend.run_compare(IMAGE, QUESTION, {**common, **MIXED[j]})
        except Exception as e:  # reported below
            out[n] = e

    threads = [threading.Thread(target=work, args=(n, *t)) for n, t in enumerate(tasks)]
    [t.start() for t in threads]
    [t.join(timeout=300) for t in threads]
    assert len(out) == len(tasks) and not [v for v in out.values() if isinstance(v, Exception)], out
    rows = lambda d: [(r["method"], r["answer"], r["kept"], r["alpha"], r["beta"]) for r in d["rows"]]  # noqa: E731
    shared = 0
    for n, (kind, j) in enumerate(tasks):
        v = out[n]
        if kind == "methods":
            assert rows(v) == rows(methods_alone) and v["full"]["answer"] == methods_alone["full"]["answer"]
        elif kind == "sweep":
            assert v["rows"] == sweep_alone["rows"]
        else:
            e = serial[j]
            assert (sig(v.full), sig(v.pruned), v.config) == (sig(e.full), sig(e.pruned), e.config), MIXED[j]
            assert v.timing["batch"]["max"] >= 1
            shared += not v.timing["batch"]["alone"]
    print(f"{shared} of {2 * len(MIXED)} comparisons had timed runs inside a shared batch")


def test_the_page_says_whether_timed_runs_ran_alone():
    from app import render
    alone = render.batch_note({"full": [1, 1], "pruned": [1, 1], "alone": True, "max": 1})
    assert "ran alone" in alone
    shared = render.batch_note({"full": [4, 7], "pruned": [6, 6], "alone": False, "max": 7})
    assert "Timed inside batches" in shared and "full 4–7" in shared and "pruned 6" in shared
    comp = backend.run_compare(IMAGE, QUESTION, {"model": app_model(), "repeats": 2, "max_new_tokens": 2})
    assert comp.timing["batch"] == {"full": [1, 1], "pruned": [1, 1], "alone": True, "max": 1}
    assert "ran alone" in render.speedup_markdown(comp.speedup())


# ---------------------------------------------------------------------------------------------
# through the real Gradio app
# ---------------------------------------------------------------------------------------------
CLIENTS, PER_CLIENT, DEADLINE_S = 24, 2, 420


def test_concurrent_clients_through_the_app_get_their_serial_answers(tmp_path):
    from gradio_client import Client, handle_file
    common = {"model": app_model(), "repeats": 1, "max_new_tokens": 4}
    expected = {}
    for j, v in enumerate(MIXED):
        c = backend.run_compare(IMAGE, QUESTION, {**common, **v})
        expected[j] = (c.full.text, c.pruned.text, list(c.pruned.token_ids), c.pruned.trace.kept)
    results: dict = {}
    lock = threading.Lock()
    with served_app(Path(tmp_path) / "server.log") as (url, _):
        deadline = time.time() + DEADLINE_S
        ready = threading.Barrier(CLIENTS)

        def client(i: int) -> None:
            try:
                c = Client(url, verbose=False)
                ready.wait(timeout=120)
            except Exception as e:
                with lock:
                    results.update({(i, k): e for k in range(PER_CLIENT)})
                return
            for k in range(PER_CLIENT):
                j = (i + k) % len(MIXED)
                try:
                    job = c.submit(handle_file(IMAGE), QUESTION, {**common, **MIXED[j]}, api_name="/compare")
                    out = job.result(timeout=max(1.0, deadline - time.time()))
                except Exception as e:
                    out = e
                with lock:
                    results[(i, k)] = (j, out)

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CLIENTS)]
        [t.start() for t in threads]
        for t in threads:
            t.join(timeout=max(0.0, deadline - time.time()))
    failures = [v for v in results.values() if isinstance(v, Exception) or isinstance(v[1], Exception)]
    assert len(results) == CLIENTS * PER_CLIENT and not failures, failures[:3]
    shared = 0
    for j, d in results.values():
        p = d["pruned"]
        assert (d["full"]["answer"], p["answer"], p["token_ids"], p["trace"]["kept"]) == expected[j], MIXED[j]
        shared += not d["timing"]["batch"]["alone"]
    print(f"{shared} of {len(results)} requests had timed runs inside a shared batch")
