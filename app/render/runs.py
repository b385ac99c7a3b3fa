"""A run's views (pure, from ``occam.runs.aggregate``'s dict): accuracy against average retention and against
prefill FLOPs with 95% intervals, accuracy per question type, kept tokens against scene content, and the
summary and correlation tables."""
from __future__ import annotations

from typing import Mapping

import plotly.graph_objects as go

from .traces import _escape

SYMBOLS = ("circle", "diamond", "square", "triangle-up", "x")
PALETTE = ("#d62728", "#ff7f0e", "#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def _colors(agg: Mapping) -> dict:
    methods = list(dict.fromkeys(k["method"] for k in agg["keys"] if k["target"] is not None))
    return {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(methods)}


def _layout(fig: go.Figure, title: str, x: str, y: str, height: int = 340) -> go.Figure:
    fig.update_layout(title=title, height=height, margin=dict(l=50, r=10, t=50, b=45), xaxis_title=x,
                      yaxis_title=y, legend=dict(orientation="h", y=-0.22))
    return fig


def accuracy_figure(agg: Mapping, x: str = "retention") -> go.Figure:
    """Accuracy of each method against its average retention (``x="retention"``) or its mean prefill FLOPs
    relative to the full model (``x="flops_rel"``); whiskers: the 95% interval; the full model dashed."""
    fig, colors = go.Figure(), _colors(agg)
    for m, color in colors.items():
        pts = sorted((k for k in agg["keys"] if k["method"] == m and k["target"] is not None and k.get(x) is not None),
                     key=lambda k: k[x])
        if not pts:
            continue
        fig.add_trace(go.Scatter(
            x=[k[x] for k in pts], y=[k["accuracy"] for k in pts], mode="lines+markers", name=m, showlegend=True,
            line=dict(color=color), marker=dict(size=9),
            error_y=dict(type="data", symmetric=False, array=[k["ci95"][1] - k["accuracy"] for k in pts],
                         arrayminus=[k["accuracy"] - k["ci95"][0] for k in pts]),
            text=[f"{k['key']}: accuracy {k['accuracy']:.3f} [{k['ci95'][0]:.3f}, {k['ci95'][1]:.3f}], n={k['n']}"
                  f"<br>retention {k['retention']:.3f} · FLOPs {k['flops_rel'] or 0:.3f}" for k in pts],
            hoverinfo="text"))
    full = next((k for k in agg["keys"] if k["target"] is None), None)
    if full is not None:
        fig.add_hrect(y0=full["ci95"][0], y1=full["ci95"][1], fillcolor="gray", opacity=0.12, line_width=0)
        fig.add_hline(y=full["accuracy"], line=dict(color="black", dash="dash"),
                      annotation_text=f"full model {full['accuracy']:.3f}", annotation_position="bottom left")
    label = "average retention (kept / visual tokens)" if x == "retention" else "prefill FLOPs relative to full"
    fig.update_xaxes(rangemode="tozero")
    return _layout(fig, f"Accuracy vs {'average retention' if x == 'retention' else 'prefill FLOPs'} (95% interval)",
                   label, "accuracy")


def type_figure(agg: Mapping) -> go.Figure:
    """Accuracy per question type, one bar per run key, with 95% whiskers."""
    fig = go.Figure()
    types = agg.get("types") or []
    for i, k in enumerate(agg["keys"]):
        per = agg["per_type"].get(k["key"]) or {}
        ys = [(per.get(t) or {}).get("accuracy") for t in types]
        lo = [(per.get(t) or {}).get("ci95") or (None, None) for t in types]
        fig.add_trace(go.Bar(
            x=types, y=ys, name=k["key"],
            marker_color="#555" if k["target"] is None else PALETTE[i % len(PALETTE)],
            error_y=dict(type="data", symmetric=False,
                         array=[(c[1] - y) if y is not None and c[1] is not None else 0 for y, c in zip(ys, lo)],
                         arrayminus=[(y - c[0]) if y is not None and c[0] is not None else 0 for y, c in zip(ys, lo)]),
            hovertext=[f"{k['key']} · {t}: n={(per.get(t) or {}).get('n', 0)}" for t in types],
            hoverinfo="text+y"))
    fig.update_layout(barmode="group")
    fig.update_yaxes(range=[0, 1.05])
    return _layout(fig, "Accuracy per question type (95% interval)", "question type", "accuracy")


def content_figure(run_rows: list[dict], samples: list[dict], agg: Mapping, measure: str = "edge_density") -> go.Figure:
    """Kept tokens per image against a scene-content measure (edge density, or the toy's object count), one
    colour per pruned run key, each point one sample."""
    fig = go.Figure()
    keys = [k for k in agg["keys"] if k["target"] is not None and k["key"] in agg["content"]
            and len({r.get("kept") for r in run_rows if r["key"] == k["key"]}) > 1]   # fixed budgets: one count
    dodge = 0.12 if measure == "n_objects" else 0.0      # counts: each run key a little apart
    colors, targets = _colors(agg), sorted({k["target"] for k in keys}, reverse=True)   # colour: method; symbol: target
    for i, k in enumerate(keys):
        rows = [r for r in run_rows if r["key"] == k["key"] and r.get("kept") is not None
                and samples[r["sample"]].get(measure) is not None]
        if not rows:
            continue
        c = (agg["content"][k["key"]].get(measure) or {})
        r_txt = f" r={c['r']:+.2f}" if c.get("r") is not None else ""
        fig.add_trace(go.Scatter(
            x=[samples[r["sample"]][measure] + dodge * (i - (len(keys) - 1) / 2) for r in rows],
            y=[r["kept"] for r in rows], mode="markers",
            name=f"{k['key']}{r_txt}", marker=dict(size=6, opacity=0.6, color=colors.get(k["method"], "#555"),
                                                   symbol=SYMBOLS[targets.index(k["target"]) % len(SYMBOLS)]),
            text=[f"sample {r['sample']}: {r['kept']} kept" for r in rows], hoverinfo="text+x"))
    label = {"edge_density": "edge density (share of Canny edge pixels)", "n_objects": "objects in the scene"}
    if not keys:
        fig.add_annotation(text="every method here keeps a fixed count per image", showarrow=False, x=0.5, y=0.5,
                           xref="paper", yref="paper")
    short = {"edge_density": "edge density", "n_objects": "object count"}
    return _layout(fig, f"Kept tokens vs {short.get(measure, measure)} (methods whose count varies)",
                   label.get(measure, measure), "visual tokens kept")


def _ci(c: Mapping | None, fmt: str = "{:+.2f}") -> str:
    if not c or c.get("r") is None:
        return "–"
    return f"{fmt.format(c['r'])} [{fmt.format(c['ci95'][0])}, {fmt.format(c['ci95'][1])}] (n={c['n']})"


def summary_markdown(run, agg: Mapping) -> str:
    """What was run, its notes, and one line per run key: accuracy [95%], retention, FLOPs, changed answers;
    then kept tokens against scene content."""
    m = run.manifest
    head = (f"**{_escape(str(m.get('format')))}** run of **{_escape(str(m.get('model')))}** · "
            f"{len(run.samples)} samples · {len(run.rows)} answers · status **{m.get('status', 'complete')}**"
            + (f" · {m['wall_s']:.0f} s" if m.get("wall_s") else ""))
    notes = "".join(f"  \n⚠ {_escape(n)}" for n in run.notes)
    lines = ["| run | n | accuracy [95% CI] | reported | avg retention | prefill FLOPs (rel.) | answers changed | "
             "wrong only pruned |", "|---|---:|---|---|---:|---:|---:|---:|"]
    f = lambda v, p="{:.3f}": "–" if v is None else p.format(v)  # noqa: E731
    for k in agg["keys"]:
        rep = k.get("reported") or {}
        lines.append(f"| `{k['key']}` | {k['n']} | {k['accuracy']:.3f} [{k['ci95'][0]:.3f}, {k['ci95'][1]:.3f}]"
                     f" | {f(rep.get('value'))} | {f(k['retention'])} | {f(k['flops_rel'])} | {f(k['changed'], '{}')}"
                     f" | {f(k['wrong_only_pruned'], '{}')} |")
    interval = ("Intervals: Wilson 95% for 0/1 scores (percentile bootstrap for fractional ones). 'reported': the "
                "score in the source's own results file.")
    content = []
    if agg["content"]:
        bgs = sorted({b for c in agg["content"].values() for b in (c.get("by_background") or {})})
        content = ["", "| run | r(kept, edge density) [95% CI] | r(kept, #objects) [95% CI] |"
                   + ("".join(f" kept on {b} |" for b in bgs)),
                   "|---|---|---|" + "---:|" * len(bgs)]
        for key, c in agg["content"].items():
            content.append(f"| `{key}` | {_ci(c.get('edge_density'))} | {_ci(c.get('n_objects'))} |"
                           + "".join(f" {f((c.get('by_background') or {}).get(b), '{:.1f}')} |" for b in bgs))
        content.append("")
        content.append("_Scene content: edge density = share of Canny edge pixels of the image (model-free, so it "
                       "does not depend on the attention it is compared with); the toy's object count and background "
                       "where the source carries them. r: Pearson, Fisher-z 95% interval._")
    return "\n".join([head + notes, "", *lines, "", interval, *content])
