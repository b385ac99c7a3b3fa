"""The budget sweep: kept tokens against the swept value, its table and where the answer first changes."""
from __future__ import annotations

from typing import Mapping

import plotly.graph_objects as go

from .traces import _escape, _fmt


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
