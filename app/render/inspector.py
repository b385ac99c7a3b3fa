"""The token inspector's text: per stage score, rank, threshold, decision, reference and question tokens."""
from __future__ import annotations

from typing import Mapping

from .traces import _escape, _fmt


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
