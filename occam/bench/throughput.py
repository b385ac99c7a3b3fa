"""``python -m occam.bench throughput``: requests/s of the batched engine, full model vs pruning methods.

For each batch size, B distinct requests (images and questions) are answered by one ``generate_batch``
call per variant; every pruned variant is timed right next to the full model on the same requests
(full first in even rounds, second in odd ones), and its speed-up is the median of the per-pair
ratios. Two references run on the same requests: B calls of ``generate`` (one at a time, as before the
batched engine) and the unmodified model's own batched ``generate`` (left-padded, greedy).

Reported per row: requests/s, generated tokens/s, latency p50 / p95 (a batch's requests all return when
it ends), time to first token (preprocess + vision + prefill of the batch), decode time per step, the KV
cache per request, the peak memory of the call, and how many such requests fit one fixed KV budget
(``--kv-budget-gb``: the budget over the padded cache the engine's planner reserves per request).

    python -m occam.bench throughput --model toy --batch-sizes 1 4 16 64 --new-tokens 64
    python -m occam.bench throughput --model llava-1.5-7b --device cuda --dtype bfloat16 --kv-budget-gb 60
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

import occam
from occam import budget, engine
from occam.methods import FULL, PRUNING_METHODS, TIMED_METHODS

from .common import DTYPES, PeakMemory, bench_image, fmt, load_vlm, md_table, summarize, write_report

METHODS = TIMED_METHODS
QUESTIONS = ("What is the red object in the middle of the picture?", "What colour is the sky?",
             "Is there a tree on the right? Answer yes or no.", "How many objects can you see?",
             "Describe the picture in one sentence.", "What is behind the red ball, and what shape is it?")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m occam.bench throughput", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="toy", help="hub id, local folder, 'toy' or an occam.archs name")
    p.add_argument("--text-layers", type=int, default=None, help="keep only the first N decoder layers")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, choices=DTYPES, help="default: bfloat16 on a GPU, float32 else")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=occam.METHODS)
    p.add_argument("--retentions", nargs="+", type=float, default=[0.25, 0.11, 0.05])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 4, 16, 64])
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3, help="timed pairs per pruned variant and batch size")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--image-size", nargs=2, type=int, default=[640, 480], metavar=("W", "H"))
    p.add_argument("--kv-budget-gb", type=float, default=None,
                   help="the fixed KV budget for the 'fits' column (default: 60 on a GPU, 2 on a CPU)")
    p.add_argument("--serial-up-to", type=int, default=16, help="time B calls of generate for B <= this")
    p.add_argument("--no-hf", action="store_true", help="skip the unmodified model's batched generate")
    p.add_argument("--out", default=None, help="report path without suffix (default: bench_results/...)")
    args = p.parse_args(argv)
    if args.dtype is None:
        args.dtype = "bfloat16" if args.device.startswith("cuda") else "float32"
    if args.kv_budget_gb is None:
        args.kv_budget_gb = 60.0 if args.device.startswith("cuda") else 2.0
    for name in ("batch_sizes", "rounds", "new_tokens"):
        vals = getattr(args, name)
        if any(v < 1 for v in (vals if isinstance(vals, list) else [vals])):
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if any(not 0 < r <= 1 for r in args.retentions):
        p.error("--retentions must lie in (0, 1]")
    return args


def requests(n: int, size: tuple[int, int]) -> tuple[list, list[str]]:
    """n distinct requests: the benchmark picture with a different noise seed each, the questions in turn."""
    return [bench_image(*size, seed=i) for i in range(n)], [QUESTIONS[i % len(QUESTIONS)] for i in range(n)]


def variants(vlm: occam.VLM, methods, retentions, calib) -> list[tuple[str, occam.OccamConfig]]:
    """(label, config) per method and target retention; occam's alpha / beta calibrated to each target."""
    out = [(FULL, occam.OccamConfig(method=FULL))]
    for t in retentions:
        for m in (m for m in methods if m in PRUNING_METHODS):
            cfg = budget.for_target(vlm, occam.OccamConfig(method=m), t, "calibrated", calib, tol=0.01, iters=16).config
            out.append((f"{m}@{t:g}", cfg))
    return out


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(device, fn):
    """(seconds, result, peak bytes) of fn(), device-synchronised."""
    with PeakMemory(device) as mem:
        sync(device)
        t0 = time.perf_counter()
        res = fn()
        sync(device)
        dt = time.perf_counter() - t0
    return dt, res, mem.bytes


def run_stats(results: list, seconds: float, peak: int | None) -> dict:
    """What one batched call shows: throughput, first token, decode step, cache per request."""
    tr = results[0].trace
    steps = max(len(r.token_ids) for r in results)
    t = tr.timings
    return {"seconds": seconds, "requests_per_s": len(results) / seconds,
            "tokens_per_s": sum(len(r.token_ids) for r in results) / seconds,
            "ttft_s": t["preprocess_s"] + t["vision_s"] + t["prefill_s"],
            "decode_step_s": t["decode_s"] / (steps - 1) if steps > 1 else None,
            "kv_bytes_per_request": statistics.mean(r.trace.kv_cache_bytes for r in results),
            "retention": statistics.mean(r.trace.counts["retention"] for r in results),
            "reserved_tokens": max(r.trace.sequence["after_stage1"] for r in results),
            "peak_bytes": peak}


def hf_batched(vlm: occam.VLM, images, questions, new_tokens: int):
    """The unmodified model's own batched greedy generate, left-padded: its new ids per request."""
    ad, tok = vlm.adapter, vlm.processor.tokenizer
    prompts = [ad.build_prompt(q) for q in questions]
    side = tok.padding_side
    tok.padding_side = "left"
    try:
        inputs = vlm.processor(images=list(images), text=prompts, padding=True, return_tensors="pt")
    finally:
        tok.padding_side = side
    inputs = ad._to_device(inputs)
    with torch.inference_mode():
        out = vlm.model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False)
    return out[:, inputs["input_ids"].shape[1]:]


def measure(vlm: occam.VLM, args, rows: list, b: int) -> list[dict]:
    """Every variant at batch size b, each pruned one paired in time with the full model."""
    images, questions = requests(b, tuple(args.image_size))
    dev, n = args.device, args.new_tokens
    batch = {label: (lambda c=cfg: vlm.generate_batch(images, questions, c, max_new_tokens=n)) for label, cfg in rows}
    for _ in range(args.warmup):
        for fn in batch.values():
            fn()
    full_runs, out = [], []
    pruned = [label for label, _ in rows if label != FULL]
    pairs: dict[str, list] = {label: [] for label in pruned}
    for rnd in range(args.rounds):
        order = pruned[rnd % len(pruned):] + pruned[:rnd % len(pruned)] if pruned else []
        for label in order or [None]:
            first_full = rnd % 2 == 0
            runs = {}
            for which in ([FULL, label] if first_full else [label, FULL]):
                if which is None:
                    continue
                runs[which] = timed(dev, batch[which])
            full_runs.append(runs[FULL])
            if label is not None:
                pairs[label].append((runs[FULL], runs[label]))
    full = [run_stats(r, s, m) for s, r, m in full_runs]
    out.append(summary(FULL, b, full, None, args))
    for label in pruned:
        stats = [run_stats(r, s, m) for _, (s, r, m) in pairs[label]]
        ratio = [f[0] / p[0] for f, p in pairs[label]]
        out.append(summary(label, b, stats, ratio, args))
    if b <= args.serial_up_to:
        cfg = dict(rows)[FULL]
        s, res, m = timed(dev, lambda: [vlm.generate(im, q, cfg, max_new_tokens=n) for im, q in zip(images, questions)])
        out.append(summary("none, one at a time", b, [run_stats(res, s, m)], None, args))
    if not args.no_hf:
        try:
            hf_batched(vlm, images[:1], questions[:1], 2)     # warm-up
            s, ids, m = timed(dev, lambda: hf_batched(vlm, images, questions, n))
            out.append({"label": "HF generate (batched)", "batch": b, "requests_per_s": b / s, "seconds": [s],
                        "peak_bytes": m})
        except Exception as e:   # a processor that cannot batch: said in the report, not hidden
            out.append({"label": "HF generate (batched)", "batch": b, "error": f"{type(e).__name__}: {e}"[:200]})
    return out


def summary(label: str, b: int, stats: list[dict], ratio: list | None, args) -> dict:
    secs = [s["seconds"] for s in stats]
    per_request = statistics.mean(s["kv_bytes_per_request"] for s in stats)
    budget = args.kv_budget_gb * 2**30
    reserved = stats[0]["reserved_tokens"] + args.new_tokens
    return {"label": label, "batch": b, "seconds": secs,
            "requests_per_s": b / statistics.median(secs),
            "tokens_per_s": statistics.median(s["tokens_per_s"] for s in stats),
            "latency_p50_s": statistics.median(secs),
            "latency_p95_s": sorted(secs)[min(len(secs) - 1, round(0.95 * (len(secs) - 1)))],
            "ttft_s": statistics.median(s["ttft_s"] for s in stats),
            "decode_step_s": statistics.median(s["decode_step_s"] for s in stats) if stats[0]["decode_step_s"] else None,
            "retention": statistics.mean(s["retention"] for s in stats),
            "kv_bytes_per_request": per_request,
            "fits_in_budget": int(budget // per_request) if per_request else None,
            "reserved_bytes_per_request": reserved,
            "peak_bytes": max((s["peak_bytes"] or 0) for s in stats) or None,
            "speedup_vs_full": summarize(ratio) if ratio else None}


def markdown(report: dict) -> str:
    a = report["args"]
    lines = [f"# Throughput: {report['model']}", "",
             f"{a['new_tokens']} new tokens per request (greedy; a request stops at EOS), device {a['device']}, "
             f"{a['dtype']}, {a['rounds']} paired rounds, images {a['image_size'][0]}x{a['image_size'][1]}. "
             f"`fits`: requests whose KV cache (as measured) fits {a['kv_budget_gb']:g} GB. Speed-up: median "
             "[min–max] of per-pair ratios full / pruned.", "",
             f"Command: `{report['command']}`", ""]
    header = ["batch", "variant", "retention", "req/s", "tok/s", "p50 s", "p95 s", "TTFT s", "decode ms/step",
              "KV/request MB", "fits", "peak MB", "× full"]
    rows = []
    for r in report["rows"]:
        if "error" in r:
            rows.append([r["batch"], r["label"], None, "n/a: " + r["error"]] + [None] * 9)
            continue
        sp = r.get("speedup_vs_full")
        rows.append([r["batch"], r["label"], fmt(r.get("retention"), 2), fmt(r["requests_per_s"]),
                     fmt(r.get("tokens_per_s")), fmt(r.get("latency_p50_s")), fmt(r.get("latency_p95_s")),
                     fmt(r.get("ttft_s")), fmt((r.get("decode_step_s") or 0) * 1e3) if r.get("decode_step_s") else "–",
                     fmt((r.get("kv_bytes_per_request") or 0) / 2**20) if r.get("kv_bytes_per_request") else "–",
                     r.get("fits_in_budget"), fmt(r["peak_bytes"] / 2**20) if r.get("peak_bytes") else "–",
                     f"{fmt(sp['median'])} [{fmt(sp['min'])}–{fmt(sp['max'])}]" if sp else "–"])
    return "\n".join(lines + [md_table(header, rows), ""])


def default_out(model: str, text_layers: int | None) -> Path:
    tag = model.replace("/", "_") + (f"-L{text_layers}" if text_layers else "")
    return Path("bench_results") / f"throughput_{tag}"


def main(argv: list[str] | None = None) -> dict:
    import sys

    args = parse_args(argv)
    torch.manual_seed(0)
    vlm = load_vlm(args.model, args.text_layers, args.dtype, args.device)
    calib_images, calib_questions = requests(4, tuple(args.image_size))
    rows = variants(vlm, args.methods, args.retentions, list(zip(calib_images, calib_questions)))
    report = {"model": vlm.name, "args": vars(args), "rows": [],
              "command": "python -m occam.bench throughput " + " ".join(sys.argv[1:] if argv is None else argv),
              "sync_every": engine.sync_every(vlm.adapter.device, vlm.decoder), "decode_path": getattr(vlm.decoder, "name", "eager"),
              "prefill_path": getattr(vlm.segments, "name", "eager"),
              "torch_threads": torch.get_num_threads(), "configs": {label: c.to_dict() for label, c in rows}}
    for b in args.batch_sizes:
        report["rows"] += measure(vlm, args, rows, b)
        print(markdown(report).splitlines()[-2], flush=True)
    out = Path(args.out) if args.out else default_out(args.model, args.text_layers)
    write_report(out, markdown(report), report)
    print(markdown(report))
    return report
