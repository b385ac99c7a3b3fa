"""What each of the five views shows per token (values, colour scale, title), the log evidence scale
centred on the threshold, and the colours shared by the figure and the PNG overlays."""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from .traces import (STAGE_LABELS, THRESHOLD_SYMBOL, VIEWS, _fmt, _threshold_label, register_set, stage_slots,
                     token_view)

KEPT_RGBA = (46, 204, 113, 70)       # kept tokens: light green tint
DROPPED_RGBA = (15, 15, 30, 185)     # dropped tokens: darkened
REGISTER_RGB = (255, 0, 200)         # register outlines
EVIDENCE_SCALE = "evidence"          # name of the split scale below (also used for the PNG overlays)
# log(s) centred on the threshold: one hue below it (blue), another above it (orange-red), light at it
EVIDENCE_STOPS = ((0.0, (8, 48, 107)), (0.5, (198, 219, 239)), (0.5, (254, 230, 206)), (1.0, (165, 15, 21)))
EVIDENCE_COLORSCALE = [[t, f"rgb{c}"] for t, c in EVIDENCE_STOPS]
DIM_RGBA = (15, 15, 30, 110)         # dropped at this stage: dimmed (the evidence colour still shows through)
ATTENTION_SCALE = "Inferno"


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
    sv = token_view(trace).of(st)
    scores = list(sv.scores)
    finite = [s for s in scores if s is not None]
    thr = st.get("threshold")
    if not finite:
        return {**base, "values": [None] * n, "empty": True,
                "title": f"{head}<br><sup>no evidence score: the method keeps a random subset</sup>"}
    ref = st.get("reference_kind")
    what = "s = e/ρ" if st["name"] in THRESHOLD_SYMBOL and ref != "budget" else "score"
    thr_txt = f"{_threshold_label(st)} = {_fmt(thr)}"
    logs, centre, half = log_scores(scores, thr)
    return {"kind": "continuous", "values": logs, "scores": scores, "zmin": centre - half, "zmax": centre + half,
            "zmid": centre, "colorscale": EVIDENCE_COLORSCALE, "colorbar": what, "registers": sorted(regs),
            "threshold": thr, "threshold_label": _threshold_label(st), "log": True,
            "earlier": [j for j in range(n) if not sv.entered[j]],
            "dropped": [j for j in range(n) if sv.decision(j) == "dropped"],
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


def _rgb(c: tuple[int, int, int]) -> str:
    return f"rgb({c[0]},{c[1]},{c[2]})"
