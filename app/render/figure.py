"""The plotly figures: one overlay view on the original image (a heatmap per tile, registers outlined,
box-less tokens as a strip of squares, hover per token) and the histogram of evidence scores."""
from __future__ import annotations

import base64
import io
import math
from typing import Any, Mapping

import numpy as np
import plotly.graph_objects as go
from PIL import Image

from .geometry import _boxless, tile_grids
from .traces import VIEWS, _fmt, _threshold_label, as_dict, hover_texts, token_view
from .views import DIM_RGBA, DROPPED_RGBA, EVIDENCE_STOPS, KEPT_RGBA, REGISTER_RGB, _rgb, _rgba, log_scores, log_ticks, view_values

BACKGROUND_MAX_SIDE = 768            # the figure's background image is downscaled to this (display only)
STRIP_SIDE_FRAC = 0.045              # size of a box-less token's square, as a share of the image width


def image_data_uri(image: Image.Image, max_side: int = BACKGROUND_MAX_SIDE) -> str:
    """The image, downscaled for display, as a JPEG data URI (the figure stretches it to full size)."""
    img = image.convert("RGB")
    scale = max_side / max(img.size)
    if scale < 1:
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def token_figure(image: Image.Image | None, trace: Any, view: str, *, texts: list[str] | None = None,
                 background: str | None = None) -> go.Figure:
    """One overlay view on the original image: a heatmap per tile, registers outlined, hover per token.

    ``texts`` / ``background`` (hover texts, image data URI) may be passed in when drawing several views.
    """
    trace = as_dict(trace)
    spec = view_values(trace, view)
    width, height = (int(v) for v in trace["image_size"])
    texts = texts if texts is not None else hover_texts(trace)
    vals = spec["values"]
    fig = go.Figure()
    grids = tile_grids(trace)
    multi = len(grids) > 1
    earlier = set(spec.get("earlier") or [])
    dropped = set(spec.get("dropped") or [])
    shown_scale = False
    for k, g in enumerate(grids):
        ny, nx = len(g["y"]) - 1, len(g["x"]) - 1
        z = np.full((ny, nx), np.nan)
        gone = np.full((ny, nx), np.nan)
        dim = np.full((ny, nx), np.nan)
        text = np.full((ny, nx), "", dtype=object)
        for j, (r, c) in zip(g["tokens"], g["cells"]):
            v = vals[j]
            z[r, c] = np.nan if v is None else v
            text[r, c] = texts[j]
            if j in earlier:
                gone[r, c] = 1.0
            elif j in dropped:
                dim[r, c] = 1.0
        name = ("base image" if g["tile"] == 0 else "high-res tiles") if multi else "tokens"
        first_of_group = k == 0 or (g["tile"] != 0 and grids[k - 1]["tile"] == 0)
        visible = "legendonly" if multi and g["tile"] == 0 else True
        scale = bool(spec["colorbar"]) and visible is True and not shown_scale
        shown_scale = shown_scale or scale
        group = "base" if g["tile"] == 0 else "tiles"
        colorbar = None
        if spec["colorbar"]:
            colorbar = dict(title=dict(text=spec["colorbar"] + (" (log)" if spec.get("log") else ""), side="right"),
                            len=0.8, thickness=14)
            if spec.get("log"):
                tv, tt = log_ticks(spec["zmid"], (spec["zmax"] - spec["zmin"]) / 2, spec.get("threshold"),
                                   spec.get("threshold_label", "threshold"))
                colorbar.update(tickvals=tv, ticktext=tt)
        fig.add_trace(go.Heatmap(
            x=g["x"], y=g["y"], z=z, text=text, hoverinfo="text", hoverongaps=True, name=name,
            colorscale=spec["colorscale"], zmin=spec["zmin"], zmax=spec["zmax"], showscale=scale,
            colorbar=colorbar,
            opacity=0.75 if spec["kind"] == "continuous" else 1.0,
            # LLaVA-NeXT: base image and high-res tiles overlap; a legend click switches between them
            showlegend=multi and first_of_group, legendgroup=group, visible=visible,
            xgap=0, ygap=0, meta={"tile": g["tile"], "role": "tokens"},
        ))
        if np.isfinite(gone).any():  # tokens a previous stage dropped: greyed out, hover from the layer below
            fig.add_trace(go.Heatmap(
                x=g["x"], y=g["y"], z=gone, hoverinfo="skip", showscale=False, showlegend=False,
                colorscale=[[0, _rgba(DROPPED_RGBA)], [1, _rgba(DROPPED_RGBA)]], zmin=0, zmax=1,
                legendgroup=group, visible=visible, name=f"{name}: dropped earlier",
                meta={"tile": g["tile"], "role": "dropped earlier"},
            ))
        if np.isfinite(dim).any():  # dropped at this stage: dimmed, the evidence colour still visible
            fig.add_trace(go.Heatmap(
                x=g["x"], y=g["y"], z=dim, hoverinfo="skip", showscale=False, showlegend=False,
                colorscale=[[0, _rgba(DIM_RGBA)], [1, _rgba(DIM_RGBA)]], zmin=0, zmax=1,
                legendgroup=group, visible=visible, name=f"{name}: dropped here",
                meta={"tile": g["tile"], "role": "dropped here"},
            ))
    # box-less tokens (explicit registers, row ends): a strip of squares under the image
    strip = _boxless(trace)
    y_bottom = height
    if strip:
        side = max(width * STRIP_SIDE_FRAC * 2, 1.0)
        per_row = max(1, int(width // (side * 1.25)))
        xs, ys = [], []
        for i in range(len(strip)):
            xs.append((i % per_row) * side * 1.25 + side / 2)
            ys.append(height + side * 0.8 + (i // per_row) * side * 1.25 + side / 2)
        y_bottom = max(ys) + side * 1.8  # room for the labels under the squares
        pos = dict(zip(strip, zip(xs, ys)))
        numeric = [j for j in strip if spec["kind"] == "continuous" and vals[j] is not None and j not in earlier]
        flat = [j for j in strip if j not in numeric]

        def flat_color(j: int) -> str:
            if j in earlier or (spec["kind"] == "mask" and vals[j] is not None and vals[j] < 0.5):
                return _rgba(DROPPED_RGBA)
            return _rgba(KEPT_RGBA) if spec["kind"] == "mask" and vals[j] is not None else "lightgray"

        for group, colors in ((numeric, [vals[j] for j in numeric]), (flat, [flat_color(j) for j in flat])):
            if not group:
                continue
            fig.add_trace(go.Scatter(
                x=[pos[j][0] for j in group], y=[pos[j][1] for j in group], mode="markers+text",
                name="tokens without a box", hoverinfo="text", hovertext=[texts[j] for j in group],
                text=[f"R{j}" if j in spec["registers"] else str(j) for j in group], textposition="bottom center",
                textfont=dict(size=11, color="#444"), showlegend=False,
                meta={"tokens": group, "role": "boxless"},
                marker=dict(symbol="square", size=22, color=colors, colorscale=spec["colorscale"]
                            if group is numeric else None, cmin=spec["zmin"], cmax=spec["zmax"],
                            line=dict(width=[3 if j in spec["registers"] else 1 for j in group],
                                      color=[_rgb(REGISTER_RGB) if j in spec["registers"] else "gray"
                                             for j in group])),
            ))
        fig.add_annotation(x=0, y=height + side * 0.4, xref="x", yref="y", showarrow=False, xanchor="left",
                           yanchor="middle", text="no box: R = register",
                           font=dict(size=12, color="#444"))
    # registers with a box: outlined rectangles
    boxes = trace.get("boxes") or []
    for j in spec["registers"]:
        if j < len(boxes) and boxes[j] is not None:
            x0, y0, x1, y1 = boxes[j]
            fig.add_shape(type="rect", x0=x0, y0=y0, x1=x1, y1=y1, xref="x", yref="y",
                          line=dict(color=_rgb(REGISTER_RGB), width=2), name=f"register {j}")
    for label, color, outline in _legend_items(spec):
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=label, hoverinfo="skip",
                                 marker=dict(symbol="square", size=14, color=color,
                                             line=dict(color=outline or "gray", width=2 if outline else 1)),
                                 meta={"role": "legend"}))
    if image is not None or background is not None:
        fig.add_layout_image(source=background or image_data_uri(image), x=0, y=0, sizex=width, sizey=height, xref="x",
                             yref="y", xanchor="left", yanchor="top", sizing="stretch", layer="below")
    fig.update_xaxes(range=[0, width], showgrid=False, zeroline=False, constrain="domain", visible=False)
    fig.update_yaxes(range=[y_bottom, 0], showgrid=False, zeroline=False, scaleanchor="x", scaleratio=1,
                     constrain="domain", visible=False)
    fig.update_layout(title=dict(text=spec["title"], font=dict(size=14)), margin=dict(l=10, r=10, t=60, b=10),
                      plot_bgcolor="white", hovermode="closest", dragmode="pan",
                      legend=dict(orientation="h", y=-0.02, x=0, font=dict(size=12)), meta={"view": view})
    return fig


def _legend_items(spec: Mapping) -> list[tuple[str, str, str | None]]:
    """(label, fill, outline) of the legend of a view: what kept, dropped and registers look like."""
    items = []
    if spec.get("log"):
        lo, hi = EVIDENCE_STOPS[-1][1], EVIDENCE_STOPS[0][1]
        items += [("above threshold", f"rgb{lo}", None), ("below threshold", f"rgb{hi}", None)]
        if spec.get("dropped"):
            items.append(("dropped here (dimmed)", _rgba(DIM_RGBA), None))
    elif spec["kind"] == "mask":
        items += [("kept", _rgba(KEPT_RGBA), None), ("dropped", _rgba(DROPPED_RGBA), None)]
    if spec.get("earlier"):
        items.append(("dropped at an earlier stage", _rgba(DROPPED_RGBA), None))
    if spec.get("registers"):
        items.append(("register", "rgba(0,0,0,0)", _rgb(REGISTER_RGB)))
    return items


def all_token_figures(image: Image.Image | None, trace: Any) -> dict[str, go.Figure]:
    trace = as_dict(trace)
    texts = hover_texts(trace)
    background = image_data_uri(image) if image is not None else None
    return {view: token_figure(image, trace, view, texts=texts, background=background) for view in VIEWS}


def histogram_figure(trace: Any) -> go.Figure:
    """Histogram of the evidence scores of each scored stage, kept vs dropped, threshold line."""
    trace = as_dict(trace)
    view = token_view(trace)
    stages = [sv for sv in view.stages if any(s is not None for s in sv.scores)]
    fig = go.Figure()
    if not stages:
        fig.add_annotation(text="No evidence scores in this run (method none or random).", showarrow=False,
                           xref="paper", yref="paper", x=0.5, y=0.5)
        fig.update_layout(title="Evidence scores", xaxis_visible=False, yaxis_visible=False)
        return fig
    from plotly.subplots import make_subplots
    titles = [f"{sv.label}: {sv.stage['n_in']} → {sv.stage['n_out']}"
              + (f" · {_threshold_label(sv.stage)} = {_fmt(sv.stage['threshold'])}"
                 if sv.stage.get("threshold") is not None else "")
              for sv in stages]
    # one row per stage (stacked: readable at phone width), log10(s) like the evidence heatmaps
    fig = make_subplots(rows=len(stages), cols=1, subplot_titles=titles, vertical_spacing=0.36 / len(stages))
    for k, sv in enumerate(stages, start=1):
        st = sv.stage
        logs, centre, half = log_scores(list(sv.scores), st.get("threshold"))
        kept_s, dropped_s = [], []
        for j, v in enumerate(logs):
            if v is None or not sv.entered[j] or j in sv.registers:
                continue
            (kept_s if sv.kept[j] else dropped_s).append(v)
        for vals, label, color in ((kept_s, "kept", "#2ecc71"), (dropped_s, "dropped", "#34495e")):
            fig.add_trace(go.Histogram(x=vals, name=f"{label}", marker_color=color, opacity=0.8, nbinsx=30,
                                       legendgroup=label, showlegend=k == 1, meta={"stage": st["name"]},
                                       hovertemplate=f"{label}: %{{y}} tokens<extra></extra>"),
                          row=k, col=1)
        thr = st.get("threshold")
        if thr is not None and thr > 0:
            fig.add_vline(x=math.log10(thr), line=dict(color="crimson", width=2, dash="dash"), row=k, col=1)
        tv, tt = log_ticks(centre, half, None, "")
        name = "s = e/ρ" if st.get("reference_kind") != "budget" else "score"
        fig.update_xaxes(title_text=f"{name} (log)", tickvals=tv, ticktext=tt,
                         range=[centre - half, centre + half], row=k, col=1)
        fig.update_yaxes(title_text="tokens", row=k, col=1)
    fig.update_layout(barmode="stack", title="Evidence scores<br><sup>candidates only · dashed: threshold</sup>",
                      autosize=True, height=140 + 280 * len(stages), margin=dict(l=50, r=10, t=80, b=40),
                      legend=dict(orientation="h", y=-0.08, x=0, yanchor="top"))
    return fig
