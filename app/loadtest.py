"""``python -m app.loadtest``: many concurrent visitors against ``python app.py``, on 127.0.0.1 only.

C clients (gradio_client, one thread each, connected before the clock starts) send R /compare requests
each, one after another, with mixed settings (methods, retentions, thresholds modes, repeats, two
images). Before the burst, every distinct request is sent once ALONE to the same server: its serial
answer. Every answer of the burst must equal its serial answer (full and pruned answers, the pruned
run's token ids and kept-token mask). Reported: throughput (answered requests / wall time of the
burst), p50 / p95 latency per request, the batch sizes the timed runs saw, and failures.

``--old PATH`` serves another checkout (e.g. the version before batching, in a git worktree) the same
way, and the bursts alternate between the two servers (``--rounds`` each; both servers stay up, only
one is loaded at a time), so both are measured side by side on the same machine in the same minutes.
Each server runs with its own shipped defaults (queue, concurrency, batching). A benchmark, not a test:
its figures go to docs/load.md. Bounded: C x R requests per burst, one deadline per burst.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from pathlib import Path

from .sizing import REPO, Server

EXAMPLES = REPO / "assets" / "examples"
INPUTS = [("texture_4obj_count.png", "how many circles are there?"),
          ("gradient_3obj_shape.png", "what shape is the green object?")]
# mixed settings: every method, several retentions, both threshold modes that need no typing, other repeats
VARIANTS = [{}, {"target_retention": 0.1}, {"method": "topk"}, {"method": "fastv", "target_retention": 0.5},
            {"method": "random", "target_retention": 0.05}, {"method": "visionzip", "target_retention": 0.3},
            {"thresholds": "this input", "target_retention": 0.2},
            {"method": "topk", "target_retention": 0.5, "repeats": 1, "max_new_tokens": 8}]


def requests_for(clients: int, per_client: int) -> dict[tuple[int, int], tuple[int, int]]:
    """(client, k) -> (input index, variant index): every client cycles through different settings."""
    out = {}
    for i in range(clients):
        for k in range(per_client):
            j = i * per_client + k
            out[(i, k)] = (j % len(INPUTS), (j // len(INPUTS) + i) % len(VARIANTS))
    return out


def signature(d: dict) -> tuple:
    """What must not change between a request alone and the same request under load."""
    return (d["full"]["answer"], d["pruned"]["answer"], tuple(d["pruned"]["token_ids"]),
            tuple(d["pruned"]["trace"]["kept"]), d["full"]["trace"]["kept"].count(True))


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, max(0, round(q / 100 * (len(v) - 1))))]


def _predict(client, pair: tuple[int, int], model: str | None):
    from gradio_client import handle_file
    (image, question), settings = INPUTS[pair[0]], dict(VARIANTS[pair[1]])
    if model:
        settings["model"] = model
    return client.predict(handle_file(str(EXAMPLES / image)), question, settings, api_name="/compare")


def serial_answers(url: str, pairs: set, model: str | None) -> tuple[dict, list[float]]:
    """Every distinct request once, alone (after one untimed warm-up): its answer and latency."""
    from gradio_client import Client
    c = Client(url, verbose=False)
    _predict(c, (0, 0), model)
    out, lat = {}, []
    for pair in sorted(pairs):
        t = time.perf_counter()
        out[pair] = signature(_predict(c, pair, model))
        lat.append(time.perf_counter() - t)
    return out, lat


def cpu_s(pid: int | None) -> float | None:
    """User + system CPU seconds a process has used so far (/proc/<pid>/stat), or None."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def burst(url: str, clients: int, per_client: int, expected: dict, model: str | None, timeout: float,
          pid: int | None = None) -> dict:
    """``clients`` concurrent clients x ``per_client`` requests each; compared with ``expected``.
    ``pid``: the server's process, whose CPU time over the burst is reported per answered request."""
    from gradio_client import Client
    plan = requests_for(clients, per_client)
    results: dict = {}
    lat: list[float] = []
    batches: list[int] = []
    lock = threading.Lock()
    ready = threading.Barrier(clients + 1)
    deadline = [time.time() + timeout]

    def one(i: int) -> None:
        try:
            c = Client(url, verbose=False)
        except Exception as e:
            c = e
        try:
            ready.wait(timeout=timeout)
        except threading.BrokenBarrierError:
            return
        for k in range(per_client):
            pair = plan[(i, k)]
            t = time.perf_counter()
            try:
                if isinstance(c, Exception):
                    raise c
                d = _predict(c, pair, model)
                out = "ok" if signature(d) == expected[pair] else f"differs from its serial answer: {pair}"
                b = (d.get("timing") or {}).get("batch") or {}
            except Exception as e:
                out, b = f"{type(e).__name__}: {e}"[:200], {}
            with lock:
                results[(i, k)] = out
                if out == "ok":
                    lat.append(time.perf_counter() - t)
                batches.extend(b.get("full", []) + b.get("pruned", []))
            if time.time() > deadline[0]:
                return

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(clients)]
    [t.start() for t in threads]
    ready.wait(timeout=timeout)
    t0, c0 = time.perf_counter(), cpu_s(pid)
    deadline[0] = time.time() + timeout
    for t in threads:
        t.join(timeout=max(0.0, deadline[0] - time.time()))
    wall, c1 = time.perf_counter() - t0, cpu_s(pid)
    ok = sum(1 for v in results.values() if v == "ok")
    bad = [v for v in results.values() if v != "ok"]
    return {"requests": clients * per_client, "answered": len(results), "equal": ok, "failures": bad[:5],
            "n_failures": len(bad) + clients * per_client - len(results), "wall_s": wall,
            "rate": ok / wall if wall else None, "p50": pct(lat, 50), "p95": pct(lat, 95),
            "batch_mean": statistics.mean(batches) if batches else None, "batch_max": max(batches, default=None),
            "server_cpu_per_request": (c1 - c0) / ok if ok and c0 is not None and c1 is not None else None}


def describe(repo: Path) -> str:
    import subprocess
    try:
        rev = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:
        return str(repo)
    return f"{rev}{' + uncommitted changes' if dirty else ''} ({repo})"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m app.loadtest", description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--per-client", type=int, default=4)
    p.add_argument("--old", default=None, help="another checkout to serve side by side (e.g. a git worktree)")
    p.add_argument("--rounds", type=int, default=1, help="bursts per server, alternating")
    p.add_argument("--timeout", type=float, default=900, help="deadline of one burst, seconds")
    p.add_argument("--model", default=None, help="model id sent with every request (default: the app's)")
    p.add_argument("--json", default=None, help="write the raw figures here")
    args = p.parse_args(argv)
    if args.clients < 1 or args.per_client < 1 or args.rounds < 1:
        p.error("--clients, --per-client and --rounds must be >= 1")
    versions = [("this checkout", REPO)] + ([("old", Path(args.old).resolve())] if args.old else [])
    pairs = set(requests_for(args.clients, args.per_client).values())
    servers, report = {}, {"clients": args.clients, "per_client": args.per_client, "cores": os.cpu_count(),
                           "versions": {}}
    try:
        for name, repo in versions:
            servers[name] = Server(repo=repo)
        for name, repo in versions:
            exp, lat = serial_answers(servers[name].url, pairs, args.model)
            report["versions"][name] = {"commit": describe(repo), "serial_p50": statistics.median(lat),
                                        "serial_rate": len(lat) / sum(lat), "expected": exp, "bursts": []}
        for r in range(args.rounds):
            for name, _ in reversed(versions):       # the old one first in every round
                v = report["versions"][name]
                res = burst(servers[name].url, args.clients, args.per_client, v["expected"], args.model, args.timeout,
                            servers[name].proc.pid)
                v["bursts"].append(res)
                print(f"round {r + 1} {name}: {res['equal']}/{res['requests']} equal to serial, "
                      f"{res['rate']:.2f} req/s, p50 {res['p50'] or float('nan'):.2f} s, "
                      f"p95 {res['p95'] or float('nan'):.2f} s, server CPU {res['server_cpu_per_request'] or float('nan'):.3f} "
                      f"s/request, failures {res['n_failures']}", flush=True)
    finally:
        for s in servers.values():
            s.stop()
    lines = [f"{args.clients} clients x {args.per_client} /compare requests, {len(pairs)} distinct requests "
             f"({len(VARIANTS)} settings x {len(INPUTS)} images), {os.cpu_count()} CPU cores", "",
             "| version | round | equal to serial | req/s | p50 latency s | p95 latency s | timed runs' batch mean / max "
             "| server CPU s / request | serial req/s (one at a time) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, v in report["versions"].items():
        for r, b in enumerate(v["bursts"]):
            bm = "–" if b["batch_mean"] is None else f"{b['batch_mean']:.1f} / {b['batch_max']}"
            lines.append(f"| {name}: {v['commit']} | {r + 1} | {b['equal']}/{b['requests']} | {b['rate']:.2f} | "
                         f"{b['p50'] or float('nan'):.2f} | {b['p95'] or float('nan'):.2f} | {bm} | "
                         f"{b['server_cpu_per_request'] or float('nan'):.3f} | {v['serial_rate']:.2f} |")
        v.pop("expected")
    if args.old:
        new = [b["rate"] for b in report["versions"]["this checkout"]["bursts"]]
        old = [b["rate"] for b in report["versions"]["old"]["bursts"]]
        ratios = [n / o for n, o in zip(new, old) if o]
        report["ratio"] = ratios
        cpu = lambda n: [b["server_cpu_per_request"] for b in report["versions"][n]["bursts"]]  # noqa: E731
        cpu_ratio = [o / n for n, o in zip(cpu("this checkout"), cpu("old")) if n and o]
        report["cpu_ratio"] = cpu_ratio
        lines += ["", "Throughput, this checkout / old, per round: " + ", ".join(f"{x:.2f}x" for x in ratios)
                  + "; server CPU per request, old / this checkout: " + ", ".join(f"{x:.2f}x" for x in cpu_ratio)]
    text = "\n".join(lines)
    print(text)
    report["table"] = text
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))
    return report


if __name__ == "__main__":
    main()
