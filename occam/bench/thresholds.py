"""``python -m occam.bench thresholds``: recommended alpha / beta per target retention, written beside a model.

For each target average retention t, ``vlm.calibrate(samples, t)`` bisects alpha (Stage I) and beta
(Stage II) on a named calibration set; the retention those thresholds give on that set is measured
again and recorded. The result goes to ``<model folder>/occam_thresholds.json`` (see
``occam.recommended``), which ``occam.load`` attaches as ``vlm.recommended`` and the app uses.

Calibration sets: ``toy-world`` (train-split samples of the synthetic world the toy model was trained
on, drawn exactly as the accuracy benchmark draws its calibration samples).
"""
from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import torch

import occam
from occam import recommended

from .accuracy import calibration_samples
from .common import load_vlm

CALIBRATION_SETS = ("toy-world",)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m occam.bench thresholds", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="toy", help="'toy' (default) or a local model folder")
    p.add_argument("--targets", type=float, nargs="+", default=[0.05, 0.11, 0.25, 0.5],
                   help="target average retentions in (0, 1]")
    p.add_argument("--calib", type=int, default=200, help="calibration samples")
    p.add_argument("--calib-set", default="toy-world", choices=CALIBRATION_SETS)
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration draw (as in the accuracy benchmark)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="output file (default: occam_thresholds.json in the model folder)")
    args = p.parse_args(argv)
    bad = [t for t in args.targets if not 0 < t <= 1]
    if bad:
        p.error(f"--targets {bad} invalid: accepted numbers in (0, 1]")
    if args.calib < 1:
        p.error("--calib must be >= 1")
    return args


def calibrate_targets(vlm, samples: list, targets: list[float], base: occam.OccamConfig | None = None,
                      log=print) -> list[recommended.Entry]:
    """One entry per target: calibrated alpha / beta and the average retention they give on ``samples``."""
    base = base or occam.OccamConfig(method="occam")
    out = []
    for t in sorted(set(targets)):
        t0 = time.perf_counter()
        cfg = vlm.calibrate(samples, t, config=base, tol=0.005)
        kept = [vlm.generate(img, q, cfg, max_new_tokens=0).trace.counts["retention"] for img, q in samples]
        measured = sum(kept) / len(kept)
        out.append(recommended.Entry(target=t, alpha=float(f"{cfg.alpha:.6g}"), beta=float(f"{cfg.beta:.6g}"),
                                     measured_retention=round(measured, 4)))
        log(f"  target {t:.3f}: alpha {cfg.alpha:.4g} beta {cfg.beta:.4g} -> measured retention {measured:.4f} "
            f"({time.perf_counter() - t0:.1f} s)")
    return out


def run(args, argv=None) -> tuple[recommended.Recommended, Path]:
    torch.set_num_threads(args.threads)
    vlm = load_vlm(args.model)
    folder = recommended.model_folder(args.model)
    if args.out is None and folder is None:
        raise SystemExit(f"No local folder for model {args.model!r}: give --out PATH.")
    out = Path(args.out) if args.out else folder / recommended.FILENAME
    samples, name = calibration_samples(args.calib, args.seed)
    base = occam.OccamConfig(method="occam")
    print(f"calibrating {args.model} on {name} ...", flush=True)
    t0 = time.perf_counter()
    entries = calibrate_targets(vlm, samples, args.targets, base)
    knobs = {k: v for k, v in base.to_dict().items() if k not in ("alpha", "beta")}
    cmd = "python -m occam.bench thresholds " + " ".join(sys.argv[2:] if argv is None else argv)
    rec = recommended.Recommended(
        targets=tuple(entries), model=args.model, base=knobs,
        calibration={"set": name, "kind": args.calib_set, "n": args.calib, "seed": args.seed,
                     "method": "occam.calibrate (bisection of log alpha with Stage II off, then log beta)",
                     "measured_retention": "mean retention of the thresholds on the calibration set itself"},
        extra={"created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
               "command": cmd.strip(), "wall_s": round(time.perf_counter() - t0, 1)})
    return rec, recommended.write(rec, out)


def main(argv=None):
    args = parse_args(argv)
    rec, path = run(args, argv)
    print(f"wrote {path}")
    return rec
