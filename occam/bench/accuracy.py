"""``python -m occam.bench accuracy``: accuracy vs AVERAGE retention on the toy world's held-out split.

For each retention level, the fixed-budget methods (topk, fastv, visionzip, random) keep that share of
the visual tokens of every input; the adaptive ones (occam and its ablations) get alpha / beta from
``calibrate()`` on separate calibration samples (train split), so that their AVERAGE retention matches,
while each input keeps as many tokens as its evidence warrants. Reported: accuracy, accuracy relative
to the full model, mean and spread of kept tokens, and how kept tokens follow scene complexity.
Writes <out>.md, <out>.json and <out>.png.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

import occam
from occam.toy import world

from .common import load_vlm, md_table

ADAPTIVE = {
    "occam": {},
    "occam-stage1-only": {"stage2": False},
    "occam-stage2-only": {"stage1": False},
    "occam-mean-ref": {"reference": "mean"},
}
FIXED = ("topk", "fastv", "visionzip", "random")
ALL_METHODS = tuple(ADAPTIVE) + FIXED


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m occam.bench accuracy", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="toy", help="the toy model (default) or a folder of a model trained on the world")
    p.add_argument("--n", type=int, default=500, help="held-out samples (seeded)")
    p.add_argument("--calib", type=int, default=200, help="calibration samples (train split) for the adaptive methods")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--retentions", type=float, nargs="+", default=[0.5, 0.25, 0.11, 0.05])
    p.add_argument("--methods", nargs="+", default=list(ALL_METHODS), choices=ALL_METHODS)
    p.add_argument("--threads", type=int, default=1, help="torch threads (the toy model is latency-bound)")
    p.add_argument("--out", default="bench_results/accuracy_toy", help="output path without extension")
    return p.parse_args(argv)


def calibration_samples(n: int, seed: int) -> tuple[list, str]:
    """The calibration set of the adaptive methods: ``n`` toy-world train-split samples drawn with
    seed ``seed + 7`` (separate from the held-out questions), as (image, question) pairs, and its name."""
    pairs = [(s.image, s.question) for s in world.dataset("train", n, seed=seed + 7)]
    return pairs, f"toy-world train split, n={n}, world.dataset('train', {n}, seed={seed + 7})"


def config_for(vlm, method: str, retention: float, calib: list) -> occam.OccamConfig:
    if method in FIXED:
        return occam.OccamConfig(method=method, retention=retention)
    base = occam.OccamConfig(method="occam", **ADAPTIVE[method])
    return vlm.calibrate(calib, retention, base, tol=0.01)


def evaluate(vlm, samples, cfg: occam.OccamConfig) -> list[dict]:
    rows = []
    for s in samples:
        res = vlm.generate(s.image, s.question, cfg, max_new_tokens=3)
        rows.append({"qtype": s.qtype, "correct": res.text.strip().lower() == s.answer,
                     "kept": res.trace.counts["final"], "visual": res.trace.counts["visual"],
                     **s.scene.complexity})
    return rows


def pearson(x, y) -> float | None:
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.std() == 0 or y.std() == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def summarize(rows: list[dict], full_acc: float | None) -> dict:
    kept = [r["kept"] for r in rows]
    acc = sum(r["correct"] for r in rows) / len(rows)
    per_type = {t: _acc([r for r in rows if r["qtype"] == t]) for t in world.QTYPES}
    by_bg = {b: statistics.mean([r["kept"] for r in rows if r["background"] == b] or [float("nan")])
             for b in world.BACKGROUNDS}
    return {"accuracy": acc, "relative": acc / full_acc if full_acc else None, "per_type": per_type,
            "kept_mean": statistics.mean(kept), "kept_std": statistics.pstdev(kept),
            "retention": statistics.mean(r["kept"] / r["visual"] for r in rows),
            "corr_kept_objects": pearson(kept, [r["n_objects"] for r in rows]),
            "corr_kept_area": pearson(kept, [r["object_area_frac"] for r in rows]),
            "kept_by_background": by_bg}


def _acc(rows):
    return sum(r["correct"] for r in rows) / len(rows) if rows else None


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    vlm = load_vlm(args.model)
    samples = world.dataset("heldout", args.n, seed=args.seed)
    calib, _ = calibration_samples(args.calib, args.seed)
    full = summarize(evaluate(vlm, samples, occam.OccamConfig(method="none")), None)
    results = []
    for r in args.retentions:
        for m in args.methods:
            cfg = config_for(vlm, m, r, calib)
            stats = summarize(evaluate(vlm, samples, cfg), full["accuracy"])
            results.append({"method": m, "target": r, "alpha": cfg.alpha, "beta": cfg.beta, **stats})
            print(f"  target {r:.2f} {m:<18} retention {stats['retention']:.3f} acc {stats['accuracy']:.3f}",
                  flush=True)
    return {"model": args.model, "n": args.n, "calib": args.calib, "seed": args.seed,
            "num_visual": vlm.generate(samples[0].image, samples[0].question,
                                       occam.OccamConfig(method="none"), max_new_tokens=0).trace.num_visual,
            "full": full, "results": results, "wall_s": round(time.perf_counter() - t0, 1)}


def _f(x, fmt="{:.3f}"):
    return "–" if x is None or (isinstance(x, float) and x != x) else fmt.format(x)


def markdown(rep: dict) -> str:
    full = rep["full"]
    head = (f"Model `{rep['model']}`, {rep['n']} held-out questions (seed {rep['seed']}), "
            f"{rep['num_visual']} visual tokens per image; adaptive methods calibrated on {rep['calib']} "
            f"train-split samples.\n\n")
    types = md_table(["question type", *world.QTYPES, "overall"],
                     [["full model accuracy", *(_f(full["per_type"][t]) for t in world.QTYPES),
                       _f(full["accuracy"])]])
    rows = [[_f(r["target"], "{:.2f}"), r["method"], _f(r["retention"]), _f(r["accuracy"]), _f(r["relative"]),
             f"{r['kept_mean']:.1f} ± {r['kept_std']:.1f}", _f(r["corr_kept_objects"], "{:+.2f}"),
             " / ".join(_f(r["kept_by_background"][b], "{:.1f}") for b in world.BACKGROUNDS)]
            for r in rep["results"]]
    table = md_table(["target", "method", "avg retention", "accuracy", "relative", "kept tokens (mean ± sd)",
                      "r(kept, #objects)", "kept by background (" + " / ".join(world.BACKGROUNDS) + ")"], rows)
    return head + types + "\n\n" + table + "\n"


def plot(rep: dict, path: Path, size=(900, 560)) -> None:
    """Accuracy vs average retention, one line per method (Pillow only)."""
    w, h = size
    left, right, top, bottom = 70, 200, 30, 60
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    rets = sorted({r["retention"] for r in rep["results"]} | {1.0})
    xmin, xmax = np.log10(min(rets) * 0.8), 0.0
    X = lambda v: left + (np.log10(v) - xmin) / (xmax - xmin) * (w - left - right)  # noqa: E731
    Y = lambda a: top + (1 - a) * (h - top - bottom)  # noqa: E731
    d.rectangle([left, top, w - right, h - bottom], outline="black")
    for a in np.linspace(0, 1, 6):
        d.line([left, Y(a), w - right, Y(a)], fill=(225, 225, 225))
        d.text((left - 40, Y(a) - 6), f"{a:.1f}", fill="black")
    for v in (0.05, 0.1, 0.25, 0.5, 1.0):
        if np.log10(v) >= xmin:
            d.text((X(v) - 12, h - bottom + 8), f"{v:g}", fill="black")
    d.text(((w - right + left) / 2 - 90, h - 28), "average retention (log scale)", fill="black")
    d.text((8, top - 22), "accuracy on the held-out questions", fill="black")
    full_y = Y(rep["full"]["accuracy"])
    for x0 in range(left, w - right, 8):  # the full model: a dashed black line
        d.line([x0, full_y, min(x0 + 4, w - right), full_y], fill="black", width=1)
    palette = [(214, 39, 40), (255, 127, 14), (188, 189, 34), (148, 103, 189), (31, 119, 180), (44, 160, 44),
               (23, 190, 207), (127, 127, 127), (140, 86, 75)]
    methods = list(dict.fromkeys(r["method"] for r in rep["results"]))
    for i, m in enumerate(methods):
        pts = sorted((r["retention"], r["accuracy"]) for r in rep["results"] if r["method"] == m)
        xy = [(X(x), Y(y)) for x, y in pts]
        color = palette[i % len(palette)]
        if len(xy) > 1:
            d.line(xy, fill=color, width=3 if m == "occam" else 2)
        for x, y in xy:
            d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)
        d.line([w - right + 15, top + 10 + 20 * i, w - right + 40, top + 10 + 20 * i], fill=color, width=3)
        d.text((w - right + 45, top + 4 + 20 * i), m, fill="black")
    y = top + 10 + 20 * len(methods)
    for x0 in (w - right + 15, w - right + 24, w - right + 33):
        d.line([x0, y, x0 + 5, y], fill="black", width=1)
    d.text((w - right + 45, y - 6), f"full model {rep['full']['accuracy']:.3f}", fill="black")
    img.save(path)


def main(argv=None) -> dict:
    args = parse_args(argv)
    rep = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    md = markdown(rep)
    out.with_suffix(".md").write_text(md)
    out.with_suffix(".json").write_text(json.dumps(rep, indent=1))
    plot(rep, out.with_suffix(".png"))
    print(md)
    return rep
