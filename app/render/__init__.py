"""Pure rendering: a run's trace (+ the original image) -> plotly figures, overlay PNGs, markdown.

Everything here reads only the JSON form of ``occam.Trace`` (``trace.to_dict()``), so it works the
same for a live run, the public API's answer and a downloaded trace file. No gradio, no torch.

Geometry: each visual token has a box ``[x0, y0, x1, y1]`` in ORIGINAL image pixels (or None for
explicit registers and LLaVA-NeXT row ends) and a grid position ``[tile, row, col]``. The tokens of
one tile form a grid, drawn as one ``go.Heatmap`` whose cell edges are taken from the boxes, so a
token's cell sits exactly on its box. Tokens without a box are drawn as a strip of squares below
the image. Hovering any token shows the same text in every view (index, grid, scores, thresholds,
register flag, decision per stage).

One module per kind of output; this package re-exports their public names (``render.token_figure``):

- ``traces``: reading a trace dict (views, stage slots, registers, hover texts) and shared formatters
- ``geometry``: tiles as grids of cells whose edges come from the token boxes
- ``views``: what each view shows per token, the log evidence scale, the shared colours
- ``figure``: the plotly overlay figure of one view, all views, the evidence histogram
- ``overlay``: the same views as static PNGs (no JavaScript), PNG data URIs
- ``panels``: the markdown panels (run summary, speed-up, agreement, budget, stats)
- ``sweep``: the budget sweep's figure, table and summary
- ``method_grid``: the method comparison's cards and table
- ``inspector``: the token inspector's text
"""
from __future__ import annotations

from .figure import BACKGROUND_MAX_SIDE, STRIP_SIDE_FRAC, all_token_figures, histogram_figure, image_data_uri, token_figure
from .geometry import tile_grids
from .inspector import inspector_markdown
from .method_grid import METHOD_COLUMNS, METHOD_GRID_CSS, method_grid_html, method_table
from .overlay import overlay_image, png_data_uri
from .panels import (agreement_markdown, batch_note, budget_markdown, flag_warnings, run_summary_markdown,
                     speedup_markdown, stats_markdown)
from .sweep import SWEEP_COLUMNS, sweep_figure, sweep_summary_markdown, sweep_table
from .traces import (STAGE1_NAMES, STAGE2_NAMES, STAGE_LABELS, THRESHOLD_SYMBOL, VIEW_TITLES, VIEWS, StageTokens,
                     TokenView, as_dict, hover_texts, register_set, stage_slots, token_view)
from .views import (ATTENTION_SCALE, DIM_RGBA, DROPPED_RGBA, EVIDENCE_COLORSCALE, EVIDENCE_SCALE, EVIDENCE_STOPS,
                    KEPT_RGBA, REGISTER_RGB, log_scores, log_ticks, view_values)

__all__ = [
    "ATTENTION_SCALE", "BACKGROUND_MAX_SIDE", "DIM_RGBA", "DROPPED_RGBA", "EVIDENCE_COLORSCALE", "EVIDENCE_SCALE",
    "EVIDENCE_STOPS", "KEPT_RGBA", "METHOD_COLUMNS", "METHOD_GRID_CSS", "REGISTER_RGB", "STAGE1_NAMES",
    "STAGE2_NAMES", "STAGE_LABELS", "STRIP_SIDE_FRAC", "SWEEP_COLUMNS", "THRESHOLD_SYMBOL", "StageTokens",
    "TokenView", "VIEWS", "VIEW_TITLES",
    "agreement_markdown", "all_token_figures", "as_dict", "batch_note", "budget_markdown", "flag_warnings",
    "histogram_figure", "hover_texts", "image_data_uri", "inspector_markdown", "log_scores", "log_ticks",
    "method_grid_html",
    "method_table", "overlay_image", "png_data_uri", "register_set", "run_summary_markdown", "speedup_markdown",
    "stage_slots", "stats_markdown", "sweep_figure", "sweep_summary_markdown", "sweep_table", "tile_grids",
    "token_figure", "token_view", "view_values",
]
