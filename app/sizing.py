"""``python -m app.sizing``: measure what the queue and batching limits are sized from (docs/load.md),
on 127.0.0.1 only.

Starts ``python app.py`` on a free local port (the default model), then with gradio_client:

1. time per /compare request, serial (median and range of n), with the shipped settings;
2. memory per WAITING request: with one request at a time, M clients submit at once; the server's
   resident memory (``/proc/<pid>/status`` VmRSS) is sampled while they wait; (peak - before) / M;
3. throughput with batching (a fresh server per setting): requests in progress at once
   ($OCCAM_APP_CONCURRENCY), the batch window ($OCCAM_APP_BATCH_WINDOW_MS) and the largest batch
   ($OCCAM_APP_MAX_BATCH; 1 = no batching, the app before batching): N requests with mixed settings
   (those of ``python -m app.loadtest``) from N concurrent clients, wall time -> requests per second,
   median / p95 latency, the batch sizes the timed runs saw, peak RSS.

Everything is bounded (request counts, a timeout per phase) and stops by itself. Prints a markdown
report (``--out`` writes it to a file).
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Server:
    """``python app.py`` on 127.0.0.1:<free port>, stopped on exit.

    ``concurrency`` / ``queue``: $OCCAM_APP_CONCURRENCY / $OCCAM_APP_QUEUE (None: the app's shipped
    defaults); ``env``: more environment (e.g. the batcher's settings); ``repo``: the checkout to serve
    (another version in a git worktree, for side-by-side runs)."""

    def __init__(self, concurrency: int | None = None, queue: int | None = None, timeout: float = 180.0,
                 env: dict | None = None, repo: Path | str = REPO):
        self.port = free_port()
        self.repo = Path(repo)
        env_ = {k: v for k, v in os.environ.items() if not k.startswith("OCCAM_APP_") and k != "PYTHONPATH"}
        env_.update(GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(self.port), OCCAM_APP_CACHE_EXAMPLES="0",
                    GRADIO_ANALYTICS_ENABLED="False", PYTHONPATH=str(self.repo))
        if os.environ.get("OCCAM_APP_MODEL"):
            env_["OCCAM_APP_MODEL"] = os.environ["OCCAM_APP_MODEL"]
        if concurrency is not None:
            env_["OCCAM_APP_CONCURRENCY"] = str(concurrency)
        if queue is not None:
            env_["OCCAM_APP_QUEUE"] = str(queue)
        env_.update({k: str(v) for k, v in (env or {}).items()})
        self.proc = subprocess.Popen([sys.executable, "app.py"], cwd=self.repo, env=env_, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{self.port}/"
        deadline = time.time() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"app.py exited with {self.proc.returncode}")
            try:
                urllib.request.urlopen(self.url, timeout=2)
                break
            except OSError:
                if time.time() > deadline:
                    self.stop()
                    raise RuntimeError("app.py did not start")
                time.sleep(0.3)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def burst(url: str, n: int, timeout: float, sampler=None, requests=None) -> dict:
    """n clients at once, one /compare request each (``requests``: a list of (image path, question,
    settings), cycled; default: the mixed requests of app.loadtest); wall time, latency, failures."""
    from gradio_client import Client, handle_file
    from .loadtest import EXAMPLES, INPUTS, VARIANTS, pct
    if requests is None:
        requests = [(str(EXAMPLES / INPUTS[j % len(INPUTS)][0]), INPUTS[j % len(INPUTS)][1],
                     VARIANTS[(j // len(INPUTS)) % len(VARIANTS)]) for j in range(len(INPUTS) * len(VARIANTS))]
    lat, errors, batches = [], [], []
    lock = threading.Lock()
    start = threading.Barrier(n + 1)

    def one(i: int):
        image, question, settings = requests[i % len(requests)]
        try:
            c = Client(url, verbose=False)
            start.wait(timeout=timeout)
            t = time.perf_counter()
            d = c.predict(handle_file(image), question, settings, api_name="/compare")
            b = (d.get("timing") or {}).get("batch") or {}
            with lock:
                lat.append(time.perf_counter() - t)
                batches.extend(b.get("full", []) + b.get("pruned", []))
        except Exception as e:  # counted, reported
            with lock:
                errors.append(f"{type(e).__name__}: {e}"[:200])

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
    [t.start() for t in threads]
    try:
        start.wait(timeout=timeout)
    except threading.BrokenBarrierError:
        pass
    t0 = time.perf_counter()
    deadline = time.time() + timeout
    peak = []
    while any(t.is_alive() for t in threads) and time.time() < deadline:
        if sampler:
            peak.append(sampler())
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    return {"n": n, "ok": len(lat), "errors": errors, "wall_s": wall, "latency": lat,
            "rate": len(lat) / wall if wall else None, "peak_rss": max(peak) if peak else None,
            "p50": pct(lat, 50), "p95": pct(lat, 95),
            "batch_mean": statistics.mean(batches) if batches else None, "batch_max": max(batches, default=None)}


# (requests in progress at once, window ms, max batch); max batch 1 = no batching (the app before batching)
SETTINGS = [(2, 0, 1), (8, 10, 32), (32, 0, 32), (32, 10, 32), (32, 30, 32), (32, 10, 8)]


def main(argv=None) -> str:
    p = argparse.ArgumentParser(prog="python -m app.sizing", description=__doc__.split("\n\n")[0])
    p.add_argument("--image", default=str(REPO / "assets" / "examples" / "texture_4obj_count.png"))
    p.add_argument("--serial", type=int, default=10)
    p.add_argument("--burst", type=int, default=64, help="requests (= concurrent clients) per throughput burst")
    p.add_argument("--waiting", type=int, default=100, help="clients queued at once for the memory probe")
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    from gradio_client import Client, handle_file
    from .batcher import DEFAULT_MAX_BATCH, DEFAULT_WINDOW_MS
    from .ui import DEFAULT_CONCURRENCY
    settings = {}  # the app's defaults (3 timed repeats after a warm-up, 25% target)
    question = "how many circles are there?"
    lines = [f"Model `{os.environ.get('OCCAM_APP_MODEL') or 'toy'}`, {os.cpu_count()} CPU cores. Serial and "
             f"memory: /compare on `{Path(args.image).name}` with the default settings; throughput: the mixed "
             "requests of `python -m app.loadtest` (8 settings x 2 images).", ""]
    # 1. serial time per request (shipped settings), 2. memory per waiting request (one request at a time)
    with Server(concurrency=1, queue=1000) as srv:
        c = Client(srv.url, verbose=False)
        c.predict(handle_file(args.image), question, settings, api_name="/compare")  # warm
        times = []
        for _ in range(args.serial):
            t = time.perf_counter()
            c.predict(handle_file(args.image), question, settings, api_name="/compare")
            times.append(time.perf_counter() - t)
        idle = before = rss_mib(srv.proc.pid)
        same = [(args.image, question, settings)]
        r = burst(srv.url, args.waiting, args.timeout, lambda: rss_mib(srv.proc.pid), same)
        per_wait = (r["peak_rss"] - before) / args.waiting if r["peak_rss"] else float("nan")
    med = statistics.median(times)
    lines += [f"1. Serial time per request: median {med:.3f} s (min {min(times):.3f}, max {max(times):.3f}, "
              f"n={len(times)}); server RSS idle {idle:.0f} MiB.",
              f"2. Memory while {args.waiting} requests wait (1 request at a time): peak RSS {r['peak_rss']:.0f} MiB "
              f"vs {before:.0f} MiB before: {1024 * per_wait:.0f} KiB per waiting request "
              f"(answered {r['ok']}/{args.waiting} in {r['wall_s']:.1f} s).", ""]
    # 3. throughput by (requests in progress, window, max batch)
    rows = ["| requests in progress | window ms | max batch | requests | answered | wall s | requests / s | "
            "p50 latency s | p95 latency s | timed runs' batch mean / max | peak RSS MiB |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    rates = {}
    for conc, window, max_batch in SETTINGS:
        env = {"OCCAM_APP_BATCH_WINDOW_MS": window, "OCCAM_APP_MAX_BATCH": max_batch}
        with Server(concurrency=conc, queue=1000, env=env) as srv:
            Client(srv.url, verbose=False).predict(handle_file(args.image), "warm up", settings, api_name="/compare")
            r = burst(srv.url, args.burst, args.timeout, lambda: rss_mib(srv.proc.pid))
        rates[(conc, window, max_batch)] = r["rate"]
        bm = "–" if r["batch_mean"] is None else f"{r['batch_mean']:.1f} / {r['batch_max']}"
        rows.append(f"| {conc} | {window if max_batch > 1 else '–'} | {max_batch} | {r['n']} | {r['ok']} | "
                    f"{r['wall_s']:.1f} | {r['rate']:.2f} | {r['p50'] or float('nan'):.2f} | "
                    f"{r['p95'] or float('nan'):.2f} | {bm} | {r['peak_rss']:.0f} |")
        print(rows[-1], flush=True)
    best = max(rates, key=lambda k: rates[k])
    shipped = (DEFAULT_CONCURRENCY, DEFAULT_WINDOW_MS, DEFAULT_MAX_BATCH)
    lines += rows + [""]
    wait_budget_s = 300
    rate = rates.get(shipped) or rates[best]
    time_bound = int(wait_budget_s * rate)
    mem_bound = int(512 / per_wait) if per_wait > 0 else None
    lines += [f"Highest throughput: {best[0]} requests in progress, window {best[1]} ms, max batch {best[2]} "
              f"({rates[best]:.2f} requests/s); unbatched (2 in parallel): {rates[SETTINGS[0]]:.2f} requests/s. "
              f"A queue of Q waits about Q / {rate:.2f} s at its end (shipped settings: {shipped[0]} in progress, "
              f"{shipped[1]:g} ms, max batch {shipped[2]}): {wait_budget_s} s (5 min) allows Q = {time_bound}; "
              f"512 MiB of waiting requests allows Q = {mem_bound if mem_bound else 'unbounded (no measurable growth)'}."]
    report = "\n".join(lines)
    print(report)
    if args.out:
        Path(args.out).write_text(report + "\n")
    return report


if __name__ == "__main__":
    main()
