"""Reading a trace's JSON dict: the views and stage names, which stage sits in which slot, the registers,
each token's hover text, and the small formatters every panel shares."""
from __future__ import annotations

import math
from typing import Any, Mapping

from occam import methods as registry

# The five overlay views of the app, in tab order.
VIEWS = ("final", "stage1_evidence", "stage1_mask", "stage2_evidence", "registers")
VIEW_TITLES = {
    "registers": "Registers and register attention",
    "stage1_evidence": "Stage I evidence",
    "stage1_mask": "Stage I kept / dropped",
    "stage2_evidence": "Stage II evidence",
    "final": "Final kept tokens",
}
STAGE1_NAMES = registry.vision_stages()     # stages acting before the language model
STAGE2_NAMES = registry.language_stages()   # stages acting inside it (decoder layer K)
STAGE_LABELS = registry.STAGE_LABELS        # stage name -> its name on the page
THRESHOLD_SYMBOL = {"stage1": "α", "stage2": "β"}


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


def _alive_before(trace: Mapping, stage: Mapping) -> list[bool]:
    alive = [True] * trace["num_visual"]
    for st in trace.get("stages") or []:
        if st is stage or st["name"] == stage["name"]:
            return alive
        alive = [bool(k) for k in st["kept"]]
    return alive


def _escape(s: str) -> str:
    return (s or "").replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\n", " ")
