"""Load: 50 concurrent clients, 100 /compare requests, against `python app.py` on 127.0.0.1 with the
shipped queue limits. Every request must be answered (no "Queue is full") and equal the serial answer
for its settings. Bounded: 100 requests, one deadline for the whole burst; it stops by itself."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from app import backend, ui
from tests.conftest import REPO, app_model, served_app

CLIENTS, PER_CLIENT, DEADLINE_S = 50, 2, 420
IMAGE = str(REPO / "assets" / "examples" / "texture_4obj_count.png")
QUESTION = "how many circles are there?"
# different settings per client: the answers and kept tokens must not mix between requests
VARIANTS = [{"method": "occam"}, {"method": "occam", "target_retention": 0.11}, {"method": "topk"},
            {"method": "fastv", "target_retention": 0.5}, {"method": "random", "target_retention": 0.05}]


def test_queue_limits_hold_a_crowd():
    limit, size = ui.queue_limits()
    assert size >= CLIENTS * PER_CLIENT and limit >= 1  # the shipped queue takes this whole burst


def test_fifty_concurrent_clients_all_answered(tmp_path):
    from gradio_client import Client, handle_file
    model = app_model()
    common = {"model": model, "repeats": 1, "max_new_tokens": 2}
    expected = []
    for v in VARIANTS:
        comp = backend.run_compare(IMAGE, QUESTION, {**common, **v})
        expected.append((comp.pruned.text, comp.pruned.trace.kept))
    results: dict[tuple[int, int], object] = {}
    lock = threading.Lock()
    with served_app(Path(tmp_path) / "server.log") as (url, _):
        deadline = time.time() + DEADLINE_S

        def client(i: int) -> None:
            try:
                c = Client(url, verbose=False)
            except Exception as e:  # recorded as a failure of every request of this client
                with lock:
                    for k in range(PER_CLIENT):
                        results[(i, k)] = e
                return
            for k in range(PER_CLIENT):
                v = VARIANTS[(i + k) % len(VARIANTS)]
                try:
                    job = c.submit(handle_file(IMAGE), QUESTION, {**common, **v}, api_name="/compare")
                    out = job.result(timeout=max(1.0, deadline - time.time()))
                except Exception as e:
                    out = e
                with lock:
                    results[(i, k)] = out

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CLIENTS)]
        t0 = time.perf_counter()
        [t.start() for t in threads]
        for t in threads:
            t.join(timeout=max(0.0, deadline - time.time()))
        wall = time.perf_counter() - t0
    failures = {k: repr(v)[:200] for k, v in results.items() if isinstance(v, Exception)}
    assert len(results) == CLIENTS * PER_CLIENT, f"{CLIENTS * PER_CLIENT - len(results)} requests unanswered"
    assert not failures, f"{len(failures)} failed, e.g. {list(failures.values())[:3]}"
    for (i, k), res in results.items():
        answer, kept = expected[(i + k) % len(VARIANTS)]
        assert (res["pruned"]["answer"], res["pruned"]["trace"]["kept"]) == (answer, kept), (i, k)
    print(f"{len(results)} requests from {CLIENTS} clients answered in {wall:.1f} s")
