"""The markdown panels: the line under an answer, the speed-up, the agreement flag, the budget note with
the trace's warnings, and the stats table."""
from __future__ import annotations

from typing import Any, Mapping

from .traces import STAGE_LABELS, _escape, _fmt, _threshold_label, as_dict


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
            f"on this server (other requests running at the same time slow both sides). {batch_note(m.get('batch'))}  \n"
            f"**Estimated from token counts (not measured):** prefill FLOPs {x(e.get('flops'))} fewer · "
            f"KV cache {x(e.get('kv_cache'))} smaller")


def batch_note(batch: Mapping | None) -> str:
    """Whether the timed runs ran alone or inside batches with other visitors' runs (app/batcher.py)."""
    if not batch:
        return ""
    if batch.get("alone"):
        return "Every timed run ran alone (a batch of 1)."
    span = lambda ns: "–" if not ns else (f"{min(ns)}" if min(ns) == max(ns) else f"{min(ns)}–{max(ns)}")  # noqa: E731
    return (f"**Timed inside batches** shared with other requests (batch of n: full {span(batch.get('full'))}, "
            f"pruned {span(batch.get('pruned'))}): a batch's steps take as long as its slowest member, so this ratio "
            "is the batch's, not pruning's alone; run again when the server is quiet for a timing alone. The "
            "estimates below do not depend on batching.")


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
    if budget.get("mode") == "recommended" and not budget.get("source"):   # a thresholded method's fallback
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
