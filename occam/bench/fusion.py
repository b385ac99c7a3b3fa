"""``python -m occam.bench fusion``: how much would fusing a decoder layer's small kernels save?

The first ``--layers`` decoder layers of a model (random weights) at each ``--lengths`` token count, run
through the adapter's own layer call (``adapter.layer``, no cache: the kernels of the prefill without the
keys / values copy-out), captured in a CUDA graph and replayed: eager kernels vs the same function compiled
by ``torch.compile`` (inductor). Prints per-layer milliseconds (median of ``--reps`` replays), the speed-up,
the compile time and the relative difference of the compiled output from the eager one. Nothing of this is
built into occam; it measures an option (``bench_results/h200/fuse.log``). On a CPU the same code runs
without graphs (a check of the script, not a measurement).

    python -m occam.bench fusion --model llava-1.5-7b --device cuda --dtype bfloat16
    python -m occam.bench fusion --model tiny-llava --device cpu --dtype float32 --lengths 64 --no-compile
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from .common import DTYPES, load_vlm, random_hidden
from .speed import _sync_time


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m occam.bench fusion", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="llava-1.5-7b", help="architecture name, hub id or folder (default llava-1.5-7b)")
    p.add_argument("--layers", type=int, default=4, help="decoder layers to run (default 4)")
    p.add_argument("--device", default="cuda", help="cuda or cpu (default cuda)")
    p.add_argument("--dtype", default="bfloat16", choices=DTYPES)
    p.add_argument("--lengths", type=int, nargs="+", default=[192, 704], help="token counts (default 192 704)")
    p.add_argument("--reps", type=int, default=30, help="timed replays per variant (default 30)")
    p.add_argument("--no-compile", action="store_true", help="eager kernels only (no torch.compile)")
    args = p.parse_args(argv)
    if args.layers < 1 or args.reps < 1 or min(args.lengths) < 1:
        p.error("--layers, --reps and every --lengths value must be >= 1.")
    return args


def timed_ms(fn, device: torch.device, reps: int) -> float:
    """Median wall time of ``fn()`` over ``reps`` synchronised calls, after 3 untimed ones."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        t0 = _sync_time(device)
        fn()
        times.append(_sync_time(device) - t0)
    return statistics.median(times) * 1e3


def graphed(fn, device: torch.device, *args):
    """``fn(*args)`` captured as a CUDA graph (its replay), or the plain call off a GPU."""
    if device.type != "cuda":
        return lambda: fn(*args)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn(*args)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn(*args)
    return graph.replay


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    vlm = load_vlm(args.model, args.layers, args.dtype, args.device, prefill="eager")
    ad, n = vlm.adapter, vlm.num_layers

    def run_layers(h, cos, sin):
        for i in range(n):
            h = ad.layer(i, h, (cos, sin), None)
        return h

    compiled = None if args.no_compile else torch.compile(run_layers, dynamic=False)
    rows = []
    for length in args.lengths:
        h, (cos, sin) = random_hidden(vlm, length)
        with torch.inference_mode():
            ref = run_layers(h, cos, sin)
            row = {"length": length, "eager_ms_per_layer": timed_ms(graphed(run_layers, ad.device, h, cos, sin),
                                                                     ad.device, args.reps) / n}
            line = f"L={length}: per decoder layer, eager kernels {row['eager_ms_per_layer']:.3f} ms"
            if compiled is not None:
                t0 = time.time()
                out = compiled(h, cos, sin)
                row["compile_s"] = time.time() - t0
                row["compiled_ms_per_layer"] = timed_ms(graphed(compiled, ad.device, h, cos, sin), ad.device,
                                                        args.reps) / n
                row["rel_diff"] = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
                line += (f", compiled {row['compiled_ms_per_layer']:.3f} ms "
                         f"({row['eager_ms_per_layer'] / row['compiled_ms_per_layer']:.2f}x); "
                         f"compile {row['compile_s']:.0f} s; rel. diff {row['rel_diff']:.2e}")
        print(line, flush=True)
        rows.append(row)
    return rows


if __name__ == "__main__":
    main()
