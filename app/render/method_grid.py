"""The method comparison: one card per method (answer and kept-token mask over the image) and its table."""
from __future__ import annotations

from typing import Mapping

from PIL import Image

from .overlay import overlay_image, png_data_uri
from .traces import _escape, _fmt


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
