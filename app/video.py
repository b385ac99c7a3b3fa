"""The app's video path: run a clip full and pruned, draw a strip of frames with each frame's kept tokens
and evidence, plot the tokens kept per frame over time, and the Gradio tab that shows them.

Self-contained on purpose (its own settings and config), so that it does not depend on the image tab's
settings parsing; it shares the image tab's model cache (``backend.MODELS``). Errors a person can act
on (no clip, a corrupt / truncated / too long / unsupported video, a model that takes images only)
are ``ValueError`` / ``ModelLoadError`` here and a ``gr.Error`` in the UI; the app keeps serving.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import plotly.graph_objects as go
from PIL import Image, ImageDraw

import occam
from occam import methods as registry
from occam.inputs import check_question
from occam.models import video_families

from . import backend, public
from .handlers import reporter, user_errors

DEFAULT_VIDEO_MODEL = "tiny-video-llava"   # offline: random weights, shows the pipeline, not sensible answers
VIDEO_MODEL_CHOICES = ["tiny-video-llava", "tiny-qwen2.5-vl", "tiny-qwen3-vl", "LanguageBind/Video-LLaVA-7B-hf",
                       "Qwen/Qwen2.5-VL-7B-Instruct", "Qwen/Qwen3-VL-8B-Instruct"]
VIDEO_METHODS = registry.PRUNING_METHODS


def video_model_choices() -> list[str]:
    """The video model box's list (in public mode: the allow-listed ones, ``app/public.py``)."""
    if not public.public_mode():
        return VIDEO_MODEL_CHOICES
    return [m for m in VIDEO_MODEL_CHOICES if m in public.allowed_models()]
KEPT, STAGE2_DROP, DIM = (40, 200, 90), (255, 150, 30), (0, 0, 0, 150)


# -- backend --------------------------------------------------------------------------------------------
@dataclass
class VideoComparison:
    video: occam.Video
    question: str
    model: str
    family: str
    config: occam.OccamConfig
    full: Any        # occam.Result, method none
    pruned: Any      # occam.Result


def video_config(method: str = occam.OccamConfig.method, alpha: float = 1.0, beta: float = 1.0, retention: float = 0.25,
                 temporal_similarity: float | None = None) -> occam.OccamConfig:
    """The pruned run's config from the tab's knobs (OccamConfig validates and names what it accepts)."""
    t = None if temporal_similarity in (None, "", 0) else float(temporal_similarity)
    return occam.OccamConfig(method=method, alpha=float(alpha), beta=float(beta), retention=float(retention),
                             temporal_similarity=t)


def run_video_compare(video: Any, question: Any, model: str = DEFAULT_VIDEO_MODEL, config: occam.OccamConfig | None
                      = None, max_new_tokens: int = 16, cache: backend.ModelCache | None = None,
                      progress: Callable[[float, str], None] | None = None) -> VideoComparison:
    """The full model (method none) and the pruned run on the same sampled clip."""
    progress = progress or (lambda *_: None)
    if video is None or (isinstance(video, str) and not video.strip()):
        raise ValueError("No video: upload a clip (MP4, MOV, AVI, MKV, WebM).")
    if question is None or not isinstance(question, str):
        raise ValueError("The question is empty: type a question about the video.")
    q = check_question(question)
    cfg = config or video_config()
    vlm = (cache or backend.MODELS).get(model, progress)
    if not vlm.takes_video:
        raise ValueError(f"The model {model!r} ({vlm.family}) takes images only; for video choose one of: "
                         + ", ".join(video_families()) + ".")
    progress(0.1, "reading the video ...")
    clip = video if isinstance(video, occam.Video) else occam.read_video(video, **vlm.adapter.video_sampling())
    progress(0.3, "full model (method none) ...")
    full = vlm.generate(clip, q, config=occam.OccamConfig(method=registry.FULL), max_new_tokens=max_new_tokens)
    progress(0.65, f"pruned run (method {cfg.method}) ...")
    pruned = vlm.generate(clip, q, config=cfg, max_new_tokens=max_new_tokens)
    return VideoComparison(clip, q, model, vlm.family, cfg, full, pruned)


# -- render (pure functions of a clip and a trace dict) ------------------------------------------------
def _trace(t: Any) -> dict:
    return t if isinstance(t, dict) else t.to_dict()


def frame_strip(video: occam.Video, trace: Any, thumb_height: int = 150, max_frames: int = 16) -> Image.Image:
    """Every frame (up to ``max_frames``, evenly chosen) with its tokens: dropped by Stage I dimmed,
    dropped by Stage II outlined orange, kept outlined green with a fill as strong as its Stage-I evidence."""
    tr = _trace(trace)
    n_frames = len(tr["frame_times"])
    stage1 = next((s for s in tr["stages"] if s["name"] in registry.vision_stages()), None)
    kept1 = stage1["kept"] if stage1 else [True] * tr["num_visual"]
    scores = stage1["scores"] if stage1 else [None] * tr["num_visual"]
    finite = [s for s in scores if s is not None]
    top = max(finite) if finite else 1.0
    show = sorted({round(i * (n_frames - 1) / max(1, min(n_frames, max_frames) - 1)) for i in
                   range(min(n_frames, max_frames))})
    w0, h0 = video.size
    scale = thumb_height / h0
    tw, label_h, gap = max(1, round(w0 * scale)), 30, 6
    strip = Image.new("RGB", (len(show) * (tw + gap) - gap, thumb_height + label_h), (255, 255, 255))
    per = tr["counts"]["per_frame"]
    for slot, f in enumerate(show):
        src = _source_frame(video, tr, f)
        thumb = src.resize((tw, thumb_height)).convert("RGBA")
        layer = Image.new("RGBA", thumb.size, (0, 0, 0, 0))
        draw = ImageDraw.Draw(layer)
        for j, (frame, box) in enumerate(zip(tr["frames"], tr["boxes"])):
            if frame != f or box is None:
                continue
            x0, y0, x1, y1 = (v * scale for v in box)
            if not kept1[j]:
                draw.rectangle([x0, y0, x1, y1], fill=DIM)
            elif not tr["kept"][j]:
                draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=STAGE2_DROP + (255,))
            else:
                s = scores[j] if scores[j] is not None else top
                draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=KEPT + (int(40 + 120 * min(1.0, s / top)),),
                               outline=KEPT + (255,))
        thumb = Image.alpha_composite(thumb, layer).convert("RGB")
        x = slot * (tw + gap)
        strip.paste(thumb, (x, label_h))
        label = (f"t={tr['frame_times'][f]:.1f}s  kept {per['final'][f]}/{per['visual'][f]}\n"
                 f"after I: {per['after_stage1'][f]}")
        ImageDraw.Draw(strip).multiline_text((x + 2, 1), label, fill=(20, 20, 20), spacing=1)
    return strip


def _source_frame(video: occam.Video, tr: dict, f: int) -> Image.Image:
    """The clip frame shown for trace frame ``f`` (Qwen: the first frame of its temporal patch)."""
    per_frame = len(video) / max(1, len(tr["frame_times"]))
    return video.frames[min(len(video) - 1, int(round(f * per_frame)))]


def per_frame_figure(trace: Any) -> go.Figure:
    """Tokens per frame over time: visual, after Stage I, final."""
    tr = _trace(trace)
    per, x = tr["counts"]["per_frame"], tr["frame_times"]
    fig = go.Figure()
    for key, name, dash in (("visual", "visual tokens", "dot"), ("after_stage1", "after Stage I", "dash"),
                            ("final", "kept (final)", "solid")):
        fig.add_trace(go.Scatter(x=x, y=per[key], mode="lines+markers", name=name, line={"dash": dash}))
    fig.update_layout(xaxis_title="time (s)", yaxis_title="tokens per frame", height=300,
                      margin={"l": 40, "r": 10, "t": 40, "b": 40},   # legend above the plot, clear of the x title
                      legend={"orientation": "h", "x": 1, "y": 1.02, "xanchor": "right", "yanchor": "bottom"})
    return fig


def video_summary_markdown(comp: VideoComparison) -> str:
    f, p = comp.full.trace, comp.pruned.trace
    c = p.counts
    return (f"**{comp.model}** ({comp.family}) · {len(f.frame_times)} frames from a {len(comp.video)}-frame "
            f"sample · {c['visual']} visual tokens → {c['after_stage1']} after Stage I → {c['final']} kept "
            f"({100 * c['retention']:.1f}%) · prefill {f.timings['prefill_s']:.2f} s → {p.timings['prefill_s']:.2f} s"
            f" (one run each, no spread: not a benchmark)"
            f" · FLOPs-ideal prefill × {p.flops['prefill_full'] / max(1, p.flops['prefill']):.2f} (estimate)")


# -- UI -------------------------------------------------------------------------------------------------
@public.gpu(lambda *args, **_: public.Work(2, int(args[8] or 16) if len(args) > 8 else 16))
@user_errors
def on_video_run(video, question, model, method, alpha, beta, retention, temporal, max_new, progress=None):
    """The tab's button: both answers, the frame strip, the per-frame plot and a summary."""
    comp = run_video_compare(video, question, model or DEFAULT_VIDEO_MODEL,
                             video_config(method, alpha, beta, retention, temporal), int(max_new or 16),
                             progress=reporter(progress))
    return (comp.full.text, comp.pruned.text, frame_strip(comp.video, comp.pruned.trace),
            per_frame_figure(comp.pruned.trace), video_summary_markdown(comp))


def build_video_tab() -> None:
    """The "Video" tab; call inside a ``gr.Blocks`` (app/ui.py does)."""
    import gradio as gr

    with gr.Tab("Video", elem_id="video-tab"):
        gr.Markdown("Ask about a clip: frames are sampled uniformly with their timestamps; Stage I tests each "
                    "frame against its own register reference, Stage II prunes over all frames with one query "
                    "reference. Models that take video: " + ", ".join(video_families()) + ".")
        with gr.Row():
            with gr.Column(scale=2, min_width=320):
                video = gr.Video(label="Video", sources=["upload"], elem_id="video-input")
                question = gr.Textbox(label="Question", placeholder="What moves in the video?", lines=2,
                                      elem_id="video-question")
                with gr.Row():
                    model = gr.Dropdown(video_model_choices(), value=DEFAULT_VIDEO_MODEL,
                                        allow_custom_value=not public.public_mode(),
                                        label="Video model (tiny-*: random weights, offline)", elem_id="video-model")
                    method = gr.Dropdown(list(VIDEO_METHODS), value=occam.OccamConfig.method, label="Method")
                with gr.Row():
                    alpha = gr.Number(1.0, label="α (Stage I)", minimum=0, step=0.05)
                    beta = gr.Number(1.0, label="β (Stage II)", minimum=0, step=0.05)
                    retention = gr.Number(0.25, label="budget (fixed-budget methods)", minimum=0, maximum=1)
                with gr.Row():
                    temporal = gr.Number(None, label="temporal repeats: cosine ≥ (empty or 0: off)", minimum=-1,
                                         maximum=1)
                    max_new = gr.Slider(1, 64, value=16, step=1, label="max new tokens")
                run = gr.Button("Compare full vs pruned on the video", variant="primary", elem_id="video-run")
            with gr.Column(scale=3, min_width=420):
                with gr.Row(equal_height=True):
                    full = gr.Textbox(label="Full model (method none)", interactive=False, elem_id="video-full")
                    pruned = gr.Textbox(label="Pruned", interactive=False, elem_id="video-pruned")
                summary = gr.Markdown(elem_id="video-summary")
                strip = gr.Image(label="Frames: kept tokens (green, fill = Stage-I evidence), dropped at Stage II "
                                       "(orange), dropped at Stage I (dimmed)", type="pil", elem_id="video-strip")
                plot = gr.Plot(label="Tokens kept per frame", elem_id="video-plot")

        def handler(v, q, m, meth, a, b, r, t, n, progress=gr.Progress()):
            return on_video_run(v, q, m, meth, a, b, r, t, n, progress=progress)

        run.click(handler, [video, question, model, method, alpha, beta, retention, temporal, max_new],
                  [full, pruned, strip, plot, summary], api_name="video_compare", concurrency_id="model")
