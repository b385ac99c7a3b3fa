"""``python -m occam.bench speed``: wall-clock, memory and FLOPs of the full model vs pruning methods.

For one model, image and question, every method runs at a matched retention (occam's alpha / beta
are set on this input so that it keeps as many visual tokens as the fixed-budget methods). After
warm-up, full and pruned runs alternate: each round times every pruned variant (in an order
rotated from round to round) right next to a run of the full model, full first in even rounds and
second in odd ones, so that machine drift hits both sides of a pair alike. Speed-ups are medians
of the per-pair ratios (full / pruned); "best" ratios divide the fastest runs of each side.

    python -m occam.bench speed --model llava-1.5-7b --text-layers 4 --retention 0.25 --reps 3
    python -m occam.bench speed --model llava-hf/llava-1.5-7b-hf --device cuda --dtype bfloat16 --retention 0.11 0.25
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import occam
from occam import archs, budget, cost
from occam.methods import FULL, PRUNING_METHODS, TIMED_METHODS
from occam.methods import get as get_method
from occam.inputs import open_image

from .common import (DTYPES, PeakMemory, bench_image, fmt, fmt_range, load_vlm, md_table, median, ratios,
                     summarize, write_report)

METHODS = TIMED_METHODS
TIMING_KEYS = ("preprocess_s", "vision_s", "scoring_s", "prefill_s", "decode_s", "total_s", "decode_tokens_per_s")
QUESTION = "What is the red object in the middle of the picture, and what can be seen behind it? Answer briefly."
TARGET_FRACTION_OF_IDEAL = 0.90   # measured prefill speed-up >= 90% of the FLOPs-ideal one
TARGET_SCORING_SHARE = 0.05       # scoring overhead <= 5% of the full model's prefill


@dataclass
class Variant:
    label: str
    method: str
    retention: float | None       # target retention (None for the full model)
    config: occam.OccamConfig


# -- configuration ---------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m occam.bench speed", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="toy",
                   help="hub id, local folder, 'toy', or an occam.archs name (random weights), e.g. llava-1.5-7b")
    p.add_argument("--text-layers", type=int, default=None, help="keep only the first N decoder layers")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--dtype", default="float32", choices=DTYPES)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=occam.METHODS)
    p.add_argument("--retention", nargs="+", type=float, default=[0.25], help="target retention(s) in (0, 1]")
    p.add_argument("--reps", type=int, default=3, help="timed rounds (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first; the last one measures memory")
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--image", default=None, help="an image file (default: a generated photo-like image)")
    p.add_argument("--image-size", default="640x480", help="WxH of the generated image (default 640x480)")
    p.add_argument("--video", default=None, help="a video file (models that take video), sampled as the model asks")
    p.add_argument("--frames", type=int, default=None,
                   help="a generated video of N frames of --image-size (one photo-like picture per frame)")
    p.add_argument("--question", default=QUESTION)
    p.add_argument("--fastv-layer", type=int, default=2,
                   help="FastV's K at full depth; with --text-layers it is scaled to the kept depth (as occam's K is)")
    p.add_argument("--stage2-layer", type=int, default=None, help="occam/topk Stage II layer K (default round(0.34 L))")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the device's dense peak for --dtype, for the roofline ideal (default: known GPUs, else none)")
    p.add_argument("--mem-bandwidth", type=float, default=None, help="the device's memory bandwidth in GB/s (idem)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--out", default=None, help="markdown output (JSON written beside it); "
                                                "default bench_results/speed_<model>.md")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.reps < 1 or args.warmup < 0 or args.max_new_tokens < 1:
        p.error("--reps must be >= 1, --warmup >= 0, --max-new-tokens >= 1")
    if any(not 0 < r <= 1 for r in args.retention):
        p.error("--retention values must lie in (0, 1]")
    return args


def fastv_layer_at(depth: int, full_depth: int, fastv_layer: int) -> int:
    """FastV's K for a model cut to ``depth`` of its ``full_depth`` decoder layers: the same relative depth."""
    scaled = fastv_layer if depth >= full_depth else max(1, round(fastv_layer * depth / full_depth))
    return min(scaled, depth - 1)


def make_variants(vlm: occam.VLM, image, question: str, methods, retentions, fastv_layer: int,
                  stage2_layer: int | None) -> list[Variant]:
    """The full model once, then every pruning method at every target retention.

    occam's alpha / beta are calibrated on this very input (``vlm.calibrate`` on one sample, to half a
    token), so that it keeps as many tokens as the fixed-budget methods.
    """
    base = occam.OccamConfig(method=FULL, fastv_layer=fastv_layer, stage2_layer=stage2_layer)
    out = [Variant(FULL, FULL, None, base)]
    n = vlm.generate(image, question, base, max_new_tokens=0).trace.num_visual
    for t in retentions:
        for m in (m for m in methods if m in PRUNING_METHODS):
            cfg = budget.for_target(vlm, base.replace(method=m), t, "calibrated", [(image, question)], tol=0.5 / n).config
            out.append(Variant(f"{m}@{t:g}", m, t, cfg))
    return out


def hf_forward_times(vlm: occam.VLM, image, question: str, reps: int, warmup: int) -> dict:
    """The unmodified model's own ``model(**inputs)`` (vision + prefill, last logits only), timed alone."""
    ad = vlm.adapter
    inputs = ad.prepare(image, question).inputs
    times = []
    with torch.inference_mode():
        for r in range(warmup + reps):
            t0 = _sync_time(ad.device)
            vlm.model(**inputs, logits_to_keep=1)
            if r >= warmup:
                times.append(_sync_time(ad.device) - t0)
    return summarize(times)


def _sync_time(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


# -- measuring -------------------------------------------------------------------------------------
def run_rounds(vlm: occam.VLM, image, question: str, variants: list[Variant], reps: int, warmup: int,
               max_new_tokens: int, log=None) -> tuple[dict, dict, dict]:
    """Warm-up rounds (the last one under PeakMemory), then ``reps`` rounds of (full, pruned) pairs.

    ``variants[0]`` is the full model. Returns ({label: [Trace]}, {label: [Trace of the full run paired
    with each of those]}, {label: peak memory bytes or None}).
    """
    full, pruned = variants[0], variants[1:]
    traces = {v.label: [] for v in variants}
    partner = {v.label: [] for v in variants}
    memory = {v.label: None for v in variants}
    device = vlm.adapter.device

    def timed(v: Variant, r: int):
        tr = vlm.generate(image, question, v.config, max_new_tokens=max_new_tokens).trace
        traces[v.label].append(tr)
        if log:
            log(f"round {r + 1}/{reps} {v.label}: prefill {tr.timings['prefill_s']:.3f}s "
                f"vision {tr.timings['vision_s']:.3f}s kept {tr.counts['final']}/{tr.counts['visual']}")
        return tr

    for r in range(warmup):
        for v in variants:
            with PeakMemory(device) as pm:
                vlm.generate(image, question, v.config, max_new_tokens=max_new_tokens)
            memory[v.label] = pm.bytes
            if log:
                log(f"warm-up {r + 1}/{warmup} {v.label}")
    for r in range(reps):
        shift = r % len(pruned) if pruned else 0
        for v in pruned[shift:] + pruned[:shift]:
            first, second = (full, v) if r % 2 == 0 else (v, full)
            a, b = timed(first, r), timed(second, r)
            partner[v.label].append(a if first is full else b)
        if not pruned:
            timed(full, r)
    partner[full.label] = traces[full.label]
    return traces, partner, memory


def kv_bytes_by_hand(lm_config, per_layer: list[int], element_size: int) -> int:
    """2 (K and V) x kv_heads x head_dim x bytes per element, summed over the per-layer lengths."""
    heads = lm_config.num_attention_heads
    kv = getattr(lm_config, "num_key_value_heads", None) or heads
    hd = getattr(lm_config, "head_dim", None) or lm_config.hidden_size // heads
    return 2 * kv * hd * element_size * sum(per_layer)


def ttft(tr) -> float:
    """Time to first token: preprocessing + vision encoder (+ Stage I) + prefill (+ Stage II)."""
    return tr.timings["total_s"] - tr.timings["decode_s"]


def variant_report(v: Variant, traces: list, partner: list, all_full: list, memory: int | None, lm_config,
                   element_size: int, roofline: dict | None = None) -> dict:
    """One table row: this variant's traces, the full runs paired with them, and every full run."""
    tr = traces[0]
    timings = {k: summarize([t.timings.get(k) for t in traces]) for k in TIMING_KEYS}
    full_prefill = median([t.timings["prefill_s"] for t in all_full])
    prefill_x = summarize(ratios([t.timings["prefill_s"] for t in partner], [t.timings["prefill_s"] for t in traces]))
    best_x = min(t.timings["prefill_s"] for t in all_full) / min(t.timings["prefill_s"] for t in traces)
    ideal = tr.flops["prefill_full"] / tr.flops["prefill"]
    seq = tr.sequence
    roof = None
    if roofline is not None:
        bound = lambda lengths: cost.prefill_roofline_s(lm_config, lengths, element_size,  # noqa: E731
                                                        roofline["peak_tflops"] * 1e12, roofline["bandwidth_gbs"] * 1e9)
        roof = bound([seq["prompt"]] * len(seq["per_layer"])) / bound(seq["per_layer"])
    k = seq["stage2_layer"]
    hand = kv_bytes_by_hand(lm_config, seq["per_layer"], element_size)
    text_tokens = seq["prompt"] - tr.counts["visual"]
    lengths_ok = all(n == (seq["after_stage1"] if k is None or i < k else text_tokens + tr.counts["final"])
                     for i, n in enumerate(seq["per_layer"]))
    vision_delta = [a.timings["vision_s"] - b.timings["vision_s"] for a, b in zip(traces, partner)]
    scoring_share = timings["scoring_s"]["median"] / full_prefill
    rep = {
        "label": v.label, "method": v.method, "target_retention": v.retention, "config": v.config.to_dict(),
        "counts": tr.counts, "sequence": seq, "flops": tr.flops,
        "kv_cache_bytes": tr.kv_cache_bytes, "kv_cache_bytes_by_hand": hand, "peak_memory_bytes": memory,
        "timings": timings, "ttft_s": summarize(ttft(t) for t in traces),
        "flops_ideal_prefill_speedup": ideal,
        "measured_prefill_speedup": prefill_x,
        "measured_over_ideal": prefill_x["median"] / ideal,
        "roofline_ideal_prefill_speedup": roof,
        "measured_over_roofline": None if roof is None else prefill_x["median"] / roof,
        "best_prefill_speedup": best_x,
        "best_over_ideal": best_x / ideal,
        "ttft_speedup": summarize(ratios([ttft(t) for t in partner], [ttft(t) for t in traces])),
        "scoring_share_of_full_prefill": scoring_share,
        "vision_delta_share_of_full_prefill": median(vision_delta) / full_prefill,
    }
    rep["checks"] = {
        "speedup_within_90pct_of_ideal": rep["measured_over_ideal"] >= TARGET_FRACTION_OF_IDEAL,
        "best_speedup_within_90pct_of_ideal": best_x / ideal >= TARGET_FRACTION_OF_IDEAL,
        "scoring_within_5pct_of_full_prefill": scoring_share <= TARGET_SCORING_SHARE,
        "kv_bytes_match_hand_count": tr.kv_cache_bytes == hand,
        "kv_lengths_match_kept_tokens": lengths_ok,
    }
    return rep


def build_report(vlm: occam.VLM, variants: list[Variant], traces: dict, partner: dict, memory: dict,
                 setup: dict) -> dict:
    lm_config = vlm.adapter.lm.config
    element_size = torch.empty((), dtype=vlm.model.dtype).element_size()
    full = traces[FULL]
    tr = full[0]
    return {
        "benchmark": "speed", **setup,
        "model": vlm.name, "family": vlm.family, "num_text_layers": vlm.num_layers,
        "device": str(vlm.adapter.device), "dtype": str(vlm.model.dtype).removeprefix("torch."),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "image_size": list(tr.image_size), "prompt_tokens": tr.sequence["prompt"], "visual_tokens": tr.num_visual,
        "memory_kind": PeakMemory(vlm.adapter.device).kind,
        "variants": [variant_report(v, traces[v.label], partner[v.label], full, memory[v.label], lm_config,
                                    element_size, setup.get("roofline"))
                     for v in variants],
    }


# -- tables ----------------------------------------------------------------------------------------
def _runs(lengths: list[int]) -> str:
    """[650, 650, 209, 209] -> '650×2, 209×2'."""
    out, i = [], 0
    while i < len(lengths):
        j = i
        while j < len(lengths) and lengths[j] == lengths[i]:
            j += 1
        out.append(f"{lengths[i]}×{j - i}")
        i = j
    return ", ".join(out)


def _ret(v: dict) -> str:
    return "1" if v["target_retention"] is None else f"{v['target_retention']:g}"


def timings_table(report: dict) -> str:
    header = ["method", "target ret.", "kept / visual", "tokens per layer", "vision s", "scoring s", "prefill s",
              "TTFT s", "decode tok/s", "KV cache MiB", "peak mem Δ MiB"]
    rows = []
    for v in report["variants"]:
        t, c = v["timings"], v["counts"]
        mem = v["peak_memory_bytes"]
        rows.append([v["method"], _ret(v), f"{c['final']} / {c['visual']}", _runs(v["sequence"]["per_layer"]),
                     fmt_range(t["vision_s"]), fmt_range(t["scoring_s"], 2), fmt_range(t["prefill_s"]),
                     fmt_range(v["ttft_s"]), fmt_range(t["decode_tokens_per_s"]),
                     fmt(v["kv_cache_bytes"] / 2 ** 20), fmt(None if mem is None else mem / 2 ** 20)])
    return md_table(header, rows)


def speedup_table(report: dict) -> str:
    header = ["method", "target ret.", "FLOPs-ideal prefill ×", "roofline-ideal ×", "measured prefill × (pairs)",
              "measured / ideal", "measured / roofline",
              "best-run prefill ×", "best / ideal", "TTFT ×", "scoring % of full prefill", "Δvision % of full prefill", "KV = hand count, ∝ kept"]
    rows = []
    for v in report["variants"]:
        ch = v["checks"]
        roof = v["measured_over_roofline"]
        rows.append([v["method"], _ret(v), fmt(v["flops_ideal_prefill_speedup"]), fmt(v["roofline_ideal_prefill_speedup"]),
                     fmt_range(v["measured_prefill_speedup"]), f"{100 * v['measured_over_ideal']:.0f}%",
                     "–" if roof is None else f"{100 * roof:.0f}%",
                     fmt(v["best_prefill_speedup"]), f"{100 * v['best_over_ideal']:.0f}%",
                     fmt_range(v["ttft_speedup"]), f"{100 * v['scoring_share_of_full_prefill']:.1f}%",
                     f"{100 * v['vision_delta_share_of_full_prefill']:+.1f}%",
                     "yes" if ch["kv_bytes_match_hand_count"] and ch["kv_lengths_match_kept_tokens"] else "NO"])
    return md_table(header, rows)


def markdown(report: dict) -> str:
    r = report
    k = next((v["sequence"]["stage2_layer"] for v in r["variants"]
              if get_method(v["method"]).layer_field == "stage2_layer"), None)
    setup = (f"- model: `{r['model']}` ({r['family']}, {r['num_text_layers']} decoder layers), {r['device']}, "
             f"{r['dtype']}, torch {r['torch']}, {r['threads']} threads\n"
             f"- input: {r['image_size'][0]}x{r['image_size'][1]} "
             f"{str(r.get('frames')) + '-frame video' if r.get('frames') else 'image'}, {r['visual_tokens']} visual tokens, "
             f"{r['prompt_tokens']} prompt tokens; {r['max_new_tokens']} new tokens\n"
             f"- {r['warmup']} warm-up round(s), then {r['reps']} round(s) in which every pruned variant is timed "
             f"next to a run of the full model (full first / second in even / odd rounds, variant order rotated); "
             f"cells: median [min–max] over the runs\n"
             f"- occam Stage II at decoder layer K={k}; FastV at layer {r['fastv_layer']}"
             f"{' (scaled from ' + str(r['fastv_layer_full_depth']) + ' at full depth)' if r['fastv_layer'] != r['fastv_layer_full_depth'] else ''}; "
             f"occam's alpha/beta calibrated on this input to the target retention\n"
             f"- the unmodified model's own forward (`model(**inputs)`, vision + prefill): "
             f"{fmt_range(r['hf_forward_s'])} s; occam `none` vision + prefill: {fmt_range(r['none_vision_prefill_s'])} s "
             f"(ratio {fmt(r['none_over_hf'])})\n"
             f"- command: `{r['command']}`")
    notes = ("- *prefill s*: the language-model prefill up to the first token's logits, Stage II / FastV scoring "
             "included; *vision s*: vision encoder + Stage-I statistics + Stage I; *TTFT*: preprocessing + vision + "
             "prefill.\n"
             "- *FLOPs-ideal prefill ×*: `flops.prefill_full / flops.prefill` (matmuls + causal attention at the "
             "per-layer token counts); *measured prefill ×*: ratio of the prefill times of the full and pruned runs "
             "of each pair; *best-run ×*: fastest full prefill / fastest pruned prefill (on a shared machine, "
             "interference only ever slows a run down).\n"
             "- *scoring %*: the traced `scoring_s` (Stage I selection + Stage II / FastV scoring) over the full "
             "model's median prefill; *Δvision %*: per-round vision-time difference to the full model (the "
             "Stage-I attention statistics computed inside the vision encoder, not counted in `scoring_s`), same "
             "scale; noisy when it is small.\n"
             f"- *KV cache*: bytes of the prefill's DynamicCache (checked against 2 × kv_heads × head_dim × bytes "
             f"× Σ per-layer lengths, lengths = Stage-I length before K, text + kept tokens from K on); "
             f"*peak mem Δ*: {r['memory_kind']} above the level before the call, in the last warm-up round.")
    return (f"# Speed benchmark: {r['model']}\n\n{setup}\n\n## Timings\n\n{timings_table(r)}\n\n"
            f"## Speed-up against the full model\n\n{speedup_table(r)}\n\n{notes}\n")


# -- entry point -----------------------------------------------------------------------------------
def default_out(model: str, text_layers: int | None) -> Path:
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", Path(model).name if Path(model).is_dir() else model).strip("-").lower()
    return Path("bench_results") / f"speed_{slug}{f'-L{text_layers}' if text_layers else ''}.md"


def run(args: argparse.Namespace, argv: list[str] | None = None) -> dict:
    log = None if args.quiet else (lambda msg: print(f"[speed {time.strftime('%H:%M:%S')}] {msg}",
                                                     file=sys.stderr, flush=True))
    if args.threads:
        torch.set_num_threads(args.threads)
    vlm = load_vlm(args.model, args.text_layers, args.dtype, args.device)
    if args.video:
        image = occam.read_video(args.video, **vlm.adapter.video_sampling())
    elif args.frames:
        w, h = (int(x) for x in args.image_size.lower().split("x"))
        image = occam.Video.from_frames([bench_image(w, h, seed=i) for i in range(args.frames)], fps=1.0)
    elif args.image:
        image = open_image(args.image)
    else:
        w, h = (int(x) for x in args.image_size.lower().split("x"))
        image = bench_image(w, h)
    if log:
        log(f"loaded {vlm.name}; calibrating occam to retention {args.retention}")
    fastv_k = fastv_layer_at(vlm.num_layers, full_depth(args.model, vlm), args.fastv_layer)
    variants = make_variants(vlm, image, args.question, args.methods, args.retention, fastv_k, args.stage2_layer)
    hf = hf_forward_times(vlm, image, args.question, args.reps, args.warmup)
    traces, partner, memory = run_rounds(vlm, image, args.question, variants, args.reps, args.warmup,
                                         args.max_new_tokens, log)
    none = summarize(t.timings["vision_s"] + t.timings["prefill_s"] for t in traces[FULL])
    setup = {"command": "python -m occam.bench speed " + " ".join(sys.argv[1:] if argv is None else argv),
             "question": args.question, "reps": args.reps, "warmup": args.warmup,
             "max_new_tokens": args.max_new_tokens, "fastv_layer": fastv_k, "fastv_layer_full_depth": args.fastv_layer,
             "retentions": args.retention, "hf_forward_s": hf, "none_vision_prefill_s": none,
             "none_over_hf": none["median"] / hf["median"],
             "roofline": roofline_device(vlm.adapter.device, args.peak_tflops, args.mem_bandwidth)}
    report = build_report(vlm, variants, traces, partner, memory, setup)
    report["frames"] = len(image) if isinstance(image, occam.Video) else None
    return report


#: dense bf16/fp16 peak (TFLOP/s) and memory bandwidth (GB/s) from the vendors' spec sheets (SXM parts)
KNOWN_DEVICES = {"H200": (989.0, 4800.0), "H100": (989.0, 3350.0), "A100": (312.0, 2039.0)}


def roofline_device(device: torch.device, peak_tflops: float | None, bandwidth: float | None) -> dict | None:
    """Peak FLOP/s and bandwidth for the roofline ideal: as given, else a known GPU's spec sheet, else None."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    if peak_tflops and bandwidth:
        return {"device": name, "peak_tflops": peak_tflops, "bandwidth_gbs": bandwidth, "source": "given"}
    spec = next((v for k, v in KNOWN_DEVICES.items() if k in name), None)
    if spec is None:
        return None
    return {"device": name, "peak_tflops": spec[0], "bandwidth_gbs": spec[1], "source": "spec sheet"}


def full_depth(model: str, vlm: occam.VLM) -> int:
    """Decoder layers of the model before any --text-layers cut."""
    if model in archs.ARCH_NAMES:
        return archs.config_for(model).get_text_config().num_hidden_layers
    return getattr(vlm.adapter.lm.config, "occam_full_depth", vlm.num_layers)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    report = run(args, argv)
    md = markdown(report)
    out = Path(args.out) if args.out else default_out(args.model, args.text_layers)
    write_report(out, md, report)
    print(md)
    print(f"written: {out.with_suffix('.md')} and {out.with_suffix('.json')}")
    return report


if __name__ == "__main__":
    main()
