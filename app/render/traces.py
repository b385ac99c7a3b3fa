"""Reading a trace's JSON dict: the views and stage names, which stage sits in which slot, the registers,
each token's hover text, and the small formatters every panel shares."""
from __future__ import annotations

import math
from dataclasses import dataclass
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
    view = token_view(trace)
    regs, final = view.registers, view.final
    texts = []
    for j in range(view.n):
        tile, row, col = (list(trace["grid"][j]) + [None] * 3)[:3] if trace.get("grid") else (None,) * 3
        kind = trace["kinds"][j] if trace.get("kinds") else "patch"
        lines = [f"<b>token {j}</b> · {kind} · tile {tile}, row {row}, col {col}"]
        box = trace["boxes"][j] if trace.get("boxes") else None
        lines.append("box " + ("none" if box is None else "[" + ", ".join(f"{v:.0f}" for v in box) + "] px"))
        lines.append(f"register: {'yes (' + regs[j] + ')' if j in regs else 'no'}")
        for sv in view.stages:
            st, label = sv.stage, sv.label
            if st.get("layer") is not None and st["name"] in STAGE2_NAMES:
                label += f" (layer {st['layer']})"
            s, decision = sv.scores[j], sv.decision(j)
            if s is None:
                why = "register" if j in sv.registers else "not scored"
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
        lines.append(f"<b>final: {'kept' if final[j] else 'dropped'}</b>")
        texts.append("<br>".join(lines))
    return texts


@dataclass(frozen=True)
class StageTokens:
    """One stage of a trace, token by token: what each visual token faced there."""
    stage: Mapping                      # the stage's dict in the trace
    label: str                          # its name on the page ("Stage I", "FastV", ...)
    entered: tuple[bool, ...]           # present before this stage (not dropped earlier)
    kept: tuple[bool, ...]              # present after it
    scores: tuple[float | None, ...]    # its score per token (None: not scored, or not finite)
    registers: frozenset[int]           # its reference tokens

    @property
    def name(self) -> str:
        return self.stage["name"]

    def decision(self, j: int) -> str:
        """"kept", "dropped" (here) or "dropped earlier"."""
        return "kept" if self.kept[j] else ("dropped" if self.entered[j] else "dropped earlier")


@dataclass(frozen=True)
class TokenView:
    """A trace per visual token and per stage: the one walk over its stages that every view reads."""
    n: int
    stages: tuple[StageTokens, ...]
    final: tuple[bool, ...]
    registers: dict[int, str]           # token -> register source, over every stage

    def of(self, stage: Mapping) -> StageTokens:
        """The view of one of the trace's stages (by identity, else by name)."""
        return next((s for s in self.stages if s.stage is stage), None) or \
            next(s for s in self.stages if s.name == stage["name"])


def token_view(trace: Mapping) -> TokenView:
    """``trace`` (its JSON dict) as a ``TokenView``: which tokens are alive at each stage, their scores."""
    n = trace["num_visual"]
    alive = (True,) * n
    stages = []
    for st in trace.get("stages") or []:
        kept = tuple(bool(k) for k in st["kept"]) if st.get("kept") else alive
        stages.append(StageTokens(st, STAGE_LABELS.get(st["name"], st["name"]), alive, kept,
                                  tuple(_score(st, j) for j in range(n)),
                                  frozenset(int(r) for r in st.get("registers") or [])))
        alive = kept
    return TokenView(n, tuple(stages), tuple(bool(k) for k in trace.get("kept") or [True] * n), register_set(trace))


def _escape(s: str) -> str:
    return (s or "").replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\n", " ")
