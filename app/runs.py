"""The Runs tab: a whole split through the full model and chosen methods (Run here), or a folder written by
lmms-eval / ``occam.bench accuracy`` (Open a run); accuracy plots, a filterable sample table, and a click on a
row that opens the sample in the Image tab from its saved trace (no re-run).

The library does the work (``occam.runs``: running, folders, statistics); ``render.runs`` draws; this module
is the tab, its handlers and the ``/runs`` API endpoint. Runs go to ``$OCCAM_APP_RUNS`` (default ``runs/`` in
the checkout), one folder per setting, so a reload or another visitor finds (and resumes) the same run.
Public mode (``app.public.public_mode()``) caps a run's size and duration, runs the toy world only, and opens
folders under the runs root only.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import gradio as gr

import occam
from occam import runs as lib
from occam.methods import PRUNING_METHODS

from . import backend, public
from .handlers import reporter, user_errors
from .public import public_mode
from .render import runs as view

REPO_ROOT = Path(__file__).resolve().parents[1]
PUBLIC_MAX_N, PUBLIC_MAX_KEYS, PUBLIC_MAX_S = 50, 7, 120     # public mode: items, run keys, seconds per press
MAX_N = 5000
DEFAULT_METHODS, DEFAULT_RETENTIONS = ("occam", "topk", "fastv"), "0.25, 0.11"
SOURCES = {"toy world (held-out split)": "toy", "lmms-eval task": "lmms"}
CANCELS: dict[str, threading.Event] = {}
_OPEN: dict[str, tuple[float, lib.Run]] = {}
_LOCK = threading.Lock()


def runs_root() -> Path:
    return Path(os.environ.get("OCCAM_APP_RUNS") or REPO_ROOT / "runs").resolve()


# -- inputs -> a spec and its folder --------------------------------------------------------------------------
def parse_retentions(text: Any) -> tuple[float, ...]:
    items = [t for t in str(text or "").replace(";", ",").split(",") if t.strip()]
    try:
        out = tuple(float(t) for t in items)
    except ValueError:
        raise ValueError(f"Retentions {text!r} are invalid: accepted numbers in (0, 1], e.g. 0.25, 0.11.") from None
    return out


def make_spec(source: str = "toy", n: Any = 200, seed: Any = 0, methods: Any = DEFAULT_METHODS,
              retentions: Any = DEFAULT_RETENTIONS, budget: str = "calibrated", calib: Any = 200,
              task: str | None = None, include_path: str | None = None, model: str | None = None) -> lib.Spec:
    """A run's spec from the tab's values (``occam.runs.Spec`` validates); public mode's caps apply here."""
    source = SOURCES.get(source, source)
    n, seed, calib = int(n or 0), int(seed or 0), int(calib or 0)
    rets = parse_retentions(retentions) if isinstance(retentions, str) else tuple(retentions)
    methods = tuple(methods or ())
    if not 1 <= n <= MAX_N:
        raise ValueError(f"n={n} is invalid: accepted 1 to {MAX_N} items.")
    if public_mode():
        if source != "toy":
            raise ValueError("This public demo runs the toy world only (an lmms-eval task runs code from its folder).")
        if n > PUBLIC_MAX_N or 1 + len(methods) * len(rets) > PUBLIC_MAX_KEYS or calib > 200:
            raise ValueError(f"This public demo runs at most {PUBLIC_MAX_N} items, {PUBLIC_MAX_KEYS - 1} method x "
                             f"retention pairs and 200 calibration samples per run.")
    return lib.Spec(source=source, n=n, seed=seed, methods=methods, retentions=rets, budget=budget, calib=calib,
                    task=(task or None) if source == "lmms" else None,
                    include_path=(include_path or None) if source == "lmms" else None,
                    model=model or backend.default_model())


def folder_for(spec: lib.Spec, folder: str | None = None) -> Path:
    """The run's folder: as typed (not in public mode), else one per spec under the runs root."""
    if folder and str(folder).strip() and not public_mode():
        return Path(str(folder).strip()).expanduser().resolve()
    d = spec.to_dict()
    tag = hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:8]
    name = f"{spec.task or spec.source}_n{spec.n}_s{spec.seed}_{'-'.join(spec.methods)}_{spec.budget}_{tag}"
    return runs_root() / name


def open_folder(path: Any) -> lib.Run:
    """A run read from disk (cached until its rows change); public mode: only under the runs root."""
    if not path or not str(path).strip():
        raise ValueError("Type the folder of a run (or of an lmms-eval --output_path), or an accuracy report .json.")
    p = Path(str(path).strip()).expanduser().resolve()
    if public_mode() and runs_root() not in (p, *p.parents):
        raise ValueError(f"This public demo opens runs under {runs_root()} only.")
    stamp = max((f.stat().st_mtime for f in (p / lib.ROWS, p / lib.MANIFEST, p) if f.exists()), default=0.0)
    with _LOCK:
        hit = _OPEN.get(str(p))
        if hit and hit[0] == stamp:
            return hit[1]
    run = lib.open_run(p)
    with _LOCK:
        _OPEN[str(p)] = (stamp, run)
    return run


def execute(spec: lib.Spec, folder: Path, progress: backend.Progress | None = None,
            cancel: threading.Event | None = None, cache: backend.ModelCache | None = None) -> lib.Run:
    """Run (or resume) ``spec`` into ``folder`` on the app's cached model; public mode stops it after
    ``PUBLIC_MAX_S`` seconds (resumable)."""
    progress = progress or (lambda *_: None)
    vlm = (cache or backend.MODELS).get(spec.model, progress)
    deadline = time.monotonic() + PUBLIC_MAX_S if public_mode() else float("inf")
    stop = cancel or threading.Event()
    run = lib.execute(spec, folder, vlm=vlm, progress=progress,
                      cancel=lambda: stop.is_set() or time.monotonic() > deadline)
    if public_mode() and time.monotonic() > deadline and not run.complete:
        run.notes.insert(0, f"Stopped at this demo's {PUBLIC_MAX_S} s cap: press Run again to resume.")
    return run


# -- views ------------------------------------------------------------------------------------------------------
def table_rows(run: lib.Run, changed=False, wrong=False, methods=None, types=None, buckets=None, sort=None,
               descending=False) -> list[list]:
    mark = lambda v: "–" if v is None else ("yes" if v else "no")  # noqa: E731
    rows = lib.filter_table(lib.sample_table(run), changed, wrong, methods, types, buckets, sort or None, descending)
    out = []
    for r in rows:
        out.append([r["sample"], r["type"], r["question"], r["reference"], r["key"], r["full answer"], r["answer"],
                    r["kept"], r["retention %"], r["bucket"], mark(r["full ✓"]), mark(r["✓"]), mark(r["changed"]),
                    mark(r["wrong only pruned"])])
    return out


COLUMNS = lib.TABLE_COLUMNS + ["key"]      # what the table sorts by (and the CSV holds)
# as shown: the run key stands for method + target (the click reads the sample and the key)
HEADERS = ["#", "type", "question", "ref.", "run", "full", "pruned", "kept", "ret. %", "bucket", "full ✓",
           "pruned ✓", "changed", "wrong only pruned"]
WIDTHS = ["4%", "7%", "22%", "6%", "10%", "6%", "6%", "5%", "6%", "7%", "5%", "6%", "5%", "5%"]
KEY_COLUMN = HEADERS.index("run")


def views(run: lib.Run) -> dict:
    """Every view of a run: summary, figures, filter choices, the (unfiltered) table."""
    agg = lib.aggregate(run)
    toy = any("n_objects" in s for s in run.samples)
    has_kept = any(r.get("kept") is not None for r in run.rows if r["key"] != lib.FULL)
    return {"summary": view.summary_markdown(run, agg), "retention": view.accuracy_figure(agg, "retention"),
            "flops": view.accuracy_figure(agg, "flops_rel"), "types": view.type_figure(agg),
            "content": view.content_figure(run.rows, run.samples, agg, "edge_density") if has_kept else None,
            "objects": view.content_figure(run.rows, run.samples, agg, "n_objects") if has_kept and toy else None,
            "methods": sorted({k["method"] for k in run.keys if k["target"] is not None}),
            "types_list": agg["types"], "buckets": [lib.bucket_of(lo) for lo in lib.BUCKETS[:-1]],
            "table": table_rows(run), "aggregate": agg}


def api_payload(run: lib.Run) -> dict:
    agg = lib.aggregate(run)
    return {"folder": str(run.folder), "kind": run.kind, "status": run.manifest.get("status"), "notes": run.notes,
            "keys": agg["keys"], "per_type": agg["per_type"], "content": agg["content"],
            "samples": len(run.samples), "table": lib.sample_table(run)}


def api_runs(path: Any = "", spec: Any = None) -> dict:
    """Public API "runs": with ``spec`` (JSON: make_spec's arguments) run it (or resume it) into ``path`` (or its
    own folder); without, open the run at ``path``. Returns the aggregates and the sample table as JSON."""
    if isinstance(spec, str):
        spec = json.loads(spec) if spec.strip() else None
    if spec:
        s = make_spec(**spec)
        return api_payload(execute(s, folder_for(s, path)))
    return api_payload(open_folder(path))


# -- a sample, from its saved traces, in the Image tab -------------------------------------------------------
def _result(text: str | None, trace: dict) -> occam.Result:
    """A saved answer and trace as a Result; its timings are dropped (a batch's, not this request's own)."""
    return occam.Result(text=text or "", token_ids=[], trace=occam.Trace.from_dict({**trace, "timings": {}}),
                        logits=None)


def saved_comparison(run: lib.Run, sample: int, key: str) -> tuple[backend.Comparison | None, dict | None, str]:
    """(the Image tab's comparison, the method comparison's data, a note) for one sample from its saved traces;
    (None, None, why) when this run saved none."""
    rec = lib.sample_record(run, sample, key)
    by_key = {r["key"]: r for r in rec["runs"]}
    s, chosen, full = rec["sample"], by_key.get(key), by_key.get(lib.FULL)
    if chosen is None or full is None or chosen.get("trace") is None or full.get("trace") is None:
        why = ("this run saved no per-token traces" if not run.has_traces
               else f"trace file {lib.trace_path(run.folder, sample, key).name} or the full model's is missing")
        return None, None, why
    image = run.image(sample)
    cfg = occam.OccamConfig(**chosen["config"])
    settings = backend.Settings(model=str(run.manifest.get("model")), target_retention=chosen["target"], config=cfg)
    note = (f"saved run {run.folder.name}, sample {sample}, {chosen['method']} at {100 * chosen['target']:g}%: "
            + (f"α = {cfg.alpha:.4g}, β = {cfg.beta:.4g} ({run.manifest['spec']['budget']} to "
               f"{100 * chosen['target']:g}% on average)" if cfg.spec.thresholded else
               f"fixed budget of {100 * chosen['target']:g}% of the visual tokens"))
    comp = backend.Comparison(image=image, question=s["question"], settings=settings, config=cfg,
                              model=str(run.manifest.get("model")), family=str(run.manifest.get("family")),
                              device="saved run", full=_result(full["row"]["text"], full["trace"]),
                              pruned=_result(chosen["row"]["text"], chosen["trace"]),
                              budget={"method": cfg.method, "target": chosen["target"], "mode": "saved", "note": note},
                              reference=s.get("answer"))
    rows = []
    for r in rec["runs"]:
        if r["target"] != chosen["target"] or r.get("trace") is None:
            continue
        c, rc = r["trace"]["counts"], occam.OccamConfig(**r["config"])
        rows.append({"method": r["method"], "answer": r["row"]["text"], "kept": c["final"], "visual": c["visual"],
                     "retention": c["retention"], "same_as_full": backend.same_answer(r["row"]["text"],
                                                                                      full["row"]["text"]),
                     "correct": r["row"]["score"] >= 1, "alpha": rc.alpha if rc.spec.thresholded else None,
                     "beta": rc.beta if rc.spec.thresholded else None, "config": r["config"], "trace": r["trace"]})
    methods = {"model": run.manifest.get("model"), "question": s["question"], "target_retention": chosen["target"],
               "reference": s.get("answer"), "rows": rows,
               "full": {"answer": full["row"]["text"], "visual_tokens": full["trace"]["counts"]["visual"],
                        "correct": full["row"]["score"] >= 1, "trace": full["trace"]},
               "rule": f"every method of the saved run at {100 * chosen['target']:g}% (no re-run)"}
    return comp, methods, note


def saved_speed_markdown(comp: backend.Comparison) -> str:
    e = comp.speedup()["estimated"]
    x = lambda v: "–" if v is None else f"×{v:.2f}"  # noqa: E731
    return (f"**From a saved run** (answered in batches, not timed one by one: no measured speed-up).  \n"
            f"**Estimated from token counts (not measured):** prefill FLOPs {x(e.get('flops'))} fewer · KV cache "
            f"{x(e.get('kv_cache'))} smaller")


# -- the tab ---------------------------------------------------------------------------------------------------
class RunsTab:
    """The Runs tab's components; ``open_in_image_tab`` wires a row click to the Image tab (app/ui.py calls it)."""

    def __init__(self, components: dict):
        self.c = components

    def open_in_image_tab(self, tabs, image_tab_id: str, inputs: list, outputs: list, methods_outputs: list,
                          to_outputs: Callable, write_file: Callable, settings: list) -> None:
        """A click on a sample row: the Image tab shows that sample (inputs: image, question, reference;
        ``outputs``: what ``to_outputs(comparison)`` fills; ``methods_outputs``: the method comparison's grid,
        table and file; ``settings``: its method and target retention controls) from the saved traces, and is
        selected."""
        c = self.c
        n_out = len(outputs)
        speed_at = 6      # comparison_outputs' order: answers and panels (0-5), then the speed-up line

        def on_select(path, evt: gr.SelectData):
            try:
                run = open_folder(path)
                row = evt.row_value
                sample, key = int(row[0]), str(row[KEY_COLUMN])
            except Exception as e:
                raise gr.Error(f"Could not open that row: {e}", print_exception=False) from None
            comp, methods, note = saved_comparison(run, sample, key)
            s = run.samples[sample]
            if comp is None:
                msg = (f"Sample {sample} (`{key}`) opened in the Image tab with its question; {note}: press "
                       "**Compare full vs pruned** there to re-run it.")
                img = run.image(sample)
                k = next((k for k in run.keys if k["key"] == key), {})
                chosen = [k.get("method") if k.get("method") in occam.METHODS else gr.update(),
                          k.get("target") or gr.update()]
                return (gr.Tabs(selected=image_tab_id), img, s.get("question"), s.get("answer"),
                        *[gr.update()] * n_out, *[gr.update()] * len(methods_outputs), *chosen, msg)
            outs = list(to_outputs(comp))
            outs[speed_at] = saved_speed_markdown(comp)
            from .render import method_grid_html, method_table
            grid = [method_grid_html(comp.image, methods), method_table(methods), write_file(methods, "occam_methods")]
            msg = (f"Opened sample {sample} (`{key}`) in the Image tab from its saved traces; its method and target are "
                   "set there, so **Compare full vs pruned** re-runs it (occam: with the α/β that tab resolves).")
            chosen = [comp.config.method, comp.settings.target_retention]
            return (gr.Tabs(selected=image_tab_id), comp.image, comp.question, s.get("answer"), *outs, *grid, *chosen,
                    msg)

        c["table"].select(on_select, [c["path"]], [tabs, *inputs, *outputs, *methods_outputs, *settings, c["message"]],
                          api_visibility="private")


def build_runs_tab() -> RunsTab:
    """The "Runs" tab; call inside the app's top-level ``gr.Tabs`` (app/ui.py does), then ``open_in_image_tab``."""
    c: dict[str, Any] = {}
    pub = public_mode()
    with gr.Tab("Runs", elem_id="runs-tab"):
        gr.Markdown("A whole split through the full model and pruned ones: where answers changed and why. **Run "
                    "here** (the toy world works offline in minutes) or **open a run** written by `lmms-eval --model "
                    "occam --log_samples` (with `trace_dir`) or by `python -m occam.bench accuracy`. Click a row of "
                    "the sample table to open that sample in the Image tab from its saved trace."
                    + (f" This public demo caps a run at {PUBLIC_MAX_N} items and {PUBLIC_MAX_S} s (resumable)."
                       if pub else ""))
        with gr.Row():
            with gr.Column(scale=2, min_width=320):
                with gr.Tab("Run here", elem_id="runs-here"):
                    source = gr.Radio(list(SOURCES) if not pub else list(SOURCES)[:1], value=list(SOURCES)[0],
                                      label="Source", elem_id="runs-source")
                    with gr.Row():
                        n = gr.Number(PUBLIC_MAX_N if pub else 200, precision=0, label="items (n)", minimum=1,
                                      maximum=PUBLIC_MAX_N if pub else MAX_N, elem_id="runs-n")
                        seed = gr.Number(0, precision=0, label="seed", elem_id="runs-seed")
                    methods = gr.CheckboxGroup(list(PRUNING_METHODS), value=list(DEFAULT_METHODS), label="Methods",
                                               elem_id="runs-methods")
                    retentions = gr.Textbox(DEFAULT_RETENTIONS, label="Target retentions (comma-separated)",
                                            elem_id="runs-retentions")
                    with gr.Row():
                        budget = gr.Radio(["calibrated", "recommended"], value="calibrated",
                                          label="occam's α/β", info="calibrated: on calibration samples, as "
                                          "occam.bench accuracy does; recommended: the model's file")
                        calib = gr.Number(200, precision=0, label="calibration samples", elem_id="runs-calib")
                    with gr.Accordion("lmms-eval task / folder", open=False, visible=not pub):
                        task = gr.Textbox("", label="task name", elem_id="runs-task")
                        include = gr.Textbox("", label="task folder (--include_path)", elem_id="runs-include")
                        folder = gr.Textbox("", label="run folder (empty: one per setting under the runs root)",
                                            placeholder=str(runs_root()), elem_id="runs-folder")
                    with gr.Row():
                        go_btn = gr.Button("Run", variant="primary", elem_id="runs-run")
                        cancel_btn = gr.Button("Cancel", variant="stop", elem_id="runs-cancel")
                with gr.Tab("Open a run", elem_id="runs-open-tab"):
                    path_in = gr.Textbox("", label="folder (run, lmms-eval --output_path) or accuracy report .json",
                                         placeholder=str(runs_root()), elem_id="runs-open-path")
                    open_btn = gr.Button("Open", variant="primary", elem_id="runs-open")
                message = gr.Markdown("", elem_id="runs-message")
            with gr.Column(scale=3, min_width=420):
                with gr.Tabs():
                    with gr.Tab("Accuracy vs retention"):
                        fig_ret = gr.Plot(elem_id="runs-plot-retention", show_label=False)
                    with gr.Tab("vs prefill FLOPs"):
                        fig_flops = gr.Plot(elem_id="runs-plot-flops", show_label=False)
                    with gr.Tab("Per question type"):
                        fig_types = gr.Plot(elem_id="runs-plot-types", show_label=False)
                    with gr.Tab("Kept tokens vs scene content"):
                        fig_content = gr.Plot(elem_id="runs-plot-content", show_label=False)
                        fig_objects = gr.Plot(elem_id="runs-plot-objects", show_label=False)
        summary = gr.Markdown("", elem_id="runs-summary")
        path = gr.State("")
        with gr.Row(elem_id="runs-filters"):
            f_changed = gr.Checkbox(False, label="answer changed", elem_id="runs-f-changed")
            f_wrong = gr.Checkbox(False, label="wrong only under pruning", elem_id="runs-f-wrong")
            f_methods = gr.Dropdown([], multiselect=True, label="method", elem_id="runs-f-methods")
            f_types = gr.Dropdown([], multiselect=True, label="type", elem_id="runs-f-types")
            f_buckets = gr.Dropdown([], multiselect=True, label="retention bucket", elem_id="runs-f-buckets")
            f_sort = gr.Dropdown(["", *COLUMNS], value="", label="sort by", elem_id="runs-f-sort")
            f_desc = gr.Checkbox(False, label="descending", elem_id="runs-f-desc")
        table = gr.Dataframe(headers=HEADERS, interactive=False, wrap=True, max_height=480, column_widths=WIDTHS,
                             elem_id="runs-table")
        with gr.Row():
            export_btn = gr.Button("Export the filtered table (CSV)", elem_id="runs-export")
            csv_file = gr.File(label="CSV", height=80, elem_id="runs-csv")
        with gr.Row(visible=False):   # the /runs API endpoint's inputs and output
            api_path = gr.Textbox("", label="path")
            api_spec = gr.JSON(value={}, label="spec")
            api_out = gr.JSON(label="run")
            api_btn = gr.Button("api runs")

    spec_inputs = [source, n, seed, methods, retentions, budget, calib, task, include]
    filters = [f_changed, f_wrong, f_methods, f_types, f_buckets, f_sort, f_desc]
    view_outputs = [path, message, summary, fig_ret, fig_flops, fig_types, fig_content, fig_objects, f_methods,
                    f_types, f_buckets, table]

    def shown(run: lib.Run, msg: str = "") -> tuple:
        v = views(run)
        return (str(run.folder), msg, v["summary"],
                v["retention"], v["flops"], v["types"], v["content"], v["objects"],
                gr.Dropdown(choices=v["methods"], value=[]), gr.Dropdown(choices=v["types_list"], value=[]),
                gr.Dropdown(choices=v["buckets"], value=[]), v["table"])

    @public.gpu(lambda *_a, **_k: PUBLIC_MAX_S)      # a press runs up to its time cap
    @user_errors
    def on_run(*args, progress=gr.Progress()):
        *values, folder_text = args
        spec = make_spec(*values)
        where = folder_for(spec, folder_text)
        event = CANCELS.setdefault(str(where), threading.Event())
        event.clear()
        t0 = time.perf_counter()
        run = execute(spec, where, reporter(progress), event)
        msg = (f"Run {run.manifest.get('status')} in {time.perf_counter() - t0:.0f} s (this press) · folder "
               f"`{where}`")
        return shown(run, msg)

    @user_errors
    def on_cancel(*args):
        *values, folder_text = args
        where = folder_for(make_spec(*values), folder_text)
        event = CANCELS.get(str(where))
        if event is None:
            return "No run of these settings is going on."
        event.set()
        return "Cancelling after the current batch: the run stays resumable (press Run again)."

    @user_errors
    def on_open(p):
        run = open_folder(p)
        out = shown(run, f"Opened `{Path(str(p).strip()).expanduser()}` ({run.kind}).")
        return (str(Path(str(p).strip()).expanduser().resolve()), *out[1:])

    @user_errors
    def on_filter(p, *vals):
        if not p:
            return []
        return table_rows(open_folder(p), *vals)

    @user_errors
    def on_export(p, *vals):
        if not p:
            raise gr.Error("Run or open a run first.", print_exception=False)
        rows = lib.filter_table(lib.sample_table(open_folder(p)), *vals[:5], vals[5] or None, vals[6])
        out = Path(tempfile.mkdtemp(prefix="occam_runs_")) / "samples.csv"
        return str(lib.to_csv(rows, out))

    go_btn.click(on_run, [*spec_inputs, folder], view_outputs, api_visibility="private", concurrency_limit=1,
                 concurrency_id="runs")
    cancel_btn.click(on_cancel, [*spec_inputs, folder], [message], api_visibility="private", concurrency_limit=None)
    open_btn.click(on_open, [path_in], view_outputs, api_visibility="private")
    path_in.submit(on_open, [path_in], view_outputs, api_visibility="private")
    for f in filters:
        f.change(on_filter, [path, *filters], [table], api_visibility="private")
    export_btn.click(on_export, [path, *filters], [csv_file], api_visibility="private")
    api_btn.click(public.gpu(lambda *_a, **_k: PUBLIC_MAX_S)(user_errors(api_runs)), [api_path, api_spec], api_out, api_name="runs", concurrency_limit=1,
                  concurrency_id="runs")
    return RunsTab({"table": table, "path": path, "message": message})
