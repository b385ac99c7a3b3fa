"""``python -m occam.bench table RESULTS...``: lmms-eval results -> a paper-style table (method x benchmark).

Reads lmms-eval ``*_results.json`` files (or folders holding them) of ``--model occam`` runs: one row per
run (its ``label`` model arg, else the method and its non-default knobs), one column per task; each cell
is the task's score and, in brackets, its ratio to the ``method=none`` run of the same model. The
retention and prefill-FLOPs columns are the means over tasks of the per-sample trace means that the
model logged (``avg_occam_retention@<task>`` in the results' ``throughput`` block). Writes <out>.md and <out>.json.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from occam.lmms import metric_key
from occam.methods import FULL
from occam.lmms.args import label, parse

from .common import md_table, write_report

TRACE_MEANS = ("retention", "final", "flops_ratio", "skipped")  # per-task means the occam model logs


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m occam.bench table", description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", help="lmms-eval results JSON files or folders searched for *_results.json")
    p.add_argument("--metric", action="append", default=[], metavar="TASK=METRIC",
                   help="score to report for a task (default: the task's first metric, e.g. exact_match)")
    p.add_argument("--out", default="bench_results/lmms_table", help="output path without extension")
    return p.parse_args(argv)


def result_files(paths: list[str]) -> list[Path]:
    files = []
    for p in map(Path, paths):
        found = sorted(p.rglob("*_results.json")) if p.is_dir() else [p]
        if not found:
            raise FileNotFoundError(f"No *_results.json under {p}: pass lmms-eval's --output_path folder or files.")
        files += found
    return files


def score(task_results: dict, metric: str | None) -> tuple[str, float] | None:
    """(metric name, value) of one task's results: ``metric`` or the first numeric non-stderr metric."""
    found = {key.split(",")[0]: float(value) for key, value in task_results.items()
             if "_stderr" not in key and isinstance(value, (int, float)) and not isinstance(value, bool)}
    if metric is not None and metric not in found:
        raise ValueError(f"--metric {metric!r} is not in the results: accepted {', '.join(found) or 'none'}.")
    name = metric or next(iter(found), None)
    return None if name is None else (name, found[name])


def run_row(results: dict, metrics: dict[str, str]) -> dict:
    """One run: model, label, per-task scores and trace means."""
    if results["config"].get("model") != "occam":
        raise ValueError(f"Not a --model occam run (model {results['config'].get('model')!r}): the table reads "
                         f"occam's per-task trace means, which other lmms-eval models do not log.")
    args = parse(results["config"]["model_args"])
    thr = results.get("throughput", {})
    tasks = {}
    for task, res in results["results"].items():
        found = score(res, metrics.get(task))
        if found is None:
            continue
        tasks[task] = {"metric": found[0], "score": found[1],
                       "n": results.get("n-samples", {}).get(task, {}).get("effective"),
                       **{k: thr.get("avg_" + metric_key(k, task)) for k in TRACE_MEANS}}
    return {"model": args.get("pretrained", "toy"), "label": label(args), "method": args.get("method", "occam"),
            "tasks": tasks}


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.mean(values) if values else None


def build(rows: list[dict]) -> dict:
    """Add relative scores (vs the model's ``none`` run) and row means."""
    for row in rows:
        base = next((r for r in rows if r["model"] == row["model"] and r["method"] == FULL), None)
        for task, t in row["tasks"].items():
            ref = base["tasks"].get(task) if base else None
            t["relative"] = t["score"] / ref["score"] if ref and ref["score"] else None
        ts = row["tasks"].values()
        row.update(avg_relative=_mean(t["relative"] for t in ts), avg_retention=_mean(t["retention"] for t in ts),
                   avg_flops_ratio=_mean(t["flops_ratio"] for t in ts))
    rows.sort(key=lambda r: (r["model"], r["method"] != FULL))
    return {"rows": rows, "tasks": list(dict.fromkeys(t for r in rows for t in r["tasks"]))}


def _f(x, fmt="{:.3f}") -> str:
    return "–" if x is None else fmt.format(x)


def markdown(table: dict) -> str:
    tasks = table["tasks"]
    metric = {t: next(r["tasks"][t]["metric"] for r in table["rows"] if t in r["tasks"]) for t in tasks}
    rows = [[r["model"], r["label"], _f(r["avg_retention"]), _f(r["avg_flops_ratio"]),
             *(f"{_f(r['tasks'][t]['score'])} ({_f(r['tasks'][t]['relative'], '{:.1%}')})" if t in r["tasks"] else "–"
               for t in tasks), _f(r["avg_relative"], "{:.1%}")] for r in table["rows"]]
    head = ["model", "method", "avg retention", "prefill FLOPs / full", *(f"{t} ({metric[t]})" for t in tasks),
            "avg relative"]
    return md_table(head, rows) + "\n"


def main(argv=None) -> dict:
    args = parse_args(argv)
    metrics = dict(m.split("=", 1) for m in args.metric)
    table = build([run_row(json.loads(f.read_text()), metrics) for f in result_files(args.results)])
    out = Path(args.out)
    md = markdown(table)
    write_report(out, md, table)
    print(md)
    return table


def cli() -> int:
    """Console script ``occam-table``."""
    main()
    return 0
