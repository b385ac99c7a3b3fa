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
EVIDENCE_SCALE = "evidence"          # name of the split scale below (also used for the PNG overlays)
# log(s) centred on the threshold: one hue below it (blue), another above it (orange-red), light at it
EVIDENCE_STOPS = ((0.0, (8, 48, 107)), (0.5, (198, 219, 239)), (0.5, (254, 230, 206)), (1.0, (165, 15, 21)))
EVIDENCE_COLORSCALE = [[t, f"rgb{c}"] for t, c in EVIDENCE_STOPS]
DIM_RGBA = (15, 15, 30, 110)         # dropped at this stage: dimmed (the evidence colour still shows through)
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
    ref = st.get("reference_kind")
    what = "s = e/ρ" if st["name"] in THRESHOLD_SYMBOL and ref != "budget" else "score"
    thr_txt = f"{_threshold_label(st)} = {_fmt(thr)}"
    alive = _alive_before(trace, st)
    logs, centre, half = log_scores(scores, thr)
    kept_here = st.get("kept") or [True] * n
    return {"kind": "continuous", "values": logs, "scores": scores, "zmin": centre - half, "zmax": centre + half,
            "zmid": centre, "colorscale": EVIDENCE_COLORSCALE, "colorbar": what, "registers": sorted(regs),
            "threshold": thr, "threshold_label": _threshold_label(st), "log": True,
            "earlier": [j for j in range(n) if not alive[j]],
            "dropped": [j for j in range(n) if alive[j] and not kept_here[j]],
            "title": f"{name} evidence" + (head[len(name):] if head.startswith(name) else "") + f"<br><sup>{what} on a log scale, centred on the threshold {thr_txt} "
                     f"(reference: {ref})</sup>"}


def log_scores(scores: list, threshold: float | None) -> tuple[list, float, float]:
    """log10 of each score (None stays None; scores <= 0 are clipped to a tenth of the smallest positive
    one), the centre log10(threshold) (the median score without a threshold) and a half-range covering
    the 1st-99th percentile on both sides (at least a factor of 2), so the threshold sits in the middle."""
    pos = [s for s in scores if s is not None and s > 0]
    floor = (min(pos) / 10) if pos else 1e-6
    logs = [None if s is None else math.log10(max(s, floor)) for s in scores]
    finite = [v for v in logs if v is not None]
    if threshold is not None and threshold > 0:
        centre = math.log10(threshold)
    else:
        centre = float(np.median(finite)) if finite else 0.0
    lo, hi = (float(np.percentile(finite, 1)), float(np.percentile(finite, 99))) if finite else (centre, centre)
    half = max(centre - lo, hi - centre, math.log10(2))
    return logs, centre, half


def log_ticks(centre: float, half: float, threshold: float | None, label: str) -> tuple[list, list]:
    """Colour-bar ticks in score units on the log scale, the threshold marked."""
    vals, text = [], []
    lo, hi = centre - half, centre + half
    for e in range(math.floor(lo) - 1, math.ceil(hi) + 1):
        for m in (1, 2, 5):
            v = math.log10(m) + e
            if lo - 1e-9 <= v <= hi + 1e-9 and abs(v - centre) > 0.08 * half:
                vals.append(v)
                text.append(f"{m * 10.0 ** e:g}")
    if threshold is not None and threshold > 0:
        vals.append(math.log10(threshold))
        text.append(f"◀ {label} = {_fmt(threshold)}")
    return vals, text


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
    # one row per stage (stacked: readable at phone width), log10(s) like the evidence heatmaps
    fig = make_subplots(rows=len(stages), cols=1, subplot_titles=titles, vertical_spacing=0.36 / len(stages))
    for k, st in enumerate(stages, start=1):
        alive_before = _alive_before(trace, st)
        scores = [_score(st, j) for j in range(trace["num_visual"])]
        logs, centre, half = log_scores(scores, st.get("threshold"))
        kept_s, dropped_s = [], []
        for j, v in enumerate(logs):
            if v is None or not alive_before[j] or j in (st.get("registers") or []):
                continue
            (kept_s if st["kept"][j] else dropped_s).append(v)
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
        stops = list(EVIDENCE_STOPS)
        stops = stops[:2] if t < 0.5 else stops[2:]
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
    dropped = set(spec.get("dropped") or [])
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
            rgb = _colormap(EVIDENCE_SCALE if spec.get("log") else ATTENTION_SCALE, t)
            if j in dropped:  # dimmed: mixed with the dark of a dropped token
                rgb = tuple(int(0.55 * c + 0.45 * d) for c, d in zip(rgb, DIM_RGBA[:3]))
            draw.rectangle(rect, fill=rgb + (150 if j not in dropped else 190,))
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


def _timed(timing: Mapping | None, kind: str, key: str) -> str:
    """A measured time as "median (min–max, n)" from a timing summary; "–" when absent."""
    st = ((timing or {}).get(kind) or {}).get(key) or {}
    if st.get("median") is None:
        return "–"
    if st.get("n", 0) > 1:
        return f"{_secs(st['median'])} ({_secs(st['min'])}–{_secs(st['max'])}, n={st['n']})"
    return f"{_secs(st['median'])} (n=1)"


def run_summary_markdown(trace: Any, label: str, timing: Mapping | None = None, kind: str | None = None) -> str:
    """One line under an answer: method, visual tokens, and the measured prefill / total time
    (median over the timed runs, from ``timing``; without it, the single run's own times, marked n=1)."""
    t = as_dict(trace)
    c, tm = t.get("counts") or {}, t.get("timings") or {}
    method = (t.get("config") or {}).get("method", "?")
    n = t["num_visual"]
    if timing and kind:
        pre, tot = _timed(timing, kind, "prefill_s"), _timed(timing, kind, "total_s")
        times = f"prefill {pre} · total {tot}"
    else:
        times = f"prefill {_secs(tm.get('prefill_s'))} · total {_secs(tm.get('total_s'))} (one run, n=1)"
    return f"**{label}** · method `{method}` · **{c.get('final', n)}** / {c.get('visual', n)} visual tokens · {times}"


def speedup_markdown(speedup: Mapping) -> str:
    """Measured speed-up (median of n timed pairs after a warm-up, with its range) and estimates apart."""
    m, e = speedup.get("measured") or {}, speedup.get("estimated") or {}
    x = lambda v: "–" if v is None else f"×{v:.2f}"  # noqa: E731

    def measured(key: str) -> str:
        r = m.get(key) or {}
        if r.get("median") is None:
            return "–"
        rng = f" (range {x(r['min'])}–{x(r['max'])})" if r.get("n", 0) > 1 else ""
        return f"{x(r['median'])}{rng}"

    n = m.get("n")
    return (f"**Measured speed-up (full ÷ pruned):** prefill {measured('prefill')} · total {measured('total')} — "
            f"median of {n} timed pair{'s' if n != 1 else ''} after {m.get('warmup', 0)} warm-up, order alternated, "
            f"on this server (other requests running at the same time slow both sides).  \n"
            f"**Estimated from token counts (not measured):** prefill FLOPs {x(e.get('flops'))} fewer · "
            f"KV cache {x(e.get('kv_cache'))} smaller")


def agreement_markdown(agreement: Mapping) -> str:
    """A visible flag when the pruned answer differs from the full one, and the check against a reference."""
    ref = agreement.get("reference")
    mark = lambda ok: "–" if ok is None else ("✓ matches" if ok else "✗ does not match")  # noqa: E731
    if agreement.get("same"):
        head = '<span style="color:#1a7f37">✓ **Same answer**</span>: the pruned model answers like the full model.'
    else:
        head = ('<span style="color:#d62728">⚠ **Answer changed**</span>: the pruned model\'s answer differs from '
                "the full model's.")
    if ref:
        head += (f"  \nReference answer **{_escape(ref)}**: full model {mark(agreement.get('full_correct'))}, "
                 f"pruned {mark(agreement.get('pruned_correct'))}.")
    else:
        head += "  \n_No reference answer: type one to check both answers against it._"
    return head


def budget_markdown(budget: Mapping, flags: Mapping | None = None) -> str:
    """Where the pruned run's thresholds / budget came from, and any warning the trace raised."""
    mode = budget.get("mode")
    head = "**Budget**" if mode in (None, "budget") else f"**Budget** (α/β: {mode})"
    out = f"{head}: {_escape(budget.get('note', ''))}"
    if budget.get("method") == "occam" and budget.get("mode") == "recommended" and not budget.get("source"):
        out = "⚠ " + out
    for w in flag_warnings(flags):
        out += f"  \n⚠ {w}"
    return out


def flag_warnings(flags: Mapping | None) -> list[str]:
    """Human-readable warnings for a trace's ``flags`` (e.g. a stage that left no content token)."""
    out = []
    for key, value in (flags or {}).items():
        if key == "no_content":
            where = {"stage1": "Stage I", "stage2": "Stage II"}.get(str(value), str(value))
            out.append(f"{where} left no content token (only registers reach the language model): the answer "
                       "rests on the registers' summary. Lower the thresholds or set a `min_tokens` floor.")
        else:
            out.append(f"trace flag {key}: {value}")
    return out


def stats_markdown(full: Any, pruned: Any, timing: Mapping | None = None) -> str:
    """The stats panel: token counts per stage, registers, thresholds; measured timings with their spread;
    FLOPs and KV cache labelled as estimates."""
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
    row("KV cache after prefill (estimate from lengths)", _human_bytes(f.get("kv_cache_bytes")),
        _human_bytes(p.get("kv_cache_bytes")))
    ft, pt = f.get("timings") or {}, p.get("timings") or {}
    for key, name in (("vision_s", "vision encoder"), ("scoring_s", "scoring"), ("prefill_s", "prefill"),
                      ("decode_s", "decode"), ("total_s", "total")):
        if timing:
            row(f"time: {name} (measured: median, min–max, n)", _timed(timing, "full", key),
                _timed(timing, "pruned", key))
        else:
            row(f"time: {name} (one run)", _secs(ft.get(key)), _secs(pt.get(key)))
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


# ---------------------------------------------------------------------------------------------
# method comparison and token inspector
# ---------------------------------------------------------------------------------------------
def png_data_uri(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _verdict(same: bool | None, correct: bool | None) -> str:
    parts = []
    if same is not None:
        parts.append('<span class="occ-same">= full</span>' if same else '<span class="occ-diff">≠ full</span>')
    if correct is not None:
        parts.append('<span class="occ-same">✓ reference</span>' if correct else
                     '<span class="occ-diff">✗ reference</span>')
    return " ".join(parts)


METHOD_GRID_CSS = """
<style>
.occ-grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(190px,1fr));gap:10px}
.occ-grid figure{margin:0;border:1px solid #ccc;border-radius:6px;padding:6px;background:#fff;color:#111}
.occ-grid figure.occ-changed{border:2px solid #d62728}
.occ-grid img{width:100%;height:auto;image-rendering:pixelated;display:block}
.occ-grid figcaption{font-size:14px;line-height:1.35;margin-top:4px;word-break:break-word}
.occ-grid .occ-answer{font-weight:600;font-size:15px}
.occ-same{color:#1a7f37;font-weight:600}.occ-diff{color:#d62728;font-weight:700}
.occ-legend{font-size:13px;margin:4px 0 8px 0}
</style>
"""


def method_grid_html(image: Image.Image, runs: Mapping, max_side: int = 320) -> str:
    """The method comparison: the full model's answer, then one card per method with its answer and its
    kept-token mask over the image; a changed answer is outlined in red."""
    full = runs.get("full") or {}
    cards = []
    thumb = image.copy()
    thumb.thumbnail((max_side, max_side))
    cards.append(
        f'<figure class="occ-card" data-method="none"><img alt="input image" src="{png_data_uri(thumb)}">'
        f'<figcaption><b>full model</b> · {full.get("visual_tokens", "?")} tokens<br>'
        f'<span class="occ-answer">{_escape(full.get("answer", ""))}</span> {_verdict(None, full.get("correct"))}'
        f'</figcaption></figure>')
    for r in runs.get("rows") or []:
        mask = overlay_image(image, r["trace"], "final", max_side=max_side)
        extra = (f" · α={_fmt(r['alpha'])}, β={_fmt(r['beta'])}" if r.get("alpha") is not None else "")
        changed = " occ-changed" if not r.get("same_as_full") else ""
        cards.append(
            f'<figure class="occ-card{changed}" data-method="{r["method"]}">'
            f'<img alt="{r["method"]} kept tokens" src="{png_data_uri(mask)}">'
            f'<figcaption><b>{r["method"]}</b> · {r["kept"]}/{r["visual"]} kept ({100 * r["retention"]:.0f}%)'
            f'{extra}<br><span class="occ-answer">{_escape(r["answer"])}</span> '
            f'{_verdict(r.get("same_as_full"), r.get("correct"))}</figcaption></figure>')
    head = (f'<div class="occ-legend">Target retention <b>{100 * runs.get("target_retention", 0):.0f}%</b>: '
            f'{_escape(runs.get("rule", ""))}. Green tint: kept token; dark: dropped; magenta outline: register. '
            f'Red frame: the answer differs from the full model\'s.</div>')
    return METHOD_GRID_CSS + head + '<div class="occ-grid" id="method-cards">' + "".join(cards) + "</div>"


def method_table(runs: Mapping) -> list[list]:
    """Rows: method, kept, retention %, answer, same as full, matches reference."""
    yn = lambda v: "–" if v is None else ("yes" if v else "NO")  # noqa: E731
    full = runs.get("full") or {}
    out = [["full model", full.get("visual_tokens"), 100.0, full.get("answer", ""), "–", yn(full.get("correct"))]]
    for r in runs.get("rows") or []:
        out.append([r["method"], r["kept"], round(100 * r["retention"], 1), r["answer"], yn(r["same_as_full"]),
                    yn(r.get("correct"))])
    return out


METHOD_COLUMNS = ["method", "kept tokens", "retention %", "answer", "same as full", "matches reference"]


def inspector_markdown(info: Mapping) -> str:
    """The token inspector's text: per stage score, rank, threshold, decision, the register reference
    and, for Stage II, the question tokens that attended to the token most."""
    j = info["token"]
    box = info.get("box")
    where = ("no box (" + info.get("kind", "?") + ")" if box is None else
             "box [" + ", ".join(f"{v:.0f}" for v in box) + "] px")
    grid = info.get("grid")
    out = [f"### Token {j} · {info.get('kind', 'patch')} · "
           + (f"tile {grid[0]}, row {grid[1]}, col {grid[2]} · " if grid else "") + where,
           f"**Final decision: {'kept' if info.get('final') else 'dropped'}** (method `{info.get('method')}`)"]
    if info.get("note"):
        out.append(info["note"])
    for st in info.get("stages") or []:
        label = st["label"] + (f" (layer {st['layer']})" if st.get("layer") is not None else "")
        lines = [f"**{label}: {st['decision']}**"]
        if not st.get("entered"):
            out.append("\n".join(lines))
            continue
        if st.get("score") is not None:
            thr = st.get("threshold")
            cmp = ""
            if thr is not None:
                cmp = " ≥ " if st["score"] >= thr else " < "
                cmp += f"{_fmt(thr)} ({st['threshold_kind']})"
            lines.append(f"- score s = {_fmt(st['score'])}{cmp}; rank {st['rank']} of {st['of']} scored tokens")
        elif st.get("is_register"):
            lines.append("- a register: it is the reference, not scored against it")
        else:
            lines.append("- not scored at this stage")
        if st.get("reference_kind") in ("register", "mean"):
            regs = st.get("registers") or []
            shown = ", ".join(map(str, regs[:12])) + (" …" if len(regs) > 12 else "")
            lines.append(f"- tested against the {st['reference_kind']} reference ρ = {_fmt(st.get('reference'))}"
                         + (f" (registers {shown}; source {st.get('register_source')})" if regs else
                            " (no register found: mean over candidates)"))
        elif st.get("reference_kind") == "budget":
            lines.append("- fixed budget: the top-scored tokens are kept, no reference")
        if st.get("rail"):
            lines.append(f"- the {st['rail']} rail decided the count at this stage")
        if st.get("register_attention") is not None:
            lines.append(f"- attention the registers pay to it: {_fmt(st['register_attention'])}")
        if st.get("merged_into") is not None:
            lines.append(f"- merged into token {st['merged_into']}")
        if "question_tokens" in st:
            q = st.get("question_tokens")
            if q:
                parts = ", ".join(f"`{_escape(t['token'])}` {100 * t['share']:.0f}%" for t in q)
                lines.append(f"- question tokens that drew on it most: {parts} ({st.get('question_note')})")
            else:
                lines.append(f"- question tokens that drew on it most: {st.get('question_note')}")
        out.append("\n".join(lines))
    return "\n\n".join(out)
