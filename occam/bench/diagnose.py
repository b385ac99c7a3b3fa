"""``python -m occam.bench diagnose``: where a request's time goes, for the full model and two pruned ones.

1. After warm-up, ``--reps`` requests per config under ``torch.profiler``: the request's own timings and
   the kernel table (sorted by CUDA time on a GPU, CPU time elsewhere).
2. The prefill's decoder layers alone: all of them at each ``--lengths`` token count, through the model's
   segment runner (``VLM.segments``: CUDA graphs replayed at bucketed lengths on a GPU) or through
   eager per-layer calls (``adapter.layer``) when the model runs eagerly; median and min over ``--reps``
   synchronised calls, the copy of the keys / values into a fresh cache included.

Reads only public attributes of ``occam.VLM`` and its adapter (``bench_results/h200/diag.log`` was made by
the script this replaces, which timed the bare graph replays from the graph runner's private table: its
"graph replay" lines are the replay alone, without the copy-out this times).

    python -m occam.bench diagnose --model llava-1.5-7b --device cuda --dtype bfloat16
    python -m occam.bench diagnose --model tiny-llava --prefill padded --reps 1 --lengths 64   # on a CPU
"""
from __future__ import annotations

import argparse
import statistics

import torch

import occam

from .common import DTYPES, bench_image, load_vlm, random_hidden
from .speed import QUESTION, _sync_time

CONFIGS = {"none": occam.OccamConfig(method="none"),
           "visionzip@0.05": occam.OccamConfig(method="visionzip", retention=0.05),
           "topk@0.11": occam.OccamConfig(method="topk", retention=0.11)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m occam.bench diagnose", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="llava-1.5-7b", help="architecture name, hub id or folder (default llava-1.5-7b)")
    p.add_argument("--text-layers", type=int, default=None, help="keep only the first N decoder layers")
    p.add_argument("--device", default="cuda", help="cuda or cpu (default cuda)")
    p.add_argument("--dtype", default="bfloat16", choices=DTYPES)
    p.add_argument("--prefill", default="auto", choices=("auto", "eager", "padded", "cuda-graphs"),
                   help="the prefill path (default auto: CUDA graphs on a GPU)")
    p.add_argument("--warmup", type=int, default=3, help="untimed requests per config first (default 3)")
    p.add_argument("--reps", type=int, default=3, help="profiled requests per config, timed layer calls (default 3)")
    p.add_argument("--lengths", type=int, nargs="+", default=[192, 704], help="token counts for the layer timing")
    p.add_argument("--rows", type=int, default=18, help="rows of each kernel table (default 18)")
    p.add_argument("--image-size", default="640x480", help="WxH of the generated image (default 640x480)")
    args = p.parse_args(argv)
    if args.reps < 1 or args.warmup < 0 or min(args.lengths) < 1:
        p.error("--reps must be >= 1, --warmup >= 0 and every --lengths value >= 1.")
    return args


def kernel_tables(vlm: occam.VLM, image, question: str, warmup: int, reps: int, rows: int) -> str:
    """Per config: the last profiled request's timings (ms) and the profiler's kernel table."""
    from torch.profiler import ProfilerActivity, profile
    cuda = vlm.adapter.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    for cfg in CONFIGS.values():
        for _ in range(warmup):
            vlm.generate(image, question, cfg, max_new_tokens=1)
    out = []
    for label, cfg in CONFIGS.items():
        with profile(activities=activities) as prof:
            for _ in range(reps):
                result = vlm.generate(image, question, cfg, max_new_tokens=1)
        times = {k: round(v * 1e3, 2) for k, v in result.trace.timings.items() if isinstance(v, float)}
        out.append(f"##### {label}: timings (ms, last request) {times}\n"
                   + prof.key_averages().table(sort_by="cuda_time_total" if cuda else "cpu_time_total",
                                               row_limit=rows, max_name_column_width=60))
    return "\n\n".join(out)


def layer_times(vlm: occam.VLM, lengths: list[int], reps: int) -> list[dict]:
    """All decoder layers at each length (random hidden states), timed: [{"length", "median_ms", "min_ms", "path"}]."""
    ad = vlm.adapter
    n = ad.num_layers
    path = getattr(vlm.segments, "name", "eager")

    def call(h, rope):
        cache = ad.new_cache()
        if vlm.segments is not None:
            return vlm.segments(0, n, h, rope, cache)
        for i in range(n):
            h = ad.layer(i, h, rope, cache)
        return h

    out = []
    with torch.inference_mode():
        for length in lengths:
            h, rope = random_hidden(vlm, length)
            call(h, rope)                    # the first call at a length captures its graph
            times = []
            for _ in range(reps):
                t0 = _sync_time(ad.device)
                call(h, rope)
                times.append((_sync_time(ad.device) - t0) * 1e3)
            out.append({"length": length, "median_ms": statistics.median(times), "min_ms": min(times), "path": path})
    return out


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    vlm = load_vlm(args.model, args.text_layers, args.dtype, args.device, prefill=args.prefill)
    w, h = (int(x) for x in args.image_size.lower().split("x"))
    tables = kernel_tables(vlm, bench_image(w, h), QUESTION, args.warmup, args.reps, args.rows)
    print(tables)
    layers = layer_times(vlm, args.lengths, args.reps)
    print()
    for r in layers:
        print(f"{vlm.num_layers} decoder layers at length {r['length']} ({r['path']}, with the copy into the "
              f"cache): median {r['median_ms']:.2f} ms (min {r['min_ms']:.2f}, n={args.reps})")
    return {"model": vlm.name, "tables": tables, "layers": layers}


if __name__ == "__main__":
    main()
