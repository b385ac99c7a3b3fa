"""The Gradio interface: layout and thin event handlers over ``backend`` (runs) and ``render`` (views).

Handlers are plain module functions (unit-tested directly): they turn UI values into backend
calls and backend results into component values, and turn every failure into a ``gr.Error``
carrying the message (bad image, empty question, invalid knob, model that cannot be loaded).

The knob controls are derived from ``backend.knobs()`` (the app's settings + every field of
``occam.OccamConfig``); ``KNOB_UI`` only adds labels and choices. A new config field appears as a
control by itself (with its field name as label until it gets one here).
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path

import gradio as gr

import occam

from . import backend, public, render, spec
from .handlers import reporter as _reporter
from .handlers import user_errors

log = logging.getLogger("occam.app")
REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES_DIR = REPO_ROOT / "assets" / "examples"

# The knobs, in the order the handlers receive them after their fixed inputs: derived, never listed by hand.
KNOBS = tuple(k.name for k in backend.knobs())
TAB_LABELS = {"final": "Final kept", "stage1_evidence": "Stage I evidence", "stage1_mask": "Stage I mask",
              "stage2_evidence": "Stage II evidence", "registers": "Registers"}
GALLERY_CAPTIONS = {"final": "Final", "stage1_evidence": "Stage I ev.", "stage1_mask": "Stage I mask",
                    "stage2_evidence": "Stage II ev.", "registers": "Registers"}


def _choices(name: str):
    """Choice lists the config module declares (e.g. KEEP_REGISTERS once it is a string mode)."""
    import occam.config as config
    return {"method": list(occam.METHODS), "reference": list(getattr(config, "REFERENCES", ("register", "mean"))),
            "keep_registers": list(getattr(config, "KEEP_REGISTERS", ()) or ()) or None,
            "thresholds": list(backend.THRESHOLD_MODES)}.get(name)


# UI-only: labels (and info lines) per setting; anything not here gets its name as label.
KNOB_UI = {
    "target_retention": ("Target retention: share of visual tokens to keep, in (0, 1]",
                         "occam: the average retention its α/β aim at; baselines: their fixed budget"),
    "thresholds": ("occam's α/β come from", " · ".join(f"{k}: {v}" for k, v in backend.THRESHOLD_MODE_HELP.items())),
    "model": ("Model (choose, or type a hub id / local folder)", None),
    "method": ("Method", None),
    "alpha": ("α: Stage I threshold (thresholds = manual)", "a number > 0; keep token j iff e_j/ρ ≥ α"),
    "beta": ("β: Stage II threshold (thresholds = manual)", "a number > 0; keep token j iff a_j/ρ_q ≥ β"),
    "stage1": ("Stage I (vision encoder)", None),
    "stage2": ("Stage II (inside the LM)", None),
    "stage2_layer": ("Stage II layer K (empty = auto, about 1/3 of the depth)", "empty, or a layer index ≥ 0"),
    "reference": ("Reference", "register: the registers' attention level; mean: the mean over candidates"),
    "keep_registers": ("Keep registers", None),
    "stage_split": ("Stage split s (Stage I aims at t^s of the target)", "a number in [0, 1]"),
    "min_tokens": ("min tokens per stage (empty = no floor)", "empty, or an integer ≥ 1"),
    "max_tokens": ("max tokens per stage (empty = no cap)", "empty, or an integer ≥ 1"),
    "fastv_layer": ("FastV layer", "an integer ≥ 0"),
    "visionzip_contextual": ("VisionZip: share of the budget for merged tokens", "in (0, 1]"),
    "kappa": ("κ: emergent register if norm ≥ κ × median", "a number > 0"),
    "max_register_frac": ("max share of emergent registers / sinks", "in (0, 1]"),
    "sink_kappa": ("κ of LM sinks", "a number > 0"),
    "attn_chunk": ("attention chunk (query rows)", "an integer ≥ 1; memory only"),
    "seed": ("seed (random method)", "an integer"),
    "temporal_similarity": ("video: temporal similarity (empty = off)", "empty, or a cosine similarity in [-1, 1]"),
    "max_new_tokens": ("max new tokens", None),
    "repeats": ("timed repeats (median of n, after one warm-up)", None),
}
ADVANCED_ORDER = ("alpha", "beta", "stage1", "stage2", "stage2_layer", "reference", "keep_registers", "stage_split",
                  "min_tokens", "max_tokens")


def knob_component(knob: backend.Knob, default):
    """A control for one setting, by its type: optional numbers are text boxes that stay empty ("auto")
    until a person types a value; a string with declared choices is a dropdown."""
    label, info = KNOB_UI.get(knob.name, (knob.name, None))
    kw = dict(label=label, info=info, elem_id=f"knob-{knob.name}")
    choices = _choices(knob.name)
    if knob.name == "target_retention":
        return gr.Slider(0.01, 1.0, value=default, step=0.01, **kw)
    if knob.name == "max_new_tokens":
        return gr.Slider(1, backend.MAX_NEW_TOKENS, value=default, step=1, **kw)
    if knob.name == "repeats":
        return gr.Slider(1, backend.MAX_REPEATS, value=default, step=1, **kw)
    if knob.name == "model":
        # locally any hub id or folder may be typed in; in public mode only the allow-list is offered
        return gr.Dropdown(backend.model_choices(), value=default, allow_custom_value=not public.public_mode(), **kw)
    if knob.kind == "bool":
        return gr.Checkbox(value=bool(default), **kw)
    if knob.kind == "str" and choices:
        return gr.Dropdown(choices, value=default, **kw) if len(choices) > 3 else gr.Radio(choices, value=default, **kw)
    if knob.optional or knob.kind == "str":
        return gr.Textbox(value="" if default is None else str(default), placeholder="auto" if knob.optional else "",
                          max_lines=1, **kw)
    return gr.Number(value=default, precision=0 if knob.kind == "int" else None, **kw)


def default_values() -> dict:
    """Each setting's default as the UI shows it."""
    s = backend.Settings()
    d = s.to_dict()
    return {k: d.get(k) for k in KNOBS}


def image_input(**kwargs) -> gr.Image:
    """The stock image widget, but its handler receives the uploaded file's path UNOPENED.

    gr.Image opens every upload with PIL before the handler runs, so a corrupt file or a
    decompression bomb would fail inside Gradio with a generic message. Here the app opens it
    with ``occam.inputs.open_image``, which says what was wrong. (An instance attribute, not a
    subclass: Gradio writes a .pyi stub next to the module of every component subclass.)
    """
    comp = gr.Image(type="filepath", **kwargs)
    comp.preprocess = raw_image_path  # shadows gr.Image.preprocess for this component only
    return comp


def raw_image_path(payload) -> str | bytes | None:
    """An upload as its file path (or the bytes of a pasted data: URL), without opening it."""
    if payload is None:
        return None
    url = getattr(payload, "url", None)
    if url and url.startswith("data:"):
        import base64
        try:
            return base64.b64decode(url.split(",", 1)[1])
        except Exception:
            raise gr.Error("The pasted image data is not valid base64.") from None
    if payload.path is None:
        raise gr.Error("No image file was received: upload the image again.")
    return str(payload.path)


# ---------------------------------------------------------------------------------------------
# trace files: one folder per process, old files pruned, the folder removed at exit
# ---------------------------------------------------------------------------------------------
class TraceFiles:
    """Where the downloadable trace JSON files go. Gradio copies each returned file into its own cache,
    so a file here is only needed for a moment: files older than ``max_age_s`` are deleted at each
    write and the folder is removed when the process exits."""

    def __init__(self, max_age_s: float = 600.0):
        self.max_age_s = max_age_s
        self._dir: str | None = None
        self._lock = threading.Lock()

    @property
    def folder(self) -> str:
        with self._lock:
            if self._dir is None or not os.path.isdir(self._dir):
                self._dir = tempfile.mkdtemp(prefix="occam_traces_")
                atexit.register(shutil.rmtree, self._dir, True)
                log.info("trace files in %s (pruned after %.0f s, removed at exit)", self._dir, self.max_age_s)
            return self._dir

    def write(self, data: dict, name: str = "occam_trace") -> str:
        folder = self.folder
        now = time.time()
        for old in Path(folder).glob("*.json"):
            try:
                if now - old.stat().st_mtime > self.max_age_s:
                    old.unlink()
            except OSError:
                pass
        path = os.path.join(folder, f"{name}_{uuid.uuid4().hex[:10]}.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
        return path

    def cleanup(self) -> None:
        with self._lock:
            if self._dir:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None


TRACES = TraceFiles()


# ---------------------------------------------------------------------------------------------
# handlers
# ---------------------------------------------------------------------------------------------
def _settings(knobs: tuple) -> dict:
    if len(knobs) != len(KNOBS):
        raise TypeError(f"expected {len(KNOBS)} knob values ({', '.join(KNOBS)}), got {len(knobs)}")
    return dict(zip(KNOBS, knobs))


# Hugging Face ZeroGPU: the model-bound handlers run on a borrowed GPU for a duration computed from the
# request's work (app/public.py); plain functions where the ``spaces`` package is absent.
def _ui_work(kind: str):
    """The planned work of a UI handler's call, from its own arguments (image, question, ..., *knobs)."""
    fixed = {"compare": 3, "methods": 3, "sweep": 4}[kind]     # the handler's inputs before the knobs

    def work(*args, **_):
        s = backend.parse_settings(_settings(args[fixed:]))
        values = backend.parse_sweep_values(args[3], args[2]) if kind == "sweep" else ()
        return backend.plan_work(kind, s, len(values), param=args[2] if kind == "sweep" else "")
    return work


def _api_work(kind: str):
    """The planned work of an API call (image, question, settings, ...; sweep: param, values)."""
    def work(image, question, settings=None, *rest, **kw):
        s = backend.parse_settings(settings)
        if kind != "sweep":
            return backend.plan_work(kind, s)
        param = rest[0] if rest else kw.get("param", "alpha=beta")
        values = backend.parse_sweep_values(rest[1] if len(rest) > 1 else kw.get("values"), param)
        return backend.plan_work(kind, s, len(values), param=param)
    return work


def model_status(cache: backend.ModelCache | None = None) -> str:
    cache = cache or backend.MODELS
    loaded = cache.loaded()
    now = cache.current
    out = (f"Serving **{now}** on {backend.device()}" if now else
           f"No model loaded yet (the first run loads **{backend.default_model()}**)") + (
        f" · cached: {', '.join(loaded)}" if len(loaded) > 1 else "")
    vlm = cache.peek(now) if now else None
    if vlm is not None:
        rec = getattr(vlm, "recommended", None)
        if rec is None:
            out += "  \n⚠ No recommended thresholds for this model: occam uses α = β = 1 " \
                   f"({spec.method_link(8)})."
        else:
            targets = ", ".join(f"{100 * e.target:g}%" for e in rec.targets)
            out += (f"  \nRecommended thresholds for {targets} retention, calibrated on "
                    f"{rec.calibration.get('set', '?')}.")
    return out


INSPECT_SIDE = 768  # the inspector image's longer side in pixels (clicks are mapped back to the original)


def inspector_state(comp: backend.Comparison) -> dict:
    return {"trace": comp.pruned.trace.to_dict(), "image": comp.image}


def inspector_image(state: dict | None, token: int | None = None):
    """The final kept/dropped overlay at a fixed display size, the inspected token outlined in yellow."""
    if not state:
        return None
    from PIL import ImageDraw
    trace = state["trace"]
    img = render.overlay_image(state["image"], trace, "final", max_side=None)
    w, h = img.size
    scale = INSPECT_SIDE / max(w, h)
    img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), resample=0)
    if token is not None and (trace.get("boxes") or [None] * (token + 1))[token] is not None:
        x0, y0, x1, y1 = (v * scale for v in trace["boxes"][token])
        d = ImageDraw.Draw(img)
        d.rectangle([x0, y0, x1 - 1, y1 - 1], outline=(255, 221, 0), width=4)
    return img


def inspect_outputs(state: dict | None, token) -> tuple:
    if not state:
        raise gr.Error("Run a comparison first: the inspector reads the pruned run's trace.", print_exception=False)
    info = backend.inspect_token(state["trace"], token)
    return render.inspector_markdown(info), info["token"], inspector_image(state, info["token"])


@public.gpu(_ui_work("compare"))
@user_errors
def on_run(image, question, reference, *knobs, progress=gr.Progress()):
    """Run button: full and pruned answers, agreement flag, budget, measured speed-up, views, trace file."""
    comp = backend.run_compare(image, question, _settings(knobs), progress=_reporter(progress), reference=reference)
    return comparison_outputs(comp)


def comparison_outputs(comp: backend.Comparison) -> tuple:
    """The values of the run outputs for one comparison (also used for cached examples)."""
    full, pruned = comp.full.trace.to_dict(), comp.pruned.trace.to_dict()
    figs = render.all_token_figures(comp.image, pruned)
    gallery = [(render.overlay_image(comp.image, pruned, v), GALLERY_CAPTIONS[v]) for v in render.VIEWS]
    state = inspector_state(comp)
    first = next((j for j, k in enumerate(pruned["kept"]) if k and (pruned.get("boxes") or [None])[j] is not None), 0)
    insp_md, insp_token, insp_img = inspect_outputs(state, first)
    return (
        comp.full.text,
        render.run_summary_markdown(full, "Full model", comp.timing, "full"),
        comp.pruned.text,
        render.run_summary_markdown(pruned, "Pruned", comp.timing, "pruned"),
        render.agreement_markdown(comp.agreement),
        render.budget_markdown(comp.budget, pruned.get("flags")),
        render.speedup_markdown(comp.speedup()),
        *[figs[v] for v in render.VIEWS],
        render.histogram_figure(pruned),
        render.stats_markdown(full, pruned, comp.timing),
        TRACES.write(comp.to_dict()),
        gallery,
        model_status(),
        state,
        insp_img,
        insp_token,
        insp_md,
    )


@public.gpu(lambda *_a, **_k: backend.plan_work("compare", backend.parse_settings({})))
@user_errors
def on_example(image, question, reference=None, progress=gr.Progress()):
    """An example row (image, question, reference answer) run with the default settings."""
    comp = backend.run_compare(image, question, {}, progress=_reporter(progress), reference=reference)
    return comparison_outputs(comp)


@user_errors
def on_inspect_click(state, evt: gr.SelectData):
    """A click on the inspector image: the token under the pointer."""
    if not state:
        raise gr.Error("Run a comparison first: the inspector reads the pruned run's trace.", print_exception=False)
    x, y = evt.index[0], evt.index[1]
    w, h = state["trace"]["image_size"]
    scale = INSPECT_SIDE / max(w, h)
    j = backend.token_at(state["trace"], x / scale, y / scale)
    if j is None:
        raise gr.Error("No visual token covers that point (tokens without a box: type their index).",
                       print_exception=False)
    return inspect_outputs(state, j)


@user_errors
def on_inspect_index(state, token):
    """A token index typed in the inspector."""
    if token is None or token == "":
        raise gr.Error("Type a token index (or click the image).", print_exception=False)
    return inspect_outputs(state, token)


@public.gpu(_ui_work("methods"))
@user_errors
def on_methods(image, question, reference, *knobs, progress=gr.Progress()):
    """Compare-methods button: every method at the same retention, answers beside kept-token masks."""
    runs = backend.run_methods(image, question, _settings(knobs), progress=_reporter(progress), reference=reference)
    return (render.method_grid_html(runs.image, runs.data), render.method_table(runs.data),
            TRACES.write(runs.to_dict(), "occam_methods"))


@public.gpu(_ui_work("sweep"))
@user_errors
def on_sweep(image, question, param, values, *knobs, progress=gr.Progress()):
    """Budget sweep button: answers and kept tokens across alpha / beta / target retention."""
    sweep = backend.run_sweep(image, question, _settings(knobs), param, values, progress=_reporter(progress))
    return render.sweep_figure(sweep), render.sweep_table(sweep), render.sweep_summary_markdown(sweep)


@user_errors
def on_image_change(image):
    """A new upload: check it at once (says what is wrong) and describe it; clears the reference answer."""
    if image is None:
        return "", ""
    from occam.inputs import describe_image
    d = describe_image(image)
    note = ""
    if d["format"]:
        note = (f" (file: {d['format']}, mode {d['file_mode']}"
                + (f", {d['frames']} frames: the first is used" if d["frames"] > 1 else "")
                + (", EXIF rotation applied" if d["exif_rotated"] else "") + ")")
    return f"Image {d['width']}×{d['height']} RGB{note}", ""


def on_sweep_param(param):
    """Sweep parameter changed: propose sensible default values for it."""
    return backend.DEFAULT_SWEEP_VALUES.get(param, "")


@public.gpu(_api_work("compare"))
@user_errors
def api_compare(image, question, settings=None, reference=None):
    """Public API "compare": both answers, agreement, budget, measured timings, estimates, both traces."""
    return backend.run_compare(image, question, settings, reference=reference or None).to_dict()


@public.gpu(_api_work("methods"))
@user_errors
def api_methods(image, question, settings=None, reference=None):
    """Public API "methods": occam and the baselines at the same retention, each answer with its trace."""
    return backend.run_methods(image, question, settings, reference=reference or None).to_dict()


@user_errors
def api_inspect(trace, token):
    """Public API "inspect": what a trace (a /compare answer, its pruned trace, or a trace dict) says about
    one token, given as an index or as "x,y" in original image pixels."""
    if isinstance(trace, str):
        try:
            trace = json.loads(trace)
        except json.JSONDecodeError as e:
            raise ValueError(f"The trace is not valid JSON ({e.msg}).") from None
    if not isinstance(trace, dict):
        raise ValueError("Give the trace JSON: a /compare answer or a trace dict.")
    if "pruned" in trace and isinstance(trace["pruned"], dict):
        trace = trace["pruned"].get("trace", trace["pruned"])
    if "num_visual" not in trace:
        raise ValueError("This JSON is not a trace (no num_visual): pass a /compare answer or its pruned trace.")
    j = token
    if isinstance(token, str):
        t = token.strip()
        if "," in t:
            try:
                x, y = (float(v) for v in t.split(","))
            except ValueError:
                raise ValueError(f"Token {token!r} is invalid: accepted an index or 'x,y' pixels.") from None
            j = backend.token_at(trace, x, y)
            if j is None:
                raise ValueError(f"No visual token covers ({x:g}, {y:g}).")
        else:
            try:
                j = int(t)
            except ValueError:
                raise ValueError(f"Token {token!r} is invalid: accepted an index or 'x,y' pixels.") from None
    info = backend.inspect_token(trace, j)
    return {"inspection": info, "trace": trace}


@public.gpu(_api_work("sweep"))
@user_errors
def api_sweep(image, question, settings=None, param="alpha=beta", values=None):
    """Public API "sweep": the budget sweep's rows as JSON."""
    return backend.run_sweep(image, question, settings, param, values)


# ---------------------------------------------------------------------------------------------
# layout
# ---------------------------------------------------------------------------------------------
def load_examples(folder: Path | None = None) -> list[list[str]]:
    """[[image path, question, answer]] from assets/examples/examples.json; [] when absent or unusable."""
    folder = Path(folder) if folder is not None else EXAMPLES_DIR
    index = folder / "examples.json"
    if not index.is_file():
        return []
    try:
        items = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        log.warning("ignoring %s: %s", index, e)
        return []
    out = []
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict) or not item.get("image") or not item.get("question"):
            continue
        path = (folder / str(item["image"])).resolve()
        if path.is_file():
            out.append([str(path), str(item["question"]), str(item.get("answer", ""))])
    return out


def _cache_examples_setting() -> tuple[bool, str | None]:
    v = os.environ.get("OCCAM_APP_CACHE_EXAMPLES", "lazy").strip().lower()
    if v in ("0", "false", "no", "off"):
        return False, None
    return True, ("eager" if v in ("1", "true", "eager") else "lazy")


# Queue sizing, from docs/load.md (measured on the toy model, 2-core CPU): see queue_limits().
DEFAULT_CONCURRENCY = 32          # requests in progress at once; their runs meet in the model's batcher
UNBATCHED_CONCURRENCY = 2         # with batching off ($OCCAM_APP_MAX_BATCH=1): runs in parallel = CPU cores
DEFAULT_QUEUE = 256


def queue_limits() -> tuple[int, int]:
    """(concurrent requests, queue size) from $OCCAM_APP_CONCURRENCY / $OCCAM_APP_QUEUE, else the defaults
    sized in docs/load.md: enough requests in progress at once that their runs fill the model's batches
    (app/batcher.py; 2 = the CPU cores when batching is off), a queue bounded so that a full queue waits
    minutes, not hours, and holds little memory."""
    from .batcher import batching_on
    default = DEFAULT_CONCURRENCY if batching_on() else UNBATCHED_CONCURRENCY
    limit = max(1, int(os.environ.get("OCCAM_APP_CONCURRENCY", default)))
    size = max(1, int(os.environ.get("OCCAM_APP_QUEUE", DEFAULT_QUEUE)))
    return limit, size


def launch_options(demo: gr.Blocks) -> dict:
    """``demo.launch`` keyword arguments of the app (app.py) and its server tests: the upload limit, the one
    file served as is, and the ASGI middleware (public mode: one client's share of the queue)."""
    from starlette.middleware import Middleware
    _, size = queue_limits()
    return {"max_file_size": MAX_UPLOAD, "allowed_paths": [str(spec.METHOD_DOC)],
            "app_kwargs": {"middleware": [Middleware(public.FairShare, blocks=demo, share=public.client_share(size))]}}


MAX_UPLOAD = "64mb"


INSPECTOR_HELP = ("Click a token on the image (or type its index) to see its score at each stage, its rank, the "
                  "threshold and the decision, the register reference it was tested against and, for Stage II, the "
                  "question tokens that drew on it most.")
METHODS_HELP = ("One image and question under occam (α/β calibrated on this input to the target retention) and the "
                "fixed-budget baselines at the same retention, each answer beside its kept-token mask, plus the full "
                "model. Press **Compare methods**.")
SWEEP_HELP = ("Runs the pruned model on the same input across a range of the chosen setting (other knobs as set on "
              "the left) to show where the answer changes.")


def build_demo() -> gr.Blocks:
    """The whole app as a gr.Blocks (queued: see queue_limits)."""
    defaults = default_values()
    specs = {k.name: k for k in backend.knobs()}
    comps: dict[str, gr.components.Component] = {}

    def control(name: str):
        comps[name] = knob_component(specs[name], defaults[name])
        return comps[name]

    with gr.Blocks(title="OccamToken: register-anchored visual-token pruning", delete_cache=(600, 3600)) as demo:
        gr.Markdown("# OccamToken\nAsk a question about an image; the app answers it with the full model and with "
                    "visual tokens pruned, and shows which tokens were kept and why.", elem_id="title")
        gr.Markdown(public.page_note(), elem_id="public-note", visible=public.public_mode())
        # the two kinds of input, as top-level tabs: an image (default) and a video (app/video.py)
        from .runs import build_runs_tab
        from .video import build_video_tab
        with gr.Tabs(elem_id="input-kind") as input_tabs:
            with gr.Tab("Image", id="image", elem_id="image-tab"):
                with gr.Row():
                    with gr.Column(scale=2, min_width=320) as left:
                        image = image_input(label="Image", height=300, sources=["upload", "clipboard"], elem_id="image")
                        image_info = gr.Markdown("", elem_id="image-info")
                        question = gr.Textbox(label="Question", placeholder="What color is the circle?", lines=2,
                                              max_lines=6, elem_id="question")
                        reference = gr.Textbox(label="Reference answer (optional: checks both answers)", max_lines=2,
                                               placeholder="e.g. four", elem_id="reference")
                        control("target_retention")
                        with gr.Row():
                            control("model")
                            control("method")
                        control("thresholds")
                        with gr.Accordion("Pruning knobs", open=False, elem_id="knobs"):
                            gr.Markdown("Empty number fields mean **auto**; any typed value, 0 included, is checked "
                                        "as typed.")
                            for name in ADVANCED_ORDER:
                                if name in specs and name not in comps:
                                    control(name)
                            with gr.Accordion("More knobs", open=False, elem_id="more-knobs"):
                                for k in backend.knobs():  # every other setting, new config fields included
                                    if k.name not in comps and k.name not in ("max_new_tokens", "repeats"):
                                        control(k.name)
                            control("max_new_tokens")
                            control("repeats")
                        with gr.Row():
                            run = gr.Button("Compare full vs pruned", variant="primary", elem_id="run")
                            methods_run = gr.Button("Compare methods", elem_id="methods-run")
                        status = gr.Markdown(model_status(), elem_id="model-status")
                    with gr.Column(scale=3, min_width=300):
                        with gr.Row(equal_height=True):
                            with gr.Column(min_width=200):
                                full_answer = gr.Textbox(label="Full model (method none)", interactive=False,
                                                         max_lines=4, elem_id="full-answer")
                                full_meta = gr.Markdown(elem_id="full-meta")
                            with gr.Column(min_width=200):
                                pruned_answer = gr.Textbox(label="Pruned", interactive=False, max_lines=4,
                                                           elem_id="pruned-answer")
                                pruned_meta = gr.Markdown(elem_id="pruned-meta")
                        agreement_md = gr.Markdown(elem_id="agreement")
                        budget_md = gr.Markdown(elem_id="budget")
                        speed = gr.Markdown(elem_id="speedup")
                        with gr.Tabs(overflow_behavior="wrap"):
                            plots = []
                            for view in render.VIEWS:
                                with gr.Tab(TAB_LABELS[view]):
                                    plots.append(gr.Plot(label=render.VIEW_TITLES[view], elem_id=f"plot-{view}"))
                        with gr.Tabs(overflow_behavior="wrap"):
                            with gr.Tab("Stats"):
                                stats = gr.Markdown(elem_id="stats")
                            with gr.Tab("Token inspector", elem_id="tab-inspector"):
                                gr.Markdown(INSPECTOR_HELP)
                                with gr.Row():
                                    with gr.Column(scale=3, min_width=240):
                                        inspect_img = gr.Image(label="Click a token", interactive=False, type="pil",
                                                               elem_id="inspect-image", buttons=[])
                                    with gr.Column(scale=2, min_width=200):
                                        inspect_token = gr.Number(label="token index", precision=0,
                                                                  elem_id="inspect-token")
                                        inspect_go = gr.Button("Inspect token", elem_id="inspect-go")
                                        inspect_md = gr.Markdown(elem_id="inspector")
                            with gr.Tab("Method comparison", elem_id="tab-methods"):
                                gr.Markdown(METHODS_HELP)
                                methods_html = gr.HTML(elem_id="method-grid")
                                methods_df = gr.Dataframe(headers=render.METHOD_COLUMNS, interactive=False, wrap=True,
                                                          elem_id="method-table")
                                methods_file = gr.File(label="Download (JSON, with every trace)",
                                                       elem_id="methods-file")
                            with gr.Tab("Histograms"):
                                hist = gr.Plot(label="Evidence scores", elem_id="plot-histogram")
                            with gr.Tab("Budget sweep"):
                                gr.Markdown(SWEEP_HELP)
                                with gr.Row():
                                    sweep_param = gr.Radio(list(backend.SWEEP_PARAMS), value="alpha=beta",
                                                           label="Sweep over")
                                    sweep_values = gr.Textbox(backend.DEFAULT_SWEEP_VALUES["alpha=beta"],
                                                              label="Values (comma-separated)")
                                sweep_run = gr.Button("Run sweep", elem_id="sweep-run")
                                sweep_plot = gr.Plot(label="Kept tokens and answers", elem_id="plot-sweep")
                                sweep_md = gr.Markdown(elem_id="sweep-summary")
                                sweep_df = gr.Dataframe(headers=render.SWEEP_COLUMNS, interactive=False, wrap=True)
                        trace_file = gr.File(label="Download the whole trace (JSON)", elem_id="trace-file")
                        with gr.Accordion("Static overlays (PNG)", open=False):
                            gallery = gr.Gallery(columns=3, height="auto", label="Overlays", show_label=False,
                                                 elem_id="gallery")
            build_video_tab()
            runs_tab = build_runs_tab()   # app/runs.py: a whole split; a row opens here, in the Image tab

        state = gr.State(None)
        knobs = [comps[name] for name in KNOBS]
        run_outputs = [full_answer, full_meta, pruned_answer, pruned_meta, agreement_md, budget_md, speed, *plots,
                       hist, stats, trace_file, gallery, status, state, inspect_img, inspect_token, inspect_md]
        inputs = [image, question, reference, *knobs]
        runs_tab.open_in_image_tab(input_tabs, "image", [image, question, reference], run_outputs,
                                   [methods_html, methods_df, methods_file], comparison_outputs, TRACES.write,
                                   [comps["method"], comps["target_retention"]])
        run.click(on_run, inputs, run_outputs, api_visibility="private", concurrency_id="model")
        question.submit(on_run, inputs, run_outputs, api_visibility="private", concurrency_id="model")
        methods_run.click(on_methods, inputs, [methods_html, methods_df, methods_file], api_visibility="private",
                          concurrency_id="model")
        inspect_outs = [inspect_md, inspect_token, inspect_img]
        inspect_img.select(on_inspect_click, [state], inspect_outs, api_visibility="private")
        inspect_go.click(on_inspect_index, [state, inspect_token], inspect_outs, api_visibility="private")
        inspect_token.submit(on_inspect_index, [state, inspect_token], inspect_outs, api_visibility="private")
        image.upload(on_image_change, [image], [image_info, reference], api_visibility="private")
        sweep_param.change(on_sweep_param, [sweep_param], [sweep_values], api_visibility="private")
        sweep_run.click(on_sweep, [image, question, sweep_param, sweep_values, *knobs],
                        [sweep_plot, sweep_df, sweep_md], api_visibility="private", concurrency_id="model")

        examples = load_examples()
        if examples:
            cache, mode = _cache_examples_setting()
            with left:  # below the Run button
                gr.Examples(examples, inputs=[image, question, reference], outputs=run_outputs if cache else None,
                            fn=on_example if cache else None, cache_examples=cache, cache_mode=mode,
                            label="Examples (run with the default settings)", examples_per_page=8)

        # public JSON API (gradio_client): Client(url).predict(handle_file(img), "question", {...}, api_name="/compare")
        with gr.Row(visible=False):
            api_settings = gr.JSON(value={}, label="settings")
            api_reference = gr.Textbox("", label="reference")
            api_param = gr.Textbox("alpha=beta", label="param")
            api_values = gr.Textbox("", label="values")
            api_trace = gr.JSON(value={}, label="trace")
            api_token = gr.Textbox("", label="token")
            api_out = gr.JSON(label="result")
            api_button = gr.Button("api")
            api_methods_button = gr.Button("api methods")
            api_inspect_button = gr.Button("api inspect")
            api_sweep_button = gr.Button("api sweep")
        api_button.click(api_compare, [image, question, api_settings, api_reference], api_out, api_name="compare",
                         concurrency_id="model")
        api_methods_button.click(api_methods, [image, question, api_settings, api_reference], api_out,
                                 api_name="methods", concurrency_id="model")
        api_inspect_button.click(api_inspect, [api_trace, api_token], api_out, api_name="inspect")
        api_sweep_button.click(api_sweep, [image, question, api_settings, api_param, api_values], api_out,
                               api_name="sweep", concurrency_id="model")
    limit, size = queue_limits()
    demo.queue(default_concurrency_limit=limit, max_size=size)
    return demo
