"""``python -m app.sizing``: measure what the queue limits are sized from (docs/load.md), on 127.0.0.1 only.

Starts ``python app.py`` on a free local port (the default model), then with gradio_client:

1. time per /compare request, serial (median and range of n);
2. throughput with 1, 2 and 4 runs in parallel (a fresh server per setting, ``$OCCAM_APP_CONCURRENCY``):
   N requests from N concurrent clients, wall time -> requests per second;
3. memory per WAITING request: with one run at a time and a slow first request, M clients submit at
   once; the server's resident memory (``/proc/<pid>/status`` VmRSS) is sampled while they wait;
   (peak - before) / M;
4. memory per RUNNING request: the same, peak RSS while runs are in flight vs idle.

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


def burst(url: str, image: str, n: int, settings: dict, timeout: float, sampler=None) -> dict:
    """n clients at once, one /compare request each; wall time, per-request latency, failures."""
    from gradio_client import Client, handle_file
    lat, errors = [], []
    lock = threading.Lock()
    start = threading.Barrier(n + 1)

    def one():
        try:
            c = Client(url, verbose=False)
            start.wait(timeout=timeout)
            t = time.perf_counter()
            c.predict(handle_file(image), "how many circles are there?", settings, api_name="/compare")
            with lock:
                lat.append(time.perf_counter() - t)
        except Exception as e:  # counted, reported
            with lock:
                errors.append(f"{type(e).__name__}: {e}"[:200])

    threads = [threading.Thread(target=one, daemon=True) for _ in range(n)]
    [t.start() for t in threads]
    start.wait(timeout=timeout)
    t0 = time.perf_counter()
    deadline = time.time() + timeout
    peak = []
    while any(t.is_alive() for t in threads) and time.time() < deadline:
        if sampler:
            peak.append(sampler())
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    return {"n": n, "ok": len(lat), "errors": errors, "wall_s": wall, "latency": lat,
            "rate": len(lat) / wall if wall else None, "peak_rss": max(peak) if peak else None}


def main(argv=None) -> str:
    p = argparse.ArgumentParser(prog="python -m app.sizing", description=__doc__.split("\n\n")[0])
    p.add_argument("--image", default=str(REPO / "assets" / "examples" / "texture_4obj_count.png"))
    p.add_argument("--serial", type=int, default=10)
    p.add_argument("--burst", type=int, default=24, help="requests per throughput burst")
    p.add_argument("--waiting", type=int, default=100, help="clients queued at once for the memory probe")
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    from gradio_client import Client, handle_file
    settings = {}  # the app's defaults (3 timed repeats after a warm-up, 25% target)
    lines = [f"Model `{os.environ.get('OCCAM_APP_MODEL') or 'toy'}`, {os.cpu_count()} CPU cores, image "
             f"`{Path(args.image).name}`, /compare with the default settings.", ""]
    # 1. serial time per request
    with Server(concurrency=1, queue=1000) as srv:
        c = Client(srv.url, verbose=False)
        c.predict(handle_file(args.image), "how many circles are there?", settings, api_name="/compare")  # warm
        times = []
        for _ in range(args.serial):
            t = time.perf_counter()
            c.predict(handle_file(args.image), "how many circles are there?", settings, api_name="/compare")
            times.append(time.perf_counter() - t)
        idle = rss_mib(srv.proc.pid)
        # 3. memory per waiting request: one run at a time, M clients at once
        before = rss_mib(srv.proc.pid)
        r = burst(srv.url, args.image, args.waiting, settings, args.timeout, lambda: rss_mib(srv.proc.pid))
        per_wait = (r["peak_rss"] - before) / args.waiting if r["peak_rss"] else float("nan")
    med = statistics.median(times)
    lines += [f"1. Serial time per request: median {med:.3f} s (min {min(times):.3f}, max {max(times):.3f}, "
              f"n={len(times)}); server RSS idle {idle:.0f} MiB.",
              f"2. Memory while {args.waiting} requests wait (1 run at a time): peak RSS {r['peak_rss']:.0f} MiB vs "
              f"{before:.0f} MiB before: {1024 * per_wait:.0f} KiB per waiting request "
              f"(answered {r['ok']}/{args.waiting} in {r['wall_s']:.1f} s).", ""]
    # 2. throughput by concurrency
    rows = ["| runs in parallel | requests | answered | wall s | requests / s | median latency s | peak RSS MiB |",
            "|---:|---:|---:|---:|---:|---:|---:|"]
    rates = {}
    for conc in (1, 2, 4):
        with Server(concurrency=conc, queue=1000) as srv:
            Client(srv.url, verbose=False).predict(handle_file(args.image), "warm up", settings, api_name="/compare")
            r = burst(srv.url, args.image, args.burst, settings, args.timeout, lambda: rss_mib(srv.proc.pid))
        rates[conc] = r["rate"]
        rows.append(f"| {conc} | {r['n']} | {r['ok']} | {r['wall_s']:.1f} | {r['rate']:.2f} | "
                    f"{statistics.median(r['latency']):.2f} | {r['peak_rss']:.0f} |")
    best = max(rates, key=lambda k: rates[k])
    lines += rows + [""]
    wait_budget_s = 300
    time_bound = int(wait_budget_s * rates[best])
    mem_bound = int(512 / per_wait) if per_wait > 0 else None
    lines += [f"Highest throughput at {best} runs in parallel ({rates[best]:.2f} requests/s). A queue of Q waits "
              f"about Q / {rates[best]:.2f} s at its end: {wait_budget_s} s (5 min) allows Q = {time_bound}; "
              f"512 MiB of waiting requests allows Q = {mem_bound if mem_bound else 'unbounded (no measurable growth)'}."]
    report = "\n".join(lines)
    print(report)
    if args.out:
        Path(args.out).write_text(report + "\n")
    return report


if __name__ == "__main__":
    main()
