"""The Gradio interface: layout and thin event handlers over ``backend`` (runs) and ``render`` (views).

Handlers are plain module functions (unit-tested directly): they turn UI values into backend
calls and backend results into component values, and turn every failure into a ``gr.Error``
carrying the message (bad image, empty question, invalid knob, model that cannot be loaded).
"""
from __future__ import annotations

import functools
import json
import logging
import os
import tempfile
from pathlib import Path
import gradio as gr

import occam

from . import backend, render

log = logging.getLogger("occam.app")
REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES_DIR = REPO_ROOT / "assets" / "examples"

try:  # Hugging Face ZeroGPU: run the model-bound handlers on a borrowed GPU; a no-op elsewhere
    import spaces  # type: ignore

    gpu = spaces.GPU(duration=120)
except Exception:  # the package is absent (or unusable): plain functions
    def gpu(fn):
        return fn

# The knobs, in the order the handlers receive them after (image, question).
KNOBS = ("model", "method", "alpha", "beta", "stage1", "stage2", "stage2_layer", "reference", "keep_registers",
         "min_tokens", "max_tokens", "target_retention", "max_new_tokens")
TAB_LABELS = {"final": "Final kept", "stage1_evidence": "Stage I evidence", "stage1_mask": "Stage I mask",
              "stage2_evidence": "Stage II evidence", "registers": "Registers"}


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
# handlers
# ---------------------------------------------------------------------------------------------
def user_errors(fn):
    """Every failure of a handler reaches the user as a gr.Error with its message; the app goes on."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except (ValueError, TypeError, FileNotFoundError, backend.ModelLoadError) as e:
            raise gr.Error(str(e), print_exception=False) from None
        except Exception as e:  # a bug or resource problem: still a message, never a crash
            log.exception("handler %s failed", fn.__name__)
            raise gr.Error(f"Unexpected error ({type(e).__name__}): {e}") from None

    return wrapper


def _settings(knobs: tuple) -> dict:
    if len(knobs) != len(KNOBS):
        raise TypeError(f"expected {len(KNOBS)} knob values ({', '.join(KNOBS)}), got {len(knobs)}")
    return dict(zip(KNOBS, knobs))


def _reporter(progress) -> backend.Progress:
    def report(fraction: float, desc: str = "") -> None:
        if progress is not None:
            try:
                progress(fraction, desc=desc)
            except Exception:  # progress outside a request (tests, scripts): ignore
                pass
    return report


def _write_trace(comp: backend.Comparison) -> str:
    folder = tempfile.mkdtemp(prefix="occam_trace_")
    path = os.path.join(folder, "occam_trace.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(comp.to_dict(), f, indent=1)
    return path


def model_status(cache: backend.ModelCache | None = None) -> str:
    cache = cache or backend.MODELS
    loaded = cache.loaded()
    now = cache.current
    return (f"Serving **{now}** on {backend.device()}" if now else
            f"No model loaded yet (the first run loads **{backend.default_model()}**)") + (
        f" · cached: {', '.join(loaded)}" if len(loaded) > 1 else "")


@gpu
@user_errors
def on_run(image, question, *knobs, progress=gr.Progress()):
    """Run button: full and pruned answers, stats, the five overlays, histogram, trace file."""
    comp = backend.run_compare(image, question, _settings(knobs), progress=_reporter(progress))
    return comparison_outputs(comp)


def comparison_outputs(comp: backend.Comparison) -> tuple:
    """The values of RUN_OUTPUTS for one comparison (also used for cached examples)."""
    full, pruned = comp.full.trace.to_dict(), comp.pruned.trace.to_dict()
    figs = render.all_token_figures(comp.image, pruned)
    gallery = [(render.overlay_image(comp.image, pruned, v), render.VIEW_TITLES[v]) for v in render.VIEWS]
    return (
        comp.full.text,
        render.run_summary_markdown(full, "Full model"),
        comp.pruned.text,
        render.run_summary_markdown(pruned, "Pruned"),
        render.speedup_markdown(full, pruned),
        *[figs[v] for v in render.VIEWS],
        render.histogram_figure(pruned),
        render.stats_markdown(full, pruned),
        _write_trace(comp),
        gallery,
        model_status(),
    )


@gpu
@user_errors
def on_example(image, question, reference_answer=None, progress=gr.Progress()):
    """An example row (image, question, reference answer) run with the default settings."""
    comp = backend.run_compare(image, question, {}, progress=_reporter(progress))
    return comparison_outputs(comp)


@gpu
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
    from PIL import Image

    from occam.inputs import open_image
    img = open_image(image)
    note = ""
    if isinstance(image, (str, os.PathLike)):
        with Image.open(image) as raw:
            frames = getattr(raw, "n_frames", 1)
            rotated = raw.getexif().get(0x0112, 1) not in (0, 1)  # EXIF orientation
            note = (f" (file: {raw.format}, mode {raw.mode}" + (f", {frames} frames: the first is used" if frames > 1
                                                                else "")
                    + (", EXIF rotation applied" if rotated else "") + ")")
    return f"Image {img.width}×{img.height} RGB{note}", ""


def on_sweep_param(param):
    """Sweep parameter changed: propose sensible default values for it."""
    return backend.DEFAULT_SWEEP_VALUES.get(param, "")


@gpu
@user_errors
def api_compare(image, question, settings=None):
    """Public API "compare": both answers, counts, timings, speed-up and both traces as one JSON dict."""
    return backend.run_compare(image, question, settings).to_dict()


@gpu
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


def build_demo() -> gr.Blocks:
    """The whole app as a gr.Blocks (queued: concurrency limit from $OCCAM_APP_CONCURRENCY)."""
    d = backend.Settings()
    with gr.Blocks(title="OccamToken: register-anchored visual-token pruning") as demo:
        gr.Markdown("# OccamToken\nAsk a question about an image; the app answers it with the full model and with "
                    "visual tokens pruned, and shows which tokens were kept and why.", elem_id="title")
        with gr.Row():
            with gr.Column(scale=2, min_width=320) as left:
                image = image_input(label="Image", height=300, sources=["upload", "clipboard"], elem_id="image")
                image_info = gr.Markdown("", elem_id="image-info")
                question = gr.Textbox(label="Question", placeholder="What color is the circle?", lines=2,
                                      max_lines=6, elem_id="question")
                reference = gr.Textbox(label="Reference answer (examples)", interactive=False, max_lines=2)
                with gr.Row():
                    model = gr.Dropdown(backend.model_choices(), value=d.model, allow_custom_value=True,
                                        label="Model (choose, or type a hub id / local folder)", elem_id="model")
                    method = gr.Dropdown(list(occam.METHODS), value=d.method, label="Method",
                                         elem_id="method")
                with gr.Accordion("Pruning knobs", open=False):
                    with gr.Row():
                        alpha = gr.Number(d.alpha, label="α (Stage I threshold)", minimum=0, step=0.05)
                        beta = gr.Number(d.beta, label="β (Stage II threshold)", minimum=0, step=0.05)
                    with gr.Row():
                        stage1 = gr.Checkbox(d.stage1, label="Stage I (vision encoder)")
                        stage2 = gr.Checkbox(d.stage2, label="Stage II (inside the LM)")
                        keep_registers = gr.Checkbox(d.keep_registers, label="keep registers")
                    with gr.Row():
                        stage2_layer = gr.Number(None, label="Stage II layer K (empty: auto)", precision=0,
                                                 minimum=0)
                        reference_kind = gr.Radio(list(backend.REFERENCES), value=d.reference,
                                                  label="Reference")
                    with gr.Row():
                        min_tokens = gr.Number(None, label="min tokens (rail)", precision=0, minimum=0)
                        max_tokens = gr.Number(None, label="max tokens (rail)", precision=0, minimum=0)
                    with gr.Row():
                        target = gr.Number(None, label="target retention (0-1; occam: calibrates α/β; "
                                                       "baselines: budget, default 0.5)", minimum=0, maximum=1,
                                           step=0.05)
                        max_new = gr.Slider(1, backend.MAX_NEW_TOKENS, value=d.max_new_tokens, step=1,
                                            label="max new tokens")
                run = gr.Button("Compare full vs pruned", variant="primary", elem_id="run")
                status = gr.Markdown(model_status(), elem_id="model-status")
            with gr.Column(scale=3, min_width=420):
                with gr.Row(equal_height=True):
                    with gr.Column():
                        full_answer = gr.Textbox(label="Full model (method none)", interactive=False, max_lines=4,
                                                 elem_id="full-answer")
                        full_meta = gr.Markdown(elem_id="full-meta")
                    with gr.Column():
                        pruned_answer = gr.Textbox(label="Pruned", interactive=False, max_lines=4,
                                                   elem_id="pruned-answer")
                        pruned_meta = gr.Markdown(elem_id="pruned-meta")
                speed = gr.Markdown(elem_id="speedup")
                with gr.Tabs():
                    plots = []
                    for view in render.VIEWS:
                        with gr.Tab(TAB_LABELS[view]):
                            plots.append(gr.Plot(label=render.VIEW_TITLES[view], elem_id=f"plot-{view}"))
                with gr.Tabs():
                    with gr.Tab("Stats"):
                        stats = gr.Markdown(elem_id="stats")
                    with gr.Tab("Histograms"):
                        hist = gr.Plot(label="Evidence scores", elem_id="plot-histogram")
                    with gr.Tab("Budget sweep"):
                        gr.Markdown("Runs the pruned model on the same input across a range of the chosen "
                                    "setting (other knobs as set on the left) to show where the answer changes.")
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
                    gallery = gr.Gallery(columns=5, height="auto", label="Overlays", show_label=False)

        # --- video tab (app/video.py): begin ---
        from .video import build_video_tab
        with gr.Tabs():
            build_video_tab()
        # --- video tab: end ---

        knobs = [model, method, alpha, beta, stage1, stage2, stage2_layer, reference_kind, keep_registers,
                 min_tokens, max_tokens, target, max_new]
        run_outputs = [full_answer, full_meta, pruned_answer, pruned_meta, speed, *plots, hist, stats,
                       trace_file, gallery, status]
        run.click(on_run, [image, question, *knobs], run_outputs, api_visibility="private",
                  concurrency_id="model")
        question.submit(on_run, [image, question, *knobs], run_outputs, api_visibility="private",
                        concurrency_id="model")
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
            api_param = gr.Textbox("alpha=beta", label="param")
            api_values = gr.Textbox("", label="values")
            api_out = gr.JSON(label="result")
            api_button = gr.Button("api")
            api_sweep_button = gr.Button("api sweep")
        api_button.click(api_compare, [image, question, api_settings], api_out, api_name="compare",
                         concurrency_id="model")
        api_sweep_button.click(api_sweep, [image, question, api_settings, api_param, api_values], api_out,
                               api_name="sweep", concurrency_id="model")
    limit = max(1, int(os.environ.get("OCCAM_APP_CONCURRENCY", "2")))
    demo.queue(default_concurrency_limit=limit, max_size=int(os.environ.get("OCCAM_APP_QUEUE", "32")))
    return demo

