"""Pure rendering: a run's trace (+ the original image) -> plotly figures, overlay PNGs, markdown.

Everything here reads only the JSON form of ``occam.Trace`` (``trace.to_dict()``), so it works the
same for a live run, the public API's answer and a downloaded trace file. No gradio, no torch.

Geometry: each visual token has a box ``[x0, y0, x1, y1]`` in ORIGINAL image pixels (or None for
explicit registers and LLaVA-NeXT row ends) and a grid position ``[tile, row, col]``. The tokens of
one tile form a grid, drawn as one ``go.Heatmap`` whose cell edges are taken from the boxes, so a
token's cell sits exactly on its box. Tokens without a box are drawn as a strip of squares below
the image. Hovering any token shows the same text in every view (index, grid, scores, thresholds,
register flag, decision per stage).
"""
from __future__ import annotations

import base64
import io
import math
from typing import Any, Mapping

import numpy as np
import plotly.graph_objects as go
from PIL import Image, ImageDraw

# The five overlay views of the app, in tab order.
VIEWS = ("final", "stage1_evidence", "stage1_mask", "stage2_evidence", "registers")
VIEW_TITLES = {
    "registers": "Registers and register attention",
    "stage1_evidence": "Stage I evidence",
    "stage1_mask": "Stage I kept / dropped",
    "stage2_evidence": "Stage II evidence",
    "final": "Final kept tokens",
}
STAGE1_NAMES = ("stage1", "visionzip", "random")   # stages acting before the language model
STAGE2_NAMES = ("stage2", "fastv")                 # stages acting inside it (decoder layer K)
STAGE_LABELS = {"stage1": "Stage I", "stage2": "Stage II", "fastv": "FastV", "visionzip": "VisionZip",
                "random": "Random"}
THRESHOLD_SYMBOL = {"stage1": "α", "stage2": "β"}

KEPT_RGBA = (46, 204, 113, 70)       # kept tokens: light green tint
DROPPED_RGBA = (15, 15, 30, 185)     # dropped tokens: darkened
REGISTER_RGB = (255, 0, 200)         # register outlines
EVIDENCE_SCALE = "RdBu_r"            # blue below the threshold, red above
ATTENTION_SCALE = "Inferno"
BACKGROUND_MAX_SIDE = 768            # the figure's background image is downscaled to this (display only)
STRIP_SIDE_FRAC = 0.045              # size of a box-less token's square, as a share of the image width


# ---------------------------------------------------------------------------------------------
# reading a trace
# ---------------------------------------------------------------------------------------------
def as_dict(trace: Any) -> dict:
    """A trace as its JSON dict (accepts occam.Trace or an already-converted dict)."""
    if isinstance(trace, Mapping):
        return dict(trace)
    if hasattr(trace, "to_dict"):
        return trace.to_dict()
    raise TypeError(f"Expected an occam.Trace or its dict, got {type(trace).__name__}.")


def stage_slots(trace: Mapping) -> dict[str, dict | None]:
    """The trace's stage acting before the language model ("stage1") and inside it ("stage2")."""
    stages = trace.get("stages") or []
    first = lambda names: next((s for s in stages if s["name"] in names), None)  # noqa: E731
    return {"stage1": first(STAGE1_NAMES), "stage2": first(STAGE2_NAMES)}


def register_set(trace: Mapping) -> dict[int, str]:
    """Visual token index -> register source, over every stage (Stage I registers first)."""
    out: dict[int, str] = {}
    stages = trace.get("stages") or []
    has_stage1 = any(st["name"] == "stage1" for st in stages)
    for st in stages:
        src = st.get("register_source") or "none"
        for j in st.get("registers") or []:
            if int(j) not in out:  # Stage II adds LM sinks to the Stage I registers
                out[int(j)] = "sink" if st["name"] == "stage2" and has_stage1 and "sink" in src else src
    return out


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1e4 else f"{v:.3e}"
    return str(v)


def _score(st: Mapping | None, j: int) -> float | None:
    if st is None or not st.get("scores"):
        return None
    v = st["scores"][j]
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else float(v)


def _threshold_label(st: Mapping) -> str:
    if st["name"] in THRESHOLD_SYMBOL and st.get("reference_kind") != "budget":
        return THRESHOLD_SYMBOL[st["name"]]
    return "lowest kept"


def hover_texts(trace: Mapping) -> list[str]:
    """One hover text per visual token: index, grid position, kind, register flag, per-stage scores."""
    n = trace["num_visual"]
    regs = register_set(trace)
    final = trace.get("kept") or [True] * n
    texts = []
    for j in range(n):
        tile, row, col = (list(trace["grid"][j]) + [None] * 3)[:3] if trace.get("grid") else (None,) * 3
        kind = trace["kinds"][j] if trace.get("kinds") else "patch"
        lines = [f"<b>token {j}</b> · {kind} · tile {tile}, row {row}, col {col}"]
        box = trace["boxes"][j] if trace.get("boxes") else None
        lines.append("box " + ("none" if box is None else "[" + ", ".join(f"{v:.0f}" for v in box) + "] px"))
        lines.append(f"register: {'yes (' + regs[j] + ')' if j in regs else 'no'}")
        alive = True
        for st in trace.get("stages") or []:
            label = STAGE_LABELS.get(st["name"], st["name"])
            if st.get("layer") is not None and st["name"] in STAGE2_NAMES:
                label += f" (layer {st['layer']})"
            kept = bool(st["kept"][j]) if st.get("kept") else alive
            s = _score(st, j)
            decision = "kept" if kept else ("dropped" if alive else "dropped earlier")
            if s is None:
                why = "register" if j in (st.get("registers") or []) else "not scored"
                lines.append(f"{label}: {why} → {decision}")
            else:
                lines.append(f"{label}: s={_fmt(s)} vs {_threshold_label(st)}={_fmt(st.get('threshold'))}"
                             f" → {decision}")
            merged = st.get("merged_into")
            if merged and merged[j] is not None:
                lines.append(f"merged into token {merged[j]}")
            ra = st.get("register_attention")
            if ra and ra[j] is not None:
                lines.append(f"register attention: {_fmt(ra[j])}")
            alive = kept
        lines.append(f"<b>final: {'kept' if final[j] else 'dropped'}</b>")
        texts.append("<br>".join(lines))
    return texts


# ---------------------------------------------------------------------------------------------
# geometry: tiles as grids of cells whose edges come from the token boxes
# ---------------------------------------------------------------------------------------------
def _edges(starts: dict[int, float], ends: dict[int, float], lo: int, hi: int) -> list[float]:
    """Cell edges for grid indices lo..hi from the boxes' starts/ends (missing ones interpolated)."""
    known = sorted(starts)
    idx = np.arange(lo, hi + 1, dtype=float)
    s = np.interp(idx, known, [starts[k] for k in known])
    e = np.interp(idx, known, [ends[k] for k in known])
    edges = [float(s[0])] + [float((e[i] + s[i + 1]) / 2) for i in range(len(idx) - 1)] + [float(e[-1])]
    return edges


def tile_grids(trace: Mapping) -> list[dict]:
    """Per tile: x/y cell edges and the (row, col) cell of each of its boxed tokens.

    Returns ``[{"tile", "x", "y", "tokens": [j...], "cells": [(r, c)...]}]``, ``x``/``y`` being
    the ncols+1 / nrows+1 edges in original pixels.
    """
    boxes, grid = trace.get("boxes") or [], trace.get("grid") or []
    by_tile: dict[int, list[int]] = {}
    for j, box in enumerate(boxes):
        if box is None:
            continue
        tile = int(grid[j][0]) if j < len(grid) and grid[j] else 0
        by_tile.setdefault(tile, []).append(j)
    out = []
    for tile in sorted(by_tile):
        toks = by_tile[tile]
        rows = [int(grid[j][1]) if j < len(grid) else 0 for j in toks]
        cols = [int(grid[j][2]) if j < len(grid) else 0 for j in toks]
        col_x0: dict[int, list[float]] = {}
        col_x1: dict[int, list[float]] = {}
        row_y0: dict[int, list[float]] = {}
        row_y1: dict[int, list[float]] = {}
        for j, r, c in zip(toks, rows, cols):
            x0, y0, x1, y1 = boxes[j]
            col_x0.setdefault(c, []).append(x0)
            col_x1.setdefault(c, []).append(x1)
            row_y0.setdefault(r, []).append(y0)
            row_y1.setdefault(r, []).append(y1)
        med = lambda d: {k: float(np.median(v)) for k, v in d.items()}  # noqa: E731
        r0, c0 = min(rows), min(cols)
        out.append({
            "tile": tile,
            "x": _edges(med(col_x0), med(col_x1), c0, max(cols)),
            "y": _edges(med(row_y0), med(row_y1), r0, max(rows)),
            "tokens": toks,
            "cells": [(r - r0, c - c0) for r, c in zip(rows, cols)],
        })
    return out


# ---------------------------------------------------------------------------------------------
# what each view shows per token
# ---------------------------------------------------------------------------------------------
def view_values(trace: Mapping, view: str) -> dict:
    """Per-token values of one view and how to colour them.

    Returns ``{"values": [float|None]*N, "kind": "continuous"|"mask", "zmin", "zmax", "zmid",
    "colorscale", "title", "colorbar", "registers": [j...]}``. Mask values are 1 (kept) / 0 (dropped).
    """
    if view not in VIEWS:
        raise ValueError(f"Unknown view {view!r}: accepted {', '.join(VIEWS)}.")
    n = trace["num_visual"]
    slots = stage_slots(trace)
    regs = register_set(trace)
    mask_scale = [[0.0, _rgba(DROPPED_RGBA)], [1.0, _rgba(KEPT_RGBA)]]
    base = {"kind": "mask", "zmin": 0.0, "zmax": 1.0, "zmid": None, "colorscale": mask_scale,
            "colorbar": None, "registers": sorted(regs)}

    if view == "final":
        kept = trace.get("kept") or [True] * n
        return {**base, "values": [1.0 if k else 0.0 for k in kept],
                "title": f"Final: {sum(map(bool, kept))} of {n} visual tokens kept "
                         f"({100 * sum(map(bool, kept)) / max(n, 1):.1f}%)"}

    if view == "registers":
        st = slots["stage1"] or slots["stage2"]
        ra = (st or {}).get("register_attention")
        if not regs:
            why = "no register found"
            if st is not None and st.get("reference_kind") == "mean":
                why += ": the reference fell back to the mean over candidates"
            elif st is None:
                why += " (no pruning stage in this run)"
        else:
            srcs = sorted({regs[j] for j in regs})
            why = f"{len(regs)} register(s), source: {', '.join(srcs)}"
        if ra:
            vals = [None if v is None else float(v) for v in ra]
            finite = [v for v in vals if v is not None]
            lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
            return {**base, "kind": "continuous", "values": vals, "zmin": lo, "zmax": max(hi, lo + 1e-12),
                    "colorscale": ATTENTION_SCALE, "colorbar": "register attention",
                    "title": f"Registers (outlined) and register attention<br><sup>{why}</sup>"}
        return {**base, "kind": "continuous", "values": [1.0 if j in regs else None for j in range(n)],
                "zmin": 0.0, "zmax": 1.0, "colorscale": [[0, "rgba(255,0,200,0.0)"], [1, "rgba(255,0,200,0.55)"]],
                "colorbar": None,
                "title": f"Registers (outlined)<br><sup>{why}; no register attention recorded</sup>"}

    slot = "stage1" if view.startswith("stage1") else "stage2"
    st = slots[slot]
    label = "Stage I" if slot == "stage1" else "Stage II"
    if st is None:
        method = (trace.get("config") or {}).get("method", "?")
        note = f"{label} is not part of this run<br><sup>method {method!r}</sup>"
        return {**base, "values": [None] * n, "title": note, "empty": True}
    name = STAGE_LABELS.get(st["name"], st["name"])
    head = f"{name}" + (f" at decoder layer {st['layer']}" if slot == "stage2" and st.get("layer") is not None else "")
    if view.endswith("_mask"):
        return {**base, "values": [1.0 if k else 0.0 for k in st["kept"]],
                "title": f"{head}: {st['n_in']} → {st['n_out']} tokens"
                         + (f" (rail: {st['rail']})" if st.get("rail") else "")}
    scores = [_score(st, j) for j in range(n)]
    finite = [s for s in scores if s is not None]
    thr = st.get("threshold")
    if not finite:
        return {**base, "values": [None] * n, "empty": True,
                "title": f"{head}<br><sup>no evidence score: the method keeps a random subset</sup>"}
    lo, hi = float(np.percentile(finite, 1)), float(np.percentile(finite, 99))
    if thr is not None:  # diverging scale centred on the threshold: white = at it, red = above, blue = below
        half = max(thr - lo, hi - thr, 1e-6 * max(abs(thr), 1.0))
        zmin, zmax, zmid = thr - half, thr + half, thr
    else:
        zmin, zmax, zmid = lo, max(hi, lo + 1e-12), None
    ref = st.get("reference_kind")
    what = "s = e/ρ" if st["name"] in THRESHOLD_SYMBOL and ref != "budget" else "score"
    thr_txt = f"{_threshold_label(st)} = {_fmt(thr)}"
    alive = _alive_before(trace, st)
    return {"kind": "continuous", "values": scores, "zmin": zmin, "zmax": zmax, "zmid": zmid,
            "colorscale": EVIDENCE_SCALE, "colorbar": what, "registers": sorted(regs),
            "earlier": [j for j in range(n) if not alive[j]],
            "title": f"{head} evidence<br><sup>{what}, reference: {ref} · threshold {thr_txt}</sup>"}


def _rgba(c: tuple[int, int, int, int]) -> str:
    return f"rgba({c[0]},{c[1]},{c[2]},{c[3] / 255:.3f})"


# ---------------------------------------------------------------------------------------------
# plotly figures
# ---------------------------------------------------------------------------------------------
def image_data_uri(image: Image.Image, max_side: int = BACKGROUND_MAX_SIDE) -> str:
    """The image, downscaled for display, as a JPEG data URI (the figure stretches it to full size)."""
    img = image.convert("RGB")
    scale = max_side / max(img.size)
    if scale < 1:
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _boxless(trace: Mapping) -> list[int]:
    return [j for j, b in enumerate(trace.get("boxes") or []) if b is None]


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
    shown_scale = False
    for k, g in enumerate(grids):
        ny, nx = len(g["y"]) - 1, len(g["x"]) - 1
        z = np.full((ny, nx), np.nan)
        gone = np.full((ny, nx), np.nan)
        text = np.full((ny, nx), "", dtype=object)
        for j, (r, c) in zip(g["tokens"], g["cells"]):
            v = vals[j]
            z[r, c] = np.nan if v is None else v
            text[r, c] = texts[j]
            if j in earlier:
                gone[r, c] = 1.0
        name = ("base image" if g["tile"] == 0 else "high-res tiles") if multi else "tokens"
        first_of_group = k == 0 or (g["tile"] != 0 and grids[k - 1]["tile"] == 0)
        visible = "legendonly" if multi and g["tile"] == 0 else True
        scale = bool(spec["colorbar"]) and visible is True and not shown_scale
        shown_scale = shown_scale or scale
        group = "base" if g["tile"] == 0 else "tiles"
        fig.add_trace(go.Heatmap(
            x=g["x"], y=g["y"], z=z, text=text, hoverinfo="text", hoverongaps=True, name=name,
            colorscale=spec["colorscale"], zmin=spec["zmin"], zmax=spec["zmax"], showscale=scale,
            colorbar=dict(title=spec["colorbar"], len=0.8) if spec["colorbar"] else None,
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
    # box-less tokens (explicit registers, row ends): a strip of squares under the image
    strip = _boxless(trace)
    y_bottom = height
    if strip:
        side = max(width * STRIP_SIDE_FRAC, 1.0)
        per_row = max(1, int(width // (side * 1.25)))
        xs, ys = [], []
        for i in range(len(strip)):
            xs.append((i % per_row) * side * 1.25 + side / 2)
            ys.append(height + side * 0.8 + (i // per_row) * side * 1.25 + side / 2)
        y_bottom = max(ys) + side
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
                x=[pos[j][0] for j in group], y=[pos[j][1] for j in group], mode="markers",
                name="tokens without a box", hoverinfo="text", text=[texts[j] for j in group], showlegend=False,
                meta={"tokens": group, "role": "boxless"},
                marker=dict(symbol="square", size=12, color=colors, colorscale=spec["colorscale"]
                            if group is numeric else None, cmin=spec["zmin"], cmax=spec["zmax"],
                            line=dict(width=[2 if j in spec["registers"] else 0.5 for j in group],
                                      color=[_rgb(REGISTER_RGB) if j in spec["registers"] else "gray"
                                             for j in group])),
            ))
        fig.add_annotation(x=0, y=height + side * 0.4, xref="x", yref="y", showarrow=False, xanchor="left",
                           yanchor="middle", text="tokens without a box (registers, row ends)",
                           font=dict(size=10, color="gray"))
    # registers with a box: outlined rectangles
    boxes = trace.get("boxes") or []
    for j in spec["registers"]:
        if j < len(boxes) and boxes[j] is not None:
            x0, y0, x1, y1 = boxes[j]
            fig.add_shape(type="rect", x0=x0, y0=y0, x1=x1, y1=y1, xref="x", yref="y",
                          line=dict(color=_rgb(REGISTER_RGB), width=2), name=f"register {j}")
    if image is not None or background is not None:
        fig.add_layout_image(source=background or image_data_uri(image), x=0, y=0, sizex=width, sizey=height, xref="x",
                             yref="y", xanchor="left", yanchor="top", sizing="stretch", layer="below")
    fig.update_xaxes(range=[0, width], showgrid=False, zeroline=False, constrain="domain", visible=False)
    fig.update_yaxes(range=[y_bottom, 0], showgrid=False, zeroline=False, scaleanchor="x", scaleratio=1,
                     constrain="domain", visible=False)
    fig.update_layout(title=dict(text=spec["title"], font=dict(size=14)), margin=dict(l=10, r=10, t=60, b=10),
                      plot_bgcolor="white", hovermode="closest", dragmode="pan",
                      legend=dict(orientation="h", y=-0.02), meta={"view": view})
    return fig


def _rgb(c: tuple[int, int, int]) -> str:
    return f"rgb({c[0]},{c[1]},{c[2]})"


def all_token_figures(image: Image.Image | None, trace: Any) -> dict[str, go.Figure]:
    trace = as_dict(trace)
    texts = hover_texts(trace)
    background = image_data_uri(image) if image is not None else None
    return {view: token_figure(image, trace, view, texts=texts, background=background) for view in VIEWS}


def histogram_figure(trace: Any) -> go.Figure:
    """Histogram of the evidence scores of each scored stage, kept vs dropped, threshold line."""
    trace = as_dict(trace)
    stages = [st for st in trace.get("stages") or [] if any(_score(st, j) is not None
                                                           for j in range(trace["num_visual"]))]
    fig = go.Figure()
    if not stages:
        fig.add_annotation(text="No evidence scores in this run (method none or random).", showarrow=False,
                           xref="paper", yref="paper", x=0.5, y=0.5)
        fig.update_layout(title="Evidence scores", xaxis_visible=False, yaxis_visible=False)
        return fig
    from plotly.subplots import make_subplots
    titles = [f"{STAGE_LABELS.get(st['name'], st['name'])}: {st['n_in']} → {st['n_out']}"
              + (f" · {_threshold_label(st)} = {_fmt(st['threshold'])}" if st.get("threshold") is not None else "")
              for st in stages]
    fig = make_subplots(rows=1, cols=len(stages), subplot_titles=titles)
    for k, st in enumerate(stages, start=1):
        alive_before = _alive_before(trace, st)
        kept_s, dropped_s = [], []
        for j in range(trace["num_visual"]):
            s = _score(st, j)
            if s is None or not alive_before[j] or j in (st.get("registers") or []):
                continue
            (kept_s if st["kept"][j] else dropped_s).append(s)
        for vals, label, color in ((kept_s, "kept", "#2ecc71"), (dropped_s, "dropped", "#34495e")):
            fig.add_trace(go.Histogram(x=vals, name=f"{label}", marker_color=color, opacity=0.8, nbinsx=40,
                                       legendgroup=label, showlegend=k == 1,
                                       hovertemplate=f"{label}: %{{y}} tokens, s in %{{x}}<extra></extra>"),
                          row=1, col=k)
        thr = st.get("threshold")
        if thr is not None:
            fig.add_vline(x=thr, line=dict(color="crimson", width=2, dash="dash"), row=1, col=k)
        fig.update_xaxes(title_text="s = e/ρ" if st.get("reference_kind") != "budget" else "score", row=1, col=k)
    fig.update_yaxes(title_text="visual tokens", col=1)
    fig.update_layout(barmode="stack", title="Evidence scores per stage (candidates only)",
                      margin=dict(l=40, r=10, t=70, b=40), legend=dict(orientation="h", y=-0.2))
    return fig


def _alive_before(trace: Mapping, stage: Mapping) -> list[bool]:
    alive = [True] * trace["num_visual"]
    for st in trace.get("stages") or []:
        if st is stage or st["name"] == stage["name"]:
            return alive
        alive = [bool(k) for k in st["kept"]]
    return alive


# ---------------------------------------------------------------------------------------------
# static overlay PNG (same geometry, no JavaScript)
# ---------------------------------------------------------------------------------------------
def _colormap(name: str, t: float) -> tuple[int, int, int]:
    """Two small colour ramps: diverging blue-white-red (evidence) and black-red-yellow (attention)."""
    t = min(max(t, 0.0), 1.0)
    if name == EVIDENCE_SCALE:
        stops = [(0.0, (33, 102, 172)), (0.5, (247, 247, 247)), (1.0, (178, 24, 43))]
    else:
        stops = [(0.0, (0, 0, 4)), (0.5, (187, 55, 84)), (1.0, (252, 255, 164))]
    for (t0, c0), (t1, c1) in zip(stops, stops[1:]):
        if t <= t1:
            f = (t - t0) / (t1 - t0) if t1 > t0 else 0
            return tuple(int(round(a + (b - a) * f)) for a, b in zip(c0, c1))
    return stops[-1][1]


def overlay_image(image: Image.Image, trace: Any, view: str, max_side: int | None = 1024) -> Image.Image:
    """The view painted onto the original image (boxes in original pixels, optionally downscaled)."""
    trace = as_dict(trace)
    spec = view_values(trace, view)
    width, height = (int(v) for v in trace["image_size"])
    base = image.convert("RGB")
    if base.size != (width, height):
        base = base.resize((width, height))
    scale = 1.0
    if max_side and max(width, height) > max_side:
        scale = max_side / max(width, height)
        base = base.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.BILINEAR)
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    boxes = trace.get("boxes") or []
    earlier = set(spec.get("earlier") or [])
    multi = len({g[0] for g, b in zip(trace.get("grid") or [], boxes) if b is not None}) > 1
    for j in range(trace["num_visual"]):
        box = boxes[j] if j < len(boxes) else None
        if box is None or (multi and trace["grid"][j][0] == 0):  # NeXT: draw the high-res tiles
            continue
        v = spec["values"][j]
        rect = [box[0] * scale, box[1] * scale, box[2] * scale - 1, box[3] * scale - 1]
        if j in earlier:
            draw.rectangle(rect, fill=DROPPED_RGBA)
        elif v is None:
            continue
        elif spec["kind"] == "mask":
            draw.rectangle(rect, fill=KEPT_RGBA if v >= 0.5 else DROPPED_RGBA)
        else:
            t = (v - spec["zmin"]) / max(spec["zmax"] - spec["zmin"], 1e-12)
            draw.rectangle(rect, fill=_colormap(spec["colorscale"] if isinstance(spec["colorscale"], str)
                                                else ATTENTION_SCALE, t) + (150,))
    for j in spec["registers"]:
        box = boxes[j] if j < len(boxes) else None
        if box is not None:
            draw.rectangle([box[0] * scale, box[1] * scale, box[2] * scale - 1, box[3] * scale - 1],
                           outline=REGISTER_RGB + (255,), width=2)
    return Image.alpha_composite(base.convert("RGBA"), layer).convert("RGB")


# ---------------------------------------------------------------------------------------------
# markdown
# ---------------------------------------------------------------------------------------------
def _human_flops(v: float | None) -> str:
    if not v:
        return "–"
    for unit, f in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if v >= f:
            return f"{v / f:.2f} {unit}"
    return f"{v:.0f} FLOP"


def _human_bytes(v: float | None) -> str:
    if v is None:
        return "–"
    for unit, f in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if v >= f:
            return f"{v / f:.2f} {unit}"
    return f"{int(v)} B"


def _secs(v: float | None) -> str:
    return "–" if v is None else (f"{v * 1000:.1f} ms" if v < 1 else f"{v:.2f} s")


def run_summary_markdown(trace: Any, label: str) -> str:
    """One line under an answer: method, visual tokens, prefill and total time."""
    t = as_dict(trace)
    c, tm = t.get("counts") or {}, t.get("timings") or {}
    method = (t.get("config") or {}).get("method", "?")
    n = t["num_visual"]
    return (f"**{label}** · method `{method}` · **{c.get('final', n)}** / {c.get('visual', n)}"
            f" visual tokens · prefill {_secs(tm.get('prefill_s'))} · total {_secs(tm.get('total_s'))}")


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def speedup(full: Any, pruned: Any) -> dict:
    """Full / pruned ratios of prefill time, total time and prefill FLOPs; KV-cache saving."""
    f, p = as_dict(full), as_dict(pruned)
    ft, pt = f.get("timings") or {}, p.get("timings") or {}
    return {
        "prefill": _ratio(ft.get("prefill_s"), pt.get("prefill_s")),
        "total": _ratio(ft.get("total_s"), pt.get("total_s")),
        "flops": _ratio((f.get("flops") or {}).get("prefill"), (p.get("flops") or {}).get("prefill")),
        "kv_cache": _ratio(f.get("kv_cache_bytes"), p.get("kv_cache_bytes")),
    }


def speedup_markdown(full: Any, pruned: Any) -> str:
    s = speedup(full, pruned)
    x = lambda v: "–" if v is None else f"×{v:.2f}"  # noqa: E731
    return (f"**Speed-up (full ÷ pruned):** prefill {x(s['prefill'])} · total {x(s['total'])} · "
            f"prefill FLOPs {x(s['flops'])} · KV cache {x(s['kv_cache'])} smaller")


def stats_markdown(full: Any, pruned: Any) -> str:
    """The stats panel: token counts per stage, registers, thresholds, FLOPs, KV cache, timings."""
    f, p = as_dict(full), as_dict(pruned)
    rows = []

    def row(name: str, fv: str, pv: str) -> None:
        rows.append(f"| {name} | {fv} | {pv} |")

    fc, pc = f.get("counts") or {}, p.get("counts") or {}
    row("method", f"`{(f.get('config') or {}).get('method', 'none')}`",
        f"`{(p.get('config') or {}).get('method', '?')}`")
    row("visual tokens (before)", str(fc.get("visual", f["num_visual"])), str(pc.get("visual", p["num_visual"])))
    row("after Stage I", str(fc.get("after_stage1", "–")), str(pc.get("after_stage1", "–")))
    row("after Stage II", str(fc.get("after_stage2", "–")), str(pc.get("after_stage2", "–")))
    row("final", str(fc.get("final", "–")), str(pc.get("final", "–")))
    row("retention", f"{100 * fc.get('retention', 1.0):.1f}%", f"{100 * pc.get('retention', 1.0):.1f}%")
    fs, ps = f.get("sequence") or {}, p.get("sequence") or {}
    row("prompt length (tokens)", str(fs.get("prompt", "–")), f"{ps.get('prompt', '–')} → {ps.get('after_stage1', '–')}"
        + (f" → {(ps.get('per_layer') or [None])[-1]} from layer {ps['stage2_layer']}"
           if ps.get("stage2_layer") is not None else ""))
    row("prefill FLOPs (estimate)", _human_flops((f.get("flops") or {}).get("prefill")),
        _human_flops((p.get("flops") or {}).get("prefill")))
    row("KV cache after prefill", _human_bytes(f.get("kv_cache_bytes")), _human_bytes(p.get("kv_cache_bytes")))
    ft, pt = f.get("timings") or {}, p.get("timings") or {}
    for key, name in (("vision_s", "vision encoder"), ("scoring_s", "scoring"), ("prefill_s", "prefill"),
                      ("decode_s", "decode"), ("total_s", "total")):
        row(f"time: {name}", _secs(ft.get(key)), _secs(pt.get(key)))
    tps = lambda v: "–" if v is None else f"{v:.1f}"  # noqa: E731
    row("decode tokens / s", tps(ft.get("decode_tokens_per_s")), tps(pt.get("decode_tokens_per_s")))
    out = ["| | full | pruned |", "|---|---:|---:|", *rows, ""]

    stages = p.get("stages") or []
    if stages:
        out += ["| stage | layer | tokens in → out | registers (source) | reference | threshold (rail) |",
                "|---|---:|---:|---|---|---|"]
        for st in stages:
            regs = st.get("registers") or []
            ref = st.get("reference_kind", "–")
            if st.get("reference") is not None:
                ref += f" ρ = {_fmt(st['reference'])}"
            out.append(f"| {STAGE_LABELS.get(st['name'], st['name'])} | {_fmt(st.get('layer'))} | "
                       f"{st['n_in']} → {st['n_out']} | {len(regs)} ({st.get('register_source', 'none')}) | {ref} | "
                       f"{_threshold_label(st)} = {_fmt(st.get('threshold'))}"
                       + (f" (rail: {st['rail']})" if st.get("rail") else "") + " |")
        if any(st.get("register_source") == "none" for st in stages if st["name"] in ("stage1", "stage2")):
            out.append("")
            out.append("_No register found at a stage marked `none`: its reference is the mean over candidates._")
    else:
        out.append("_The pruned run has no pruning stage (method `none`)._")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# budget sweep
# ---------------------------------------------------------------------------------------------
def sweep_figure(sweep: Mapping) -> go.Figure:
    """Kept tokens vs the swept value; markers show whether the answer equals the full model's."""
    rows = sweep.get("rows") or []
    param = sweep.get("param", "value")
    fig = go.Figure()
    same = [r for r in rows if r["same_as_full"]]
    diff = [r for r in rows if not r["same_as_full"]]
    fig.add_trace(go.Scatter(x=[r["value"] for r in rows], y=[r["kept"] for r in rows], mode="lines",
                             line=dict(color="lightgray"), hoverinfo="skip", showlegend=False))
    for group, label, color, symbol in ((same, "same answer as full", "#2ecc71", "circle"),
                                        (diff, "answer changed", "#e74c3c", "x")):
        fig.add_trace(go.Scatter(
            x=[r["value"] for r in group], y=[r["kept"] for r in group], mode="markers", name=label,
            marker=dict(color=color, size=11, symbol=symbol),
            text=[f"{param} = {_fmt(r['value'])}<br>{r['kept']} tokens ({100 * r['retention']:.1f}%)"
                  f"<br>answer: {_escape(r['answer'])}" for r in group], hoverinfo="text"))
    full = sweep.get("full") or {}
    if full.get("visual_tokens"):
        fig.add_hline(y=full["visual_tokens"], line=dict(color="gray", dash="dot"),
                      annotation_text=f"full: {full['visual_tokens']} tokens", annotation_position="top left")
    log_x = param in ("alpha", "beta", "alpha=beta") and all(r["value"] > 0 for r in rows)
    fig.update_xaxes(title_text=param, type="log" if log_x else "linear",
                     tickvals=[r["value"] for r in rows], ticktext=[_fmt(r["value"]) for r in rows])
    fig.update_yaxes(title_text="visual tokens kept", rangemode="tozero")
    fig.update_layout(title=f"Budget sweep over {param}", margin=dict(l=50, r=10, t=50, b=40),
                      legend=dict(orientation="h", y=-0.25))
    return fig


def sweep_table(sweep: Mapping) -> list[list]:
    """Rows for a table: value, alpha, beta, kept tokens, retention %, same as full, answer."""
    return [[r["value"], _round(r.get("alpha")), _round(r.get("beta")), r["kept"],
             round(100 * r["retention"], 1), "yes" if r["same_as_full"] else "CHANGED", r["answer"]]
            for r in sweep.get("rows") or []]


def sweep_summary_markdown(sweep: Mapping) -> str:
    """Where the answer starts to change, scanning from the most kept tokens to the fewest."""
    rows = sorted(sweep.get("rows") or [], key=lambda r: -r["kept"])
    full = sweep.get("full") or {}
    param = sweep.get("param", "value")
    out = f"Full model: **{_escape(full.get('answer', ''))}** ({full.get('visual_tokens', '?')} visual tokens). "
    if not rows:
        return out + "No sweep rows."
    first = next((r for r in rows if not r["same_as_full"]), None)
    if first is None:
        return out + (f"The pruned answer equals the full model's at every {param} tried, down to "
                      f"{rows[-1]['kept']} tokens ({100 * rows[-1]['retention']:.1f}%).")
    if first is rows[0]:
        return out + f"The pruned answer differs from the full model's at every {param} tried."
    held = rows[rows.index(first) - 1]
    return out + (f"The answer holds down to {held['kept']} tokens ({param} = {_fmt(held['value'])}) and first "
                  f"changes at {param} = {_fmt(first['value'])}, with {first['kept']} tokens "
                  f"({100 * first['retention']:.1f}%): **{_escape(first['answer'])}**.")


SWEEP_COLUMNS = ["value", "alpha", "beta", "kept tokens", "retention %", "same as full", "answer"]


def _round(v: float | None) -> float | None:
    return None if v is None else float(f"{v:.4g}")


def _escape(s: str) -> str:
    return (s or "").replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\n", " ")
