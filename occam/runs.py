"""Runs: a split through the full model and chosen methods at chosen retentions, kept as a folder on disk.

    spec = runs.Spec(n=200, methods=("occam", "topk", "fastv"), retentions=(0.25, 0.11))
    run = runs.execute(spec, "runs/toy", progress=print_fn, cancel=lambda: False)   # resumable
    run = runs.open_run("runs/toy")        # or an lmms-eval --log_samples folder, or an occam.bench accuracy JSON
    runs.aggregate(run), runs.sample_table(run)

A run folder (``FORMAT``):

    manifest.json   the spec, the resolved config of every run key ("none", "occam@0.25", ...), status, times
    samples.jsonl   one line per item: question, reference answer, question type, scene measures, image file
    rows.jsonl      one line per (item, run key): answer, score, kept / visual tokens, prefill FLOPs
    images/         the items' images (PNG)
    traces/         the whole trace of every (item, run key), gzipped JSON: <item>_<key>.json.gz

Work goes in chunks of items (every run key of a chunk in one ``generate_batch`` call); rows are
appended after each chunk, so an interrupted or cancelled run resumes where it stopped (``execute`` on
the same folder and spec). Budgets: fixed-budget methods keep the target share of every input; occam's
alpha / beta come from ``occam.budget.for_target`` ("calibrated": on the calibration samples the
accuracy benchmark uses, so that accuracies equal ``python -m occam.bench accuracy`` on the same items).

Other folders are read as they are (``open_run``): lmms-eval ``--log_samples`` outputs of ``--model occam``
runs with their ``trace_dir`` summaries (no per-token traces there), and ``occam.bench accuracy`` reports
(per-question correctness only). What a source lacks is listed in ``Run.notes``; a folder that is none of
these, or lacks a file it needs, raises ``RunError`` naming what is missing.

Statistics (``aggregate``): accuracy with a Wilson 95% interval (scores of 0 / 1; a percentile bootstrap,
2000 resamples, for fractional scores); Pearson correlations with a Fisher-z 95% interval. Scene content:
the toy's object count and background, and for any image the Canny edge density (share of edge pixels,
model-free, so that it does not depend on the attention it is meant to explain).
"""
from __future__ import annotations

import dataclasses
import gzip
import json
import math
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

FORMAT = "occam-run/1"
FOLDER_KIND = "occam"       # Run.kind of a run folder written here (the only kind with per-token traces)
LMMS_MODEL = "occam"        # lmms-eval's --model name of occam.lmms
MANIFEST, SAMPLES, ROWS, IMAGES, TRACES = "manifest.json", "samples.jsonl", "rows.jsonl", "images", "traces"
FULL = "none"                       # the run key of the full model
BUCKETS = (0.0, 0.1, 0.2, 0.3, 0.5, 1.0001)   # retention buckets of the sample table
Progress = Callable[[float, str], None]


class RunError(ValueError):
    """A folder that is not a run, or a run that lacks a file it needs; the message names what is missing."""


def key_of(method: str, target: float | None) -> str:
    return FULL if target is None else f"{method}@{target:g}"


# -- what to run --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Spec:
    """A run: ``n`` items of a source through the full model and ``methods`` x ``retentions``.

    source "toy": the toy world's ``split`` (seed ``seed``, ``world.dataset``); source "lmms": the test split
    of lmms-eval task ``task`` found under ``include_path``. ``budget``: how occam's alpha / beta are set
    ("calibrated" on ``calib`` calibration samples, "recommended", "manual"; see ``occam.budget``).
    """
    source: str = "toy"
    n: int = 200
    seed: int = 0
    split: str = "heldout"
    methods: tuple = ("occam", "topk", "fastv")
    retentions: tuple = (0.25, 0.11)
    model: str = "toy"
    budget: str = "calibrated"
    calib: int = 200
    max_new_tokens: int = 3
    task: str | None = None
    include_path: str | None = None

    def __post_init__(self):
        from .budget import MODES
        from .methods import PRUNING_METHODS
        object.__setattr__(self, "methods", tuple(self.methods))
        object.__setattr__(self, "retentions", tuple(float(r) for r in self.retentions))
        if self.source not in ("toy", "lmms"):
            raise ValueError(f"source={self.source!r} is invalid: accepted 'toy' or 'lmms'.")
        if self.source == "lmms" and not self.task:
            raise ValueError("source='lmms' needs task=<lmms-eval task name> (and include_path=<its folder>).")
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"n={self.n!r} is invalid: accepted an integer >= 1.")
        bad = [m for m in self.methods if m not in PRUNING_METHODS]
        if bad or not self.methods:
            raise ValueError(f"methods {bad or '(none)'} invalid: accepted some of {', '.join(PRUNING_METHODS)}.")
        if not self.retentions or any(not 0 < r <= 1 for r in self.retentions):
            raise ValueError(f"retentions {list(self.retentions)} invalid: accepted numbers in (0, 1].")
        if self.budget not in MODES:
            raise ValueError(f"budget={self.budget!r} is invalid: accepted one of {', '.join(MODES)}.")
        if self.budget == "calibrated" and self.calib < 1:
            raise ValueError("budget='calibrated' needs calib >= 1 calibration samples.")

    @property
    def keys(self) -> list[tuple[str, str, float | None]]:
        """(run key, method, target) of every run: the full model first."""
        return [(FULL, FULL, None)] + [(key_of(m, t), m, t) for t in self.retentions for m in self.methods]

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "methods": list(self.methods), "retentions": list(self.retentions)}


@dataclass
class Item:
    image: Image.Image
    question: str
    answer: str
    qtype: str | None
    meta: dict = field(default_factory=dict)      # scene measures (toy: n_objects, background, object_area_frac)
    doc: Any = None                                 # the lmms-eval document (scoring)


def edge_density(image: Image.Image) -> float:
    """Share of pixels on a Canny edge (grey, 3x3 Gaussian blur, thresholds 50 / 150): a model-free measure of
    how much there is to see. Chosen over the mean Stage-I evidence because that one is the method's own
    attention, the very thing a correlation with scene content is meant to explain."""
    import cv2
    grey = cv2.GaussianBlur(np.asarray(image.convert("L")), (3, 3), 0)
    return round(float((cv2.Canny(grey, 50, 150) > 0).mean()), 5)


class Source:
    """Items of a spec, how to score an answer, and the calibration samples."""

    def __init__(self, spec: Spec):
        self.spec = spec
        self.task = None
        if spec.source == "lmms":
            from lmms_eval.tasks import TaskManager, get_task_dict
            tasks = get_task_dict([spec.task], TaskManager(include_path=spec.include_path, model_name="occam"))
            self.task = tasks.get(spec.task)
            if self.task is None or isinstance(self.task, (dict, tuple)):
                raise ValueError(f"task={spec.task!r} is not a single lmms-eval task under {spec.include_path}.")

    def items(self) -> list[Item]:
        s = self.spec
        if self.task is None:
            from .toy import world
            return [Item(x.image, x.question, x.answer, x.qtype, dict(x.scene.complexity))
                    for x in world.dataset(s.split, s.n, seed=s.seed)]
        from .lmms.model import single_image
        cfg = self.task.config
        split = cfg.test_split or cfg.validation_split
        docs, out = self.task.dataset[split], []
        for i in range(min(s.n, len(docs))):
            doc = docs[i]
            image, reason = single_image(self.task.doc_to_visual(doc))
            if reason:
                raise ValueError(f"{s.task} doc {i} has {reason}: a run answers one image per question.")
            target = self.task.doc_to_target(doc)
            out.append(Item(image, self.task.doc_to_text(doc).replace("<image>", "").strip(), str(target),
                            category_of(doc), {}, doc))
        return out

    def gen_kwargs(self) -> tuple[int, list[str]]:
        if self.task is None:
            return self.spec.max_new_tokens, []
        g = self.task.config.generation_kwargs or {}
        until = g.get("until") or ["\n\n"]
        return int(g.get("max_new_tokens", self.spec.max_new_tokens)), [until] if isinstance(until, str) else until

    def score(self, item: Item, text: str) -> float:
        """The task's score of an answer (toy: 1 iff strip + lower-case equals the reference, the bench's rule)."""
        if self.task is None:
            from .lmms.toy_task import process_results
            return process_results({"answer": item.answer}, [text])["exact_match"]
        metric = self.task.config.metric_list[0]["metric"]
        return float(self.task.process_results(item.doc, [text])[metric])

    def calibration(self) -> list | None:
        s = self.spec
        if s.budget != "calibrated":
            return None
        if self.task is None:
            from .bench.accuracy import calibration_samples
            return calibration_samples(s.calib, s.seed)[0]
        from .lmms.model import calibration_samples
        return calibration_samples(s.task, None, s.calib, s.seed, s.include_path)[0]


CATEGORY_FIELDS = ("qtype", "question_type", "category", "type", "capability", "l2-category")


def category_of(doc) -> str | None:
    """An lmms-eval document's category, where its docs carry one (the first of ``CATEGORY_FIELDS``)."""
    for k in CATEGORY_FIELDS:
        try:
            v = doc[k]
        except (KeyError, TypeError, IndexError):
            continue
        if isinstance(v, (str, int)):
            return str(v)
    return None


# -- the folder -------------------------------------------------------------------------------------------
def _write_json(path: Path, data) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def _read_jsonl(path: Path) -> list[dict]:
    """The lines of a JSON-lines file; a last line cut short by an interruption is dropped."""
    out = []
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise RunError(f"{path} line {i + 1} is not JSON: the file is damaged.") from None
    return out


def trace_path(folder: Path, sample: int, key: str) -> Path:
    return Path(folder) / TRACES / f"{sample:05d}_{key}.json.gz"


def execute(spec: Spec, folder: str | Path, vlm=None, progress: Progress | None = None,
            cancel: Callable[[], bool] | None = None, chunk: int = 64, save_traces: bool = True) -> "Run":
    """Run ``spec`` into ``folder`` (created, or resumed when it holds the same spec), ``chunk`` requests per
    ``generate_batch`` call. ``cancel()`` is asked between chunks: True stops the run (status "cancelled",
    resumable). Returns the run as ``open_run`` reads it."""
    import occam
    from . import budget

    progress = progress or (lambda *_: None)
    cancel = cancel or (lambda: False)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    mpath = folder / MANIFEST
    manifest = json.loads(mpath.read_text()) if mpath.is_file() else None
    if manifest is not None and manifest.get("spec") != spec.to_dict():
        raise RunError(f"{folder} holds another run ({_describe(manifest.get('spec') or {})}): choose an empty "
                       "folder, or the same settings to resume it.")
    source = Source(spec)
    progress(0.01, "preparing the items ...")
    items = source.items()
    if vlm is None:
        progress(0.02, f"loading {spec.model} ...")
        vlm = occam.load(spec.model)
    if manifest is None:
        manifest = {"format": FORMAT, "kind": FOLDER_KIND, "spec": spec.to_dict(), "model": spec.model,
                    "family": vlm.family, "n_items": len(items), "status": "running", "configs": {},
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "wall_s": 0.0,
                    "question_types": None}
    (folder / IMAGES).mkdir(exist_ok=True)
    (folder / TRACES).mkdir(exist_ok=True)
    if not (folder / SAMPLES).is_file():
        lines = []
        for i, it in enumerate(items):
            name = f"{IMAGES}/{i:05d}.png"
            it.image.save(folder / name)
            lines.append(json.dumps({"sample": i, "question": it.question, "answer": it.answer, "qtype": it.qtype,
                                     **it.meta, "edge_density": edge_density(it.image), "image": name}))
        (folder / SAMPLES).write_text("\n".join(lines) + "\n")
    types = sorted({it.qtype for it in items if it.qtype is not None})
    manifest.update(status="running", question_types=types or None)
    _write_json(mpath, manifest)

    def stopped(status: str) -> "Run":
        manifest.update(status=status, wall_s=round(manifest["wall_s"] + time.perf_counter() - t0, 1))
        _write_json(mpath, manifest)
        return open_run(folder)

    configs = manifest["configs"]
    calib = None
    for k, m, t in spec.keys:                       # resolved once; a resumed run reads them back
        if k in configs:
            continue
        if cancel():
            return stopped("cancelled")
        if t is None:
            cfg = occam.OccamConfig(method=FULL)
        else:
            base = occam.OccamConfig(method=m)
            if calib is None and base.spec.thresholded and spec.budget == "calibrated":
                progress(0.03, "calibration samples ...")
                calib = source.calibration()
            progress(0.04, f"budget of {k} ...")
            cfg = budget.for_target(vlm, base, t, spec.budget, calib, tol=0.01).config
        configs[k] = cfg.to_dict()
        _write_json(mpath, manifest)
    cfgs = {k: occam.OccamConfig(**d) for k, d in configs.items()}
    max_new, until = source.gen_kwargs()
    kept_rows = _read_jsonl(folder / ROWS) if (folder / ROWS).is_file() else []
    (folder / ROWS).write_text("".join(json.dumps(r) + "\n" for r in kept_rows))   # drops a line cut short
    done = {(r["sample"], r["key"]) for r in kept_rows}
    todo = [(i, k) for i in range(len(items)) for k, _, _ in spec.keys if (i, k) not in done]
    total = len(items) * len(spec.keys)
    with open(folder / ROWS, "a") as out:
        for start in range(0, len(todo), chunk):
            if cancel():
                return stopped("cancelled")
            part = todo[start:start + chunk]
            progress(0.05 + 0.95 * (total - len(todo) + start) / total,
                     f"{total - len(todo) + start} of {total} runs ...")
            results = vlm.generate_batch([items[i].image for i, _ in part], [items[i].question for i, _ in part],
                                         [cfgs[k] for _, k in part], max_new_tokens=max_new)
            lines = []
            for (i, k), res in zip(part, results):
                text = res.text
                for stop in until:
                    text = text.split(stop)[0] if stop else text
                tr = res.trace
                if save_traces:
                    with gzip.open(trace_path(folder, i, k), "wt") as f:
                        json.dump(tr.to_dict(), f)
                per_layer = tr.sequence["per_layer"]
                lines.append(json.dumps({
                    "sample": i, "key": k, "text": text, "score": source.score(items[i], text),
                    "kept": tr.counts["final"], "visual": tr.counts["visual"], "retention": tr.counts["retention"],
                    "flops_rel": tr.flops["prefill"] / tr.flops["prefill_full"], "prefill_flops": tr.flops["prefill"],
                    "token_layers_rel": sum(per_layer) / (tr.sequence["prompt"] * len(per_layer))}))
            out.write("\n".join(lines) + "\n")
            out.flush()
    progress(1.0, "done")
    return stopped("complete")


def _describe(spec: dict) -> str:
    return (f"{spec.get('source')} n={spec.get('n')} seed={spec.get('seed')}, methods {spec.get('methods')} at "
            f"{spec.get('retentions')}, budget {spec.get('budget')}")


# -- a run, whatever wrote it -------------------------------------------------------------------------------
@dataclass
class Run:
    """A run as the app and ``aggregate`` read it: samples, one row per (sample, key), where to find more."""
    kind: str                       # FOLDER_KIND (a run folder), "lmms" (lmms-eval outputs), "bench" (accuracy report)
    folder: Path
    manifest: dict
    samples: list[dict]
    rows: list[dict]                # sample, key, text (or None), score, kept, visual, retention, flops_rel
    keys: list[dict]                # key, method, target, label: in display order, the full model first
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.manifest.get("status", "complete") == "complete"

    @property
    def has_traces(self) -> bool:
        return self.kind == FOLDER_KIND

    def trace(self, sample: int, key: str) -> dict | None:
        """The saved per-token trace of (sample, key), or None (not saved by this kind of run, or missing)."""
        if not self.has_traces:
            return None
        p = trace_path(self.folder, sample, key)
        if not p.is_file():
            return None
        with gzip.open(p, "rt") as f:
            return json.load(f)

    def image(self, sample: int) -> Image.Image | None:
        s = self.samples[sample]
        if s.get("image"):
            p = self.folder / s["image"]
            return Image.open(p).convert("RGB") if p.is_file() else None
        make = s.get("_make")
        return make() if make else None


def open_run(path: str | Path) -> Run:
    """Read a run folder, an lmms-eval ``--log_samples`` output folder, or an ``occam.bench accuracy`` JSON."""
    path = Path(path).expanduser()
    if not path.exists():
        raise RunError(f"{path} does not exist.")
    if path.is_file() and path.suffix == ".json":
        return _open_bench(path)
    if path.is_dir() and (path / MANIFEST).is_file():
        return _open_native(path)
    if path.is_dir():
        if list(path.rglob("*_results.json")) or list(path.rglob("*_samples_*.jsonl")):
            return _open_lmms(path)
        reports = [p for p in sorted(path.glob("*.json")) if _is_bench(p)]
        if len(reports) == 1:
            return _open_bench(reports[0])
        if reports:
            raise RunError(f"{path} holds {len(reports)} accuracy reports ({', '.join(p.name for p in reports)}): "
                           "open one of the files.")
    raise RunError(f"{path} is not a run: found no {MANIFEST} (a run made here), no lmms-eval *_results.json with "
                   "*_samples_<task>.jsonl (lmms-eval --log_samples), and no occam.bench accuracy report (.json).")


def _key_list(manifest_keys) -> list[dict]:
    from .methods import get
    out = []
    for k, m, t in manifest_keys:
        out.append({"key": k, "method": m, "target": t, "label": get(m).label if t is None else k})
    return out


def _open_native(folder: Path) -> Run:
    manifest = json.loads((folder / MANIFEST).read_text())
    if manifest.get("format") != FORMAT:
        raise RunError(f"{folder / MANIFEST} is not an OccamToken run manifest (format {manifest.get('format')!r}, "
                       f"expected {FORMAT!r}).")
    missing = [name for name in (SAMPLES,) if not (folder / name).is_file()]
    if missing:
        raise RunError(f"{folder} is a partial run: {', '.join(missing)} is missing (the run stopped before its "
                       "items were written; run it again on this folder to resume).")
    samples = _read_jsonl(folder / SAMPLES)
    rows = _read_jsonl(folder / ROWS) if (folder / ROWS).is_file() else []
    spec = Spec(**{k: tuple(v) if isinstance(v, list) else v for k, v in manifest["spec"].items()})
    keys = _key_list(spec.keys)
    for k in keys:
        k["config"] = manifest.get("configs", {}).get(k["key"])
    notes = []
    expected = len(samples) * len(keys)
    if len(rows) < expected or manifest.get("status") != "complete":
        notes.append(f"Partial run ({manifest.get('status')}): {len(rows)} of {expected} runs done; Run here with "
                     "the same folder and settings resumes it.")
    gone = [s["image"] for s in samples if s.get("image") and not (folder / s["image"]).is_file()]
    if gone:
        notes.append(f"{len(gone)} image file(s) missing, e.g. {gone[0]}: those samples open without their image.")
    return Run(FOLDER_KIND, folder, manifest, samples, rows, keys, notes)


# lmms-eval outputs ------------------------------------------------------------------------------------------
def _open_lmms(folder: Path) -> Run:
    from .bench.table import score
    from .lmms.args import label, parse, split_args

    results = sorted(folder.rglob("*_results.json"))
    if not results:
        raise RunError(f"{folder} has lmms-eval samples but no *_results.json: the lmms-eval run did not finish.")
    runs, notes, tasks = [], [], set()
    for res_file in results:
        res = json.loads(res_file.read_text())
        cfg = res.get("config") or {}
        if cfg.get("model") != LMMS_MODEL:
            raise RunError(f"{res_file} is a --model {cfg.get('model')!r} run: only --model occam runs carry the "
                           "kept-token summaries a run view reads.")
        args = parse(cfg.get("model_args", ""))
        for task, task_res in (res.get("results") or {}).items():
            found = score(task_res, None)
            sfiles = sorted(res_file.parent.glob(f"*_samples_{task}.jsonl"))
            if not sfiles:
                raise RunError(f"{res_file.parent} has no *_samples_{task}.jsonl: run lmms-eval with --log_samples.")
            tasks.add(task)
            runs.append({"file": res_file, "args": args, "task": task, "metric": found[0] if found else None,
                         "reported": found[1] if found else None, "samples": _read_jsonl(sfiles[-1]),
                         "config": res.get("configs", {}).get(task, {})})
    if len(tasks) > 1:
        notes.append(f"Several tasks ({', '.join(sorted(tasks))}): their samples are listed together.")
    samples, index, rows, keys = [], {}, [], []
    for r in runs:
        knobs, other = split_args({k: v for k, v in r["args"].items()})
        method = knobs.get("method", "occam")
        trace_rows, info, why = _lmms_traces(r, folder)
        if why:
            notes.append(why)
        target = (info or {}).get("target_retention") or other.get("target_retention")
        target = None if method == FULL else float(target) if target is not None else \
            (info or {}).get("config", {}).get("retention")
        key = FULL if method == FULL else (r["args"].get("label") or label(r["args"]))
        if any(k["key"] == key for k in keys):
            key = f"{key} ({r['file'].parent.name})"
        keys.append({"key": key, "method": method, "target": target, "label": key, "config": (info or {}).get("config"),
                     "reported": {"metric": r["metric"], "value": r["reported"], "file": str(r["file"])}})
        data = _task_docs(r["config"])
        for s in r["samples"]:
            sid = index.setdefault((r["task"], s["doc_id"]), len(samples))
            if sid == len(samples):
                samples.append(_lmms_sample(sid, r["task"], s, data, r["config"]))
            tr = trace_rows.get(s["doc_id"], {})
            text = s.get("filtered_resps")
            text = text[0] if isinstance(text, list) and text else text
            rows.append({"sample": sid, "key": key, "text": text, "score": float(s.get(r["metric"], 0.0) or 0.0),
                         "kept": tr.get("final"), "visual": tr.get("visual"), "retention": tr.get("retention"),
                         "flops_rel": tr.get("flops_ratio"), "prefill_flops": tr.get("prefill_flops")})
    keys.sort(key=lambda k: (k["method"] != FULL, -(k["target"] or 0), k["key"]))
    if not any(k["method"] == FULL for k in keys):
        notes.append("No method=none run in this folder: 'answer changed' and 'wrong only under pruning' need the "
                     "full model's answers (run lmms-eval with method=none into the same folder).")
    notes.append("lmms-eval runs keep per-sample summaries (kept tokens, FLOPs), not per-token traces: a sample "
                 "opens in the Image tab with its question, and re-runs only when asked.")
    manifest = {"format": "lmms-eval", "kind": "lmms", "status": "complete", "tasks": sorted(tasks),
                "model": next((r["args"].get("pretrained", "toy") for r in runs), None),
                "question_types": sorted({s["qtype"] for s in samples if s.get("qtype")}) or None}
    return Run("lmms", folder, manifest, samples, rows, keys, notes)


def _lmms_traces(r: dict, root: Path) -> tuple[dict, dict | None, str | None]:
    """The trace_dir rows of one lmms-eval run ({doc_id: row}), its run record, or why they are missing."""
    task, named = r["task"], r["args"].get("trace_dir")
    dirs = [Path(named)] if named else []
    dirs += [r["file"].parent.parent / "traces", r["file"].parent / "traces", root / "traces"]
    n = len(r["samples"])
    for d in dirs:
        if not d.is_dir():
            continue
        for run_file in sorted(d.glob("*_run.json"), reverse=True):         # newest first
            trace_file = d / f"{run_file.name[:-len('_run.json')]}_{task}.jsonl"
            if trace_file.is_file():
                rows = {t["doc_id"]: t for t in _read_jsonl(trace_file)}
                if len(rows) == n:
                    return rows, json.loads(run_file.read_text()), None
    return {}, None, (f"{r['file'].name}: no trace_dir summaries for {task} (looked in "
                      f"{', '.join(str(d) for d in dirs[:2])}): kept tokens and FLOPs are unknown for this run.")


def _task_docs(config: dict):
    """The task's test documents when its dataset is a local folder saved with ``datasets`` (else None)."""
    path = config.get("dataset_path")
    if not path or not (config.get("dataset_kwargs") or {}).get("load_from_disk") or not Path(path).is_dir():
        return None
    try:
        import datasets
        return datasets.load_from_disk(path)[config.get("test_split") or "test"]
    except Exception:
        return None


def _lmms_sample(sid: int, task: str, s: dict, data, config: dict) -> dict:
    doc = data[int(s["doc_id"])] if data is not None and int(s["doc_id"]) < len(data) else None
    question = s.get("input")
    question = question if isinstance(question, str) else (doc or {}).get("question")
    out = {"sample": sid, "task": task, "doc_id": s["doc_id"], "question": question, "answer": str(s.get("target")),
           "qtype": category_of(doc) if doc is not None else None}
    if doc is not None:
        visual = next((v for v in doc.values() if hasattr(v, "convert")), None)
        if visual is not None:
            out["edge_density"] = edge_density(visual)
            out["_make"] = lambda v=visual: v.convert("RGB")
    return out


# occam.bench accuracy reports ----------------------------------------------------------------------------
def _is_bench(path: Path) -> bool:
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(d, dict) and {"results", "full", "seeds", "n"} <= set(d)


def _open_bench(path: Path) -> Run:
    try:
        rep = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RunError(f"{path} is not valid JSON ({e.msg}).") from None
    missing = [k for k in ("model", "n", "seeds", "full", "results") if k not in rep]
    if missing:
        raise RunError(f"{path} is not an occam.bench accuracy report: no {', '.join(missing)}.")
    no_correct = [f"{r.get('target')}:{r.get('method')}" for r in rep["results"] if "correct" not in r]
    if no_correct:
        raise RunError(f"{path}: rows {', '.join(no_correct)} have no per-question 'correct' field (re-run the "
                       "benchmark with this version to record it).")
    from .toy import world
    n, seeds = rep["n"], rep["seeds"]
    samples = []
    for si, seed in enumerate(seeds):
        for q in range(n):
            x = world.make_sample(world.sample_seed("heldout", seed, q))
            samples.append({"sample": si * n + q, "seed": seed, "index": q, "question": x.question,
                            "answer": x.answer, "qtype": x.qtype, **x.scene.complexity,
                            "_make": lambda s=world.sample_seed("heldout", seed, q): world.make_sample(s).image})
    keys, rows = [{"key": FULL, "method": FULL, "target": None, "label": "Full model"}], []
    full_correct = rep["full"].get("correct")
    if full_correct:
        rows += [{"sample": i, "key": FULL, "text": None, "score": float(c == "1"), "kept": rep["num_visual"],
                  "visual": rep["num_visual"], "retention": 1.0, "flops_rel": 1.0}
                 for i, c in enumerate("".join(full_correct))]
    for r in rep["results"]:
        k = key_of(r["method"], r["target"])
        keys.append({"key": k, "method": r["method"], "target": r["target"], "label": k,
                     "reported": {"metric": "accuracy", "value": r["accuracy"], "file": str(path)}})
        rows += [{"sample": i, "key": k, "text": None, "score": float(c == "1"), "kept": None,
                  "visual": rep.get("num_visual"), "retention": r["retention"], "flops_rel": r["flops_rel"],
                  "row_mean": True} for i, c in enumerate("".join(r["correct"]))]
    notes = ["An occam.bench accuracy report keeps per-question correctness only: no answers, no per-sample kept "
             "tokens (each row's mean retention and FLOPs stand in), no traces; items are redrawn from the toy "
             "world's seeds."]
    if not full_correct:
        notes.append("This report has no per-question correctness of the full model (older format): 'answer "
                     "changed' and 'wrong only under pruning' are unknown; the full model's accuracy is "
                     f"{rep['full']['accuracy']:.3f} (from the report).")
        keys[0]["reported"] = {"metric": "accuracy", "value": rep["full"]["accuracy"], "file": str(path)}
    manifest = {"format": "occam.bench accuracy", "kind": "bench", "status": "complete", "model": rep["model"],
                "question_types": list(world.QTYPES), "full_accuracy": rep["full"]["accuracy"]}
    return Run("bench", path.parent, manifest, samples, rows, keys, notes)


# -- statistics -----------------------------------------------------------------------------------------------
def accuracy_interval(scores: list[float], z: float | None = None) -> tuple[float, float]:
    """95% interval of a mean score: Wilson for 0 / 1 scores, else a percentile bootstrap (2000, seed 0)."""
    from .bench.stats import wilson
    if not scores:
        return 0.0, 1.0
    if all(s in (0.0, 1.0) for s in scores):
        return wilson(int(sum(scores)), len(scores))
    rng = np.random.default_rng(0)
    a = np.asarray(scores, float)
    means = a[rng.integers(0, len(a), (2000, len(a)))].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def correlation(x, y) -> dict:
    """Pearson r of paired values (None skipped) with its Fisher-z 95% interval (n > 3)."""
    pairs = [(float(a), float(b)) for a, b in zip(x, y) if a is not None and b is not None]
    n = len(pairs)
    if n < 4:
        return {"r": None, "ci95": None, "n": n}
    a, b = np.asarray(pairs).T
    if a.std() == 0 or b.std() == 0:
        return {"r": None, "ci95": None, "n": n}
    r = float(np.clip(np.corrcoef(a, b)[0, 1], -0.999999, 0.999999))
    z, half = math.atanh(r), 1.959963984540054 / math.sqrt(n - 3)
    return {"r": r, "ci95": (math.tanh(z - half), math.tanh(z + half)), "n": n}


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.mean(values) if values else None


def bucket_of(retention: float | None) -> str | None:
    if retention is None:
        return None
    for lo, hi in zip(BUCKETS, BUCKETS[1:]):
        if lo <= retention < hi:
            return f"{100 * lo:.0f}–{min(100, 100 * hi):.0f}%"
    return None


def aggregate(run: Run) -> dict:
    """Per run key: accuracy [95%], mean retention and prefill FLOPs, answers changed vs the full model; per
    question type; kept tokens against scene content (edge density; toy: object count, background)."""
    by_key: dict[str, list[dict]] = {}
    for r in run.rows:
        by_key.setdefault(r["key"], []).append(r)
    full = {r["sample"]: r for r in by_key.get(FULL, [])}
    types = run.manifest.get("question_types") or []
    out = {"keys": [], "per_type": {}, "content": {}, "types": types}
    for k in run.keys:
        rows = by_key.get(k["key"], [])
        if not rows:
            continue
        scores = [r["score"] for r in rows]
        joined = [(r, full.get(r["sample"])) for r in rows]
        changed = [_changed(r, f) for r, f in joined]
        only = [f["score"] > r["score"] if f else None for r, f in joined]
        out["keys"].append({**{x: k.get(x) for x in ("key", "method", "target", "label", "reported")},
                            "n": len(rows), "accuracy": statistics.mean(scores), "ci95": accuracy_interval(scores),
                            "retention": _mean(r["retention"] for r in rows),
                            "flops_rel": _mean(r["flops_rel"] for r in rows),
                            "kept_mean": _mean(r["kept"] for r in rows),
                            "changed": sum(c for c in changed if c) if any(c is not None for c in changed) else None,
                            "wrong_only_pruned": sum(o for o in only if o) if full and k["key"] != FULL else None})
        per = {}
        for t in types:
            s = [r["score"] for r in rows if run.samples[r["sample"]].get("qtype") == t]
            per[t] = {"n": len(s), "accuracy": statistics.mean(s) if s else None,
                      "ci95": accuracy_interval(s) if s else None}
        out["per_type"][k["key"]] = per
        kept = [r["kept"] for r in rows]
        if any(v is not None for v in kept) and k["key"] != FULL:
            smp = [run.samples[r["sample"]] for r in rows]
            c = {"edge_density": correlation([s.get("edge_density") for s in smp], kept)}
            if any("n_objects" in s for s in smp):
                c["n_objects"] = correlation([s.get("n_objects") for s in smp], kept)
                bgs = sorted({s["background"] for s in smp if s.get("background")})
                c["by_background"] = {b: _mean(r["kept"] for r, s in zip(rows, smp) if s.get("background") == b)
                                      for b in bgs}
            out["content"][k["key"]] = c
    return out


def _changed(row: dict, full: dict | None) -> bool | None:
    """Whether a pruned answer differs from the full model's (strip + lower-case, the toy task's rule); by
    correctness where the answers are not recorded (accuracy reports)."""
    if full is None or row is full:
        return None
    if row.get("text") is None or full.get("text") is None:
        return row["score"] != full["score"]
    return row["text"].strip().lower() != full["text"].strip().lower()


TABLE_COLUMNS = ["sample", "type", "question", "reference", "method", "target", "full answer", "answer", "kept",
                 "retention %", "bucket", "full ✓", "✓", "changed", "wrong only pruned"]


def sample_table(run: Run) -> list[dict]:
    """One row per (sample, pruned run key): the sample, both answers, kept tokens, the flags the filters use."""
    full = {r["sample"]: r for r in run.rows if r["key"] == FULL}
    meta = {k["key"]: k for k in run.keys}
    out = []
    for r in run.rows:
        if r["key"] == FULL:
            continue
        s, f, k = run.samples[r["sample"]], full.get(r["sample"]), meta.get(r["key"], {})
        ret = r.get("retention")
        out.append({"sample": r["sample"], "type": s.get("qtype"), "question": s.get("question"),
                    "reference": s.get("answer"), "method": k.get("method"), "target": k.get("target"),
                    "key": r["key"], "full answer": f.get("text") if f else None, "answer": r.get("text"),
                    "kept": r.get("kept"), "retention %": None if ret is None else round(100 * ret, 1),
                    "bucket": bucket_of(ret) if not r.get("row_mean") else None,
                    "full ✓": None if f is None else f["score"] >= 1, "✓": r["score"] >= 1,
                    "changed": _changed(r, f), "wrong only pruned": None if f is None else f["score"] > r["score"]})
    return out


def filter_table(table: list[dict], changed: bool = False, wrong_only_pruned: bool = False,
                 methods: list | None = None, types: list | None = None, buckets: list | None = None,
                 sort: str | None = None, descending: bool = False) -> list[dict]:
    """The sample table's filters (each one narrows) and a sort by any column."""
    rows = [r for r in table if (not changed or r["changed"]) and (not wrong_only_pruned or r["wrong only pruned"])
            and (not methods or r["method"] in methods) and (not types or r["type"] in types)
            and (not buckets or r["bucket"] in buckets)]
    if sort:
        rows.sort(key=lambda r: (r.get(sort) is None, r.get(sort) if r.get(sort) is not None else 0),
                  reverse=descending)
    return rows


def to_csv(rows: list[dict], path: str | Path) -> Path:
    import csv
    path = Path(path)
    cols = TABLE_COLUMNS + ["key"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


def sample_record(run: Run, sample: int, key: str | None = None) -> dict:
    """Everything saved about one sample: its item, every run key's answer / score / trace (when saved)."""
    s = {k: v for k, v in run.samples[sample].items() if not k.startswith("_")}
    per = {r["key"]: r for r in run.rows if r["sample"] == sample}
    return {"sample": s, "key": key, "runs": [{**k, "row": per.get(k["key"]), "trace": run.trace(sample, k["key"])}
                                             for k in run.keys if k["key"] in per]}



def main(argv: list[str] | None = None) -> Run:
    """``python -m occam.runs --out DIR [--n 200 --methods occam topk fastv --retentions 0.25 0.11 ...]``."""
    import argparse

    import torch
    d = Spec()
    p = argparse.ArgumentParser(prog="python -m occam.runs", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="the run folder (an existing one with the same settings resumes)")
    p.add_argument("--n", type=int, default=d.n)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--methods", nargs="+", default=list(d.methods))
    p.add_argument("--retentions", type=float, nargs="+", default=list(d.retentions))
    p.add_argument("--budget", default=d.budget)
    p.add_argument("--calib", type=int, default=d.calib)
    p.add_argument("--model", default=d.model)
    p.add_argument("--task", default=None, help="an lmms-eval task (source lmms) instead of the toy world")
    p.add_argument("--include-path", default=None)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    spec = Spec(source="lmms" if a.task else "toy", n=a.n, seed=a.seed, methods=tuple(a.methods),
                retentions=tuple(a.retentions), budget=a.budget, calib=a.calib, model=a.model, task=a.task,
                include_path=a.include_path)
    t0 = time.perf_counter()
    run = execute(spec, a.out, progress=lambda f, s: print(f"  {100 * f:5.1f}% {s}", flush=True))
    for k in aggregate(run)["keys"]:
        print(f"{k['key']:<14} accuracy {k['accuracy']:.3f} [{k['ci95'][0]:.3f}, {k['ci95'][1]:.3f}]  retention "
              f"{k['retention']:.3f}  FLOPs {k['flops_rel']:.3f}  changed {k['changed']}")
    print(f"{run.manifest['status']} in {time.perf_counter() - t0:.1f} s -> {a.out}")
    return run


if __name__ == "__main__":
    main()
