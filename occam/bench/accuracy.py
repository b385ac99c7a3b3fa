"""``python -m occam.bench accuracy``: accuracy vs AVERAGE retention and prefill compute on the toy world's
held-out split, over several question seeds, with 95% intervals and paired tests.

For each retention level, the fixed-budget methods (topk, fastv, visionzip, random) keep that share of
the visual tokens of every input; the adaptive ones (occam, its ablations and knob variants) get alpha /
beta from ``calibrate()`` on separate calibration samples (train split, per seed), so that their AVERAGE
retention matches, while each input keeps as many tokens as its evidence warrants. Reported per row:
average retention, prefill FLOPs and token-layers relative to the full model (FastV and Stage II keep
every token before layer K, so equal retention is not equal compute), accuracy pooled over the seeds
with a Wilson 95% interval, per-seed accuracy, kept-token spread and how it follows scene complexity.
Paired tests: exact McNemar of ``--reference`` (occam) against every other method at each target, on the
same questions (all seeds pooled), Holm-corrected over all the tests made. Writes <out>.md, .json, .png.
``--from`` re-renders saved runs (merged when several); ``--pair`` adds paired tests across rows (e.g. at
matched compute).
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
from occam import budget
from occam.methods import FIXED_BUDGET_METHODS
from occam.toy import world

from . import stats
from .common import load_vlm, md_table, write_report

ADAPTIVE = {
    "occam": {},
    "occam-stage1-only": {"stage2": False},
    "occam-stage2-only": {"stage1": False},
    "occam-mean-ref": {"reference": "mean"},
}
KNOBS = {  # docs/method.md section 8: variants measured against the default, not in the default run
    "occam-split0.25": {"stage_split": 0.25},
    "occam-split0.75": {"stage_split": 0.75},
    "occam-keepreg-all": {"keep_registers": "all"},
    "occam-keepreg-none": {"keep_registers": "none"},
}
DEFAULT_METHODS = tuple(ADAPTIVE) + FIXED_BUDGET_METHODS
ALL_METHODS = DEFAULT_METHODS + tuple(KNOBS)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m occam.bench accuracy", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="toy", help="the toy model (default) or a folder of a model trained on the world")
    p.add_argument("--n", type=int, default=500, help="held-out questions per seed")
    p.add_argument("--calib", type=int, default=200, help="calibration samples (train split) for the adaptive methods")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="question seeds (pooled for the tests)")
    p.add_argument("--retentions", type=float, nargs="+", default=[0.5, 0.25, 0.11, 0.05])
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=ALL_METHODS)
    p.add_argument("--reference", nargs="+", default=["occam"], choices=ALL_METHODS,
                   help="method(s) every other one is tested against (paired, same questions)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the toy model is latency-bound)")
    p.add_argument("--out", default="bench_results/accuracy_toy", help="output path without extension")
    p.add_argument("--from", dest="source", nargs="+", default=None, metavar="JSON",
                   help="saved <out>.json run(s) on the same questions: merge and re-render them (tests Holm-corrected "
                        "again over all), instead of running the benchmark")
    p.add_argument("--pair", nargs=2, action="append", default=[], metavar=("TARGET:METHOD", "TARGET:METHOD"),
                   help="an extra paired test across rows, e.g. 0.25:occam 0.11:occam-split0.25 (compute-matched "
                        "comparisons); repeatable, Holm-corrected among themselves")
    args = p.parse_args(argv)
    missing = [m for m in args.reference if m not in args.methods]
    if missing:
        p.error(f"--reference {' '.join(missing)}: each reference must be one of the --methods run.")
    return args


def calibration_samples(n: int, seed: int) -> tuple[list, str]:
    """The calibration set of the adaptive methods: ``n`` toy-world train-split samples drawn with
    seed ``seed + 7`` (separate from the held-out questions), as (image, question) pairs, and its name."""
    pairs = [(s.image, s.question) for s in world.dataset("train", n, seed=seed + 7)]
    return pairs, f"toy-world train split, n={n}, world.dataset('train', {n}, seed={seed + 7})"


def config_for(vlm, method: str, retention: float, calib: list) -> occam.OccamConfig:
    """``method`` (a method, or a knob variant of occam) at ``retention``: calibrated where it is thresholded."""
    variant = {**ADAPTIVE, **KNOBS}.get(method)
    base = occam.OccamConfig(method=method) if variant is None else occam.OccamConfig(method="occam", **variant)
    return budget.for_target(vlm, base, retention, "calibrated", calib, tol=0.01).config


def evaluate(vlm, samples, cfg: occam.OccamConfig) -> list[dict]:
    """One row per question: correctness, kept tokens, prefill compute relative to the full model."""
    rows = []
    for s in samples:
        res = vlm.generate(s.image, s.question, cfg, max_new_tokens=3)
        tr = res.trace
        per_layer = tr.sequence["per_layer"]
        rows.append({"qtype": s.qtype, "correct": res.text.strip().lower() == s.answer,
                     "kept": tr.counts["final"], "visual": tr.counts["visual"],
                     "flops_rel": tr.flops["prefill"] / tr.flops["prefill_full"],
                     "token_layers_rel": sum(per_layer) / (tr.sequence["prompt"] * len(per_layer)),
                     "no_content": bool(tr.flags.get("no_content")), **s.scene.complexity})
    return rows


def pearson(x, y) -> float | None:
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.std() == 0 or y.std() == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def _acc(rows):
    return sum(r["correct"] for r in rows) / len(rows) if rows else None


def summarize(rows: list[dict], full_acc: float | None) -> dict:
    """Accuracy (with its Wilson 95% interval), compute, and kept-token statistics of pooled rows."""
    kept = [r["kept"] for r in rows]
    right = sum(r["correct"] for r in rows)
    acc = right / len(rows)
    by_bg = {b: statistics.mean([r["kept"] for r in rows if r["background"] == b] or [float("nan")])
             for b in world.BACKGROUNDS}
    return {"accuracy": acc, "ci95": stats.wilson(right, len(rows)), "n": len(rows),
            "relative": acc / full_acc if full_acc else None,
            "per_type": {t: _acc([r for r in rows if r["qtype"] == t]) for t in world.QTYPES},
            "kept_mean": statistics.mean(kept), "kept_std": statistics.pstdev(kept),
            "retention": statistics.mean(r["kept"] / r["visual"] for r in rows),
            "flops_rel": statistics.mean(r["flops_rel"] for r in rows),
            "token_layers_rel": statistics.mean(r["token_layers_rel"] for r in rows),
            "no_content": statistics.mean(r["no_content"] for r in rows),
            "corr_kept_objects": pearson(kept, [r["n_objects"] for r in rows]),
            "corr_kept_area": pearson(kept, [r["object_area_frac"] for r in rows]),
            "kept_by_background": by_bg}


def outcomes_of(row: dict) -> list[bool]:
    """Per-question correctness of a result row, all seeds concatenated (the pairing order of every test)."""
    return [c == "1" for c in "".join(row["correct"])]


def paired_tests(outcomes: dict, references: list[str], level: float = 0.05) -> list[dict]:
    """Exact McNemar of each reference against every other method at each target, Holm-corrected together.

    outcomes: {(target, method): [correct per question, all seeds concatenated in the same order]}.
    A pair of references is tested once.
    """
    tests = []
    for i, ref in enumerate(references):
        for (target, method), correct in outcomes.items():
            if method == ref or method in references[:i] or (target, ref) not in outcomes:
                continue
            only_ref, only_other = stats.discordant(outcomes[(target, ref)], correct)
            tests.append({"target": target, "reference": ref, "method": method, "only_reference": only_ref,
                          "only_method": only_other, "p": stats.mcnemar_exact(only_ref, only_other)})
    for t, p_holm in zip(tests, stats.holm([t["p"] for t in tests])):
        t["p_holm"] = p_holm
        t["verdict"] = stats.verdict(t["only_reference"], t["only_method"], p_holm, level)
    return tests


def pair_tests(rep: dict, pairs: list[list[str]], level: float = 0.05) -> list[dict]:
    """Paired tests between any two rows of a report ("target:method" each), on their shared questions."""
    rows = {(r["target"], r["method"]): r for r in rep["results"]}
    tests = []
    for spec in pairs:
        keys = []
        for item in spec:
            target, _, method = item.partition(":")
            key = (float(target), method) if target.replace(".", "", 1).isdigit() else None
            if key not in rows:
                raise ValueError(f"--pair {item}: no such row; rows are "
                                 + ", ".join(f"{t:g}:{m}" for t, m in rows) + ".")
            keys.append(key)
        a, b = (outcomes_of(rows[k]) for k in keys)
        only_a, only_b = stats.discordant(a, b)
        tests.append({"first": spec[0], "second": spec[1], "only_first": only_a, "only_second": only_b,
                      "flops_rel": [rows[k]["flops_rel"] for k in keys],
                      "accuracy": [rows[k]["accuracy"] for k in keys], "p": stats.mcnemar_exact(only_a, only_b)})
    for t, p_holm in zip(tests, stats.holm([t["p"] for t in tests])):
        t["p_holm"], t["verdict"] = p_holm, stats.verdict(t["only_first"], t["only_second"], p_holm, level)
    return tests


def merge(reports: list[dict], level: float = 0.05) -> dict:
    """Several saved runs on the same questions (model, n, seeds, calib) as one report; Holm over all their tests."""
    same = ("model", "n", "seeds", "calib")
    first = reports[0]
    for rep in reports[1:]:
        if any(rep[k] != first[k] for k in same) or rep["full"]["per_seed"] != first["full"]["per_seed"]:
            raise ValueError("--from: the runs must share the model, --n, --seeds and --calib (the same questions).")
    by_target = lambda row: -row["target"]  # noqa: E731 -- stable: keeps the method order within a target
    merged = {**first, "results": sorted((r for rep in reports for r in rep["results"]), key=by_target),
              "tests": sorted((dict(t) for rep in reports for t in rep["tests"]), key=by_target),
              "wall_s": sum(rep["wall_s"] for rep in reports)}
    for t, p_holm in zip(merged["tests"], stats.holm([t["p"] for t in merged["tests"]])):
        t["p_holm"], t["verdict"] = p_holm, stats.verdict(t["only_reference"], t["only_method"], p_holm, level)
    merged.pop("pair_tests", None)
    return merged


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    vlm = load_vlm(args.model)
    full_rows, rows, params = [], {}, {}
    for seed in args.seeds:
        samples = world.dataset("heldout", args.n, seed=seed)
        calib, _ = calibration_samples(args.calib, seed)
        full_rows.append(evaluate(vlm, samples, occam.OccamConfig(method="none")))
        for r in args.retentions:
            for m in args.methods:
                cfg = config_for(vlm, m, r, calib)
                rows.setdefault((r, m), []).append(evaluate(vlm, samples, cfg))
                params.setdefault((r, m), []).append({"alpha": cfg.alpha, "beta": cfg.beta})
                got = rows[(r, m)][-1]
                retention = statistics.mean(x["kept"] / x["visual"] for x in got)
                print(f"  seed {seed} target {r:.2f} {m:<18} retention {retention:.3f} acc {_acc(got):.3f}", flush=True)
    full = summarize(sum(full_rows, []), None)
    full["per_seed"] = [_acc(x) for x in full_rows]
    full["correct"] = ["".join("1" if x["correct"] else "0" for x in rs) for rs in full_rows]
    results = []
    for (r, m), per_seed in rows.items():
        pooled = sum(per_seed, [])
        results.append({"method": m, "target": r, "params": params[(r, m)], **summarize(pooled, full["accuracy"]),
                        "per_seed": [_acc(x) for x in per_seed],
                        "correct": ["".join("1" if x["correct"] else "0" for x in rs) for rs in per_seed]})
    outcomes = {(r["target"], r["method"]): outcomes_of(r) for r in results}
    return {"model": args.model, "n": args.n, "seeds": args.seeds, "calib": args.calib,
            "num_visual": full_rows[0][0]["visual"], "full": full, "results": results,
            "tests": paired_tests(outcomes, args.reference), "wall_s": round(time.perf_counter() - t0, 1)}


def _f(x, fmt="{:.3f}"):
    return "–" if x is None or (isinstance(x, float) and x != x) else fmt.format(x)


def _p(p: float) -> str:
    return f"{p:.2g}" if p >= 0.001 else "<0.001"


def markdown(rep: dict) -> str:
    full, seeds = rep["full"], rep["seeds"]
    n_all = rep["n"] * len(seeds)
    head = (f"Model `{rep['model']}`, {rep['n']} held-out questions per seed, seeds {', '.join(map(str, seeds))} "
            f"({n_all} questions pooled), {rep['num_visual']} visual tokens per image; adaptive methods calibrated "
            f"per seed on {rep['calib']} train-split samples. Accuracy: pooled, with a Wilson 95% interval. "
            f"Compute: mean language-model prefill FLOPs (and token-layers, in the JSON) relative to the full "
            f"model on the same prompt (the vision encoder is the same for every method and not counted).\n\n")
    types = md_table(["question type", *world.QTYPES, "overall [95% CI]", "per seed"],
                     [["full model accuracy", *(_f(full["per_type"][t]) for t in world.QTYPES),
                       f"{_f(full['accuracy'])} [{_f(full['ci95'][0])}, {_f(full['ci95'][1])}]",
                       " / ".join(_f(a) for a in full["per_seed"])]])
    rows = [[_f(r["target"], "{:.2f}"), r["method"], _f(r["retention"]), _f(r["flops_rel"]),
             f"{_f(r['accuracy'])} [{_f(r['ci95'][0])}, {_f(r['ci95'][1])}]",
             " / ".join(_f(a) for a in r["per_seed"]), f"{r['kept_mean']:.1f} ± {r['kept_std']:.1f}",
             _f(r["corr_kept_objects"], "{:+.2f}"), _f(100 * r["no_content"], "{:.0f}%"),
             " / ".join(_f(r["kept_by_background"][b], "{:.1f}") for b in world.BACKGROUNDS)]
            for r in rep["results"]]
    table = md_table(["target", "method", "avg retention", "prefill FLOPs (rel.)", "accuracy [95% CI]",
                      "per seed (" + " / ".join(map(str, seeds)) + ")", "kept tokens (mean ± sd)",
                      "r(kept, #objects)", "no content", "kept by background (" + " / ".join(world.BACKGROUNDS) + ")"],
                     rows)
    tests = rep["tests"]
    test_rows = [[_f(t["target"], "{:.2f}"), f"{t['reference']} vs {t['method']}", t["only_reference"],
                  t["only_method"], _p(t["p"]), _p(t["p_holm"]), t["verdict"]] for t in tests]
    paired = (f"\n\nPaired tests ({len(tests)} in all): exact McNemar on the {n_all} shared questions, p-values "
              f"Holm-corrected over all {len(tests)}; the verdict is for the first method named: win / loss where "
              f"the corrected p < 0.05, tie otherwise.\n\n" +
              md_table(["target", "comparison", "only first right", "only second right", "p", "p (Holm)",
                        "verdict"], test_rows)) if tests else ""
    extra = rep.get("pair_tests") or []
    if extra:
        paired += (f"\n\nPaired tests across rows ({len(extra)}, Holm-corrected among themselves), e.g. at matched "
                   f"or lower compute:\n\n" + md_table(
                       ["first", "second", "accuracy", "prefill FLOPs (rel.)", "only first right", "only second right",
                        "p", "p (Holm)", "verdict"],
                       [[t["first"], t["second"], " vs ".join(_f(a) for a in t["accuracy"]),
                         " vs ".join(_f(f) for f in t["flops_rel"]), t["only_first"], t["only_second"], _p(t["p"]),
                         _p(t["p_holm"]), t["verdict"]] for t in extra]))
    return head + types + "\n\n" + table + paired + "\n"


def _panel(d: ImageDraw.ImageDraw, rep: dict, box: tuple, xkey: str, xlabel: str, colors: dict) -> None:
    """One accuracy panel (log x), each point with its 95% interval as a whisker."""
    x0, y0, x1, y1 = box
    xs = [r[xkey] for r in rep["results"]] + [1.0]
    xmin = np.log10(min(xs) * 0.8)
    X = lambda v: x0 + (np.log10(v) - xmin) / -xmin * (x1 - x0)  # noqa: E731
    ymin = min(0.5, np.floor(min(r["ci95"][0] for r in rep["results"]) * 10) / 10)
    Y = lambda a: y0 + (1 - a) / (1 - ymin) * (y1 - y0)  # noqa: E731
    d.rectangle([x0, y0, x1, y1], outline="black")
    for a in np.arange(ymin, 1.0001, 0.1):
        d.line([x0, Y(a), x1, Y(a)], fill=(225, 225, 225))
        d.text((x0 - 30, Y(a) - 6), f"{a:.1f}", fill="black")
    for v in (0.05, 0.1, 0.25, 0.5, 1.0):
        if np.log10(v) >= xmin:
            d.text((X(v) - 12, y1 + 8), f"{v:g}", fill="black")
    d.text(((x0 + x1) / 2 - 4 * len(xlabel) / 2 - 20, y1 + 28), xlabel + " (log scale)", fill="black")
    full_y = Y(rep["full"]["accuracy"])
    for x in range(int(x0), int(x1), 8):  # the full model: a dashed black line
        d.line([x, full_y, min(x + 4, x1), full_y], fill="black", width=1)
    for m, color in colors.items():
        pts = sorted((r[xkey], r["accuracy"], *r["ci95"]) for r in rep["results"] if r["method"] == m)
        xy = [(X(x), Y(y)) for x, y, _, _ in pts]
        if len(xy) > 1:
            d.line(xy, fill=color, width=3 if m in ADAPTIVE else 2)
        for (x, y), (_, _, lo, hi) in zip(xy, pts):
            d.line([x, Y(lo), x, Y(hi)], fill=color, width=1)
            d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)


def plot(rep: dict, path: Path, size=(1400, 560)) -> None:
    """Accuracy vs average retention and vs prefill FLOPs, one line per method, 95% whiskers (Pillow only)."""
    w, h = size
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    palette = [(214, 39, 40), (255, 127, 14), (188, 189, 34), (148, 103, 189), (31, 119, 180), (44, 160, 44),
               (23, 190, 207), (127, 127, 127), (140, 86, 75), (227, 119, 194), (0, 0, 128), (128, 128, 0)]
    methods = list(dict.fromkeys(r["method"] for r in rep["results"]))
    colors = {m: palette[i % len(palette)] for i, m in enumerate(methods)}
    legend, top, bottom, panel_w = 200, 40, 70, (w - 200 - 60 * 2) // 2
    for i, (key, label) in enumerate((("retention", "average retention"),
                                      ("flops_rel", "prefill FLOPs relative to the full model"))):
        left = 50 + i * (panel_w + 60)
        _panel(d, rep, (left, top, left + panel_w, h - bottom), key, label, colors)
    d.text((10, 10), f"accuracy on the held-out questions ({rep['n']} x {len(rep['seeds'])} seeds), "
                     "whiskers: Wilson 95% interval", fill="black")
    lx = w - legend + 10
    for i, m in enumerate(methods):
        d.line([lx, top + 10 + 20 * i, lx + 25, top + 10 + 20 * i], fill=colors[m], width=3)
        d.text((lx + 30, top + 4 + 20 * i), m, fill="black")
    y = top + 10 + 20 * len(methods)
    for x in (lx, lx + 9, lx + 18):
        d.line([x, y, x + 5, y], fill="black", width=1)
    d.text((lx + 30, y - 6), f"full model {rep['full']['accuracy']:.3f}", fill="black")
    img.save(path)


def main(argv=None) -> dict:
    args = parse_args(argv)
    rep = merge([json.loads(Path(f).read_text()) for f in args.source]) if args.source else run(args)
    if args.pair:
        rep["pair_tests"] = pair_tests(rep, args.pair)
    out = Path(args.out)
    md = markdown(rep)
    write_report(out, md, rep)
    plot(rep, out.with_suffix(".png"))
    print(md)
    return rep
