"""app.render: overlay geometry from token boxes, figure contents, hover texts, histogram, markdown."""
from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
import pytest
from PIL import Image

import occam
from app import render

W, H = 60, 40


def synthetic_trace() -> dict:
    """2x3 patches of 20x20 px on a 60x40 image + one explicit register without a box (token 6).

    Stage I (alpha = 1): keeps 0, 2, 4, 5 and the register. Stage II (beta = 1, layer 1): token 5
    becomes an LM sink (register), keeps 0 and 4, drops 2.
    """
    boxes = [[c * 20.0, r * 20.0, c * 20.0 + 20, r * 20.0 + 20] for r in range(2) for c in range(3)] + [None]
    grid = [[0, r, c] for r in range(2) for c in range(3)] + [[0, -1, -1]]
    s1 = dict(name="stage1", layer=2, n_in=7, n_out=5, candidates=[0, 1, 2, 3, 4, 5], registers=[6],
              register_source="explicit", reference_kind="register", reference=0.1, threshold=1.0,
              scores=[2.0, 0.5, 1.5, 0.2, 1.0, 3.0, None], kept=[True, False, True, False, True, True, True],
              rail=None, register_attention=[0.1, 0.2, 0.3, 0.1, 0.25, 0.05, None], merged_into=None)
    s2 = dict(name="stage2", layer=1, n_in=5, n_out=4, candidates=[0, 2, 4], registers=[6, 5],
              register_source="explicit+sink", reference_kind="register", reference=0.02, threshold=1.0,
              scores=[1.2, None, 0.4, None, 2.0, None, None], kept=[True, False, False, False, True, True, True],
              rail=None, register_attention=None, merged_into=None)
    return dict(model="synthetic", family="toy", config={"method": "occam", "alpha": 1.0, "beta": 1.0},
                image_size=(W, H), num_visual=7, boxes=boxes, grid=grid, kinds=["patch"] * 6 + ["register"],
                stages=[s1, s2], kept=[True, False, False, False, True, True, True],
                counts={"visual": 7, "after_stage1": 5, "after_stage2": 4, "final": 4, "retention": 4 / 7},
                timings={"prefill_s": 0.02, "total_s": 0.1, "vision_s": 0.01, "scoring_s": 0.001, "decode_s": 0.05,
                         "decode_tokens_per_s": 40.0},
                flops={"prefill": 5e9, "prefill_full": 8e9}, kv_cache_bytes=3 * 2 ** 20,
                sequence={"prompt": 20, "after_stage1": 18, "per_layer": [18, 17], "stage2_layer": 1})


def full_trace() -> dict:
    t = synthetic_trace()
    t.update(config={"method": "none"}, stages=[], kept=[True] * 7,
             counts={"visual": 7, "after_stage1": 7, "after_stage2": 7, "final": 7, "retention": 1.0},
             timings={"prefill_s": 0.04, "total_s": 0.2}, flops={"prefill": 8e9, "prefill_full": 8e9},
             kv_cache_bytes=4 * 2 ** 20)
    return t


def image() -> Image.Image:
    return Image.new("RGB", (W, H), (200, 200, 200))


def token_cells(fig: go.Figure) -> dict[int, tuple[go.Heatmap, int, int]]:
    """token index -> (heatmap trace, row, col) read back from the figure's hover texts."""
    out = {}
    for tr in fig.data:
        if isinstance(tr, go.Heatmap) and (tr.meta or {}).get("role") == "tokens":
            for r, row in enumerate(tr.text):
                for c, txt in enumerate(row):
                    if txt:
                        j = int(txt.split("<b>token ")[1].split("</b>")[0])
                        out[j] = (tr, r, c)
    return out


def assert_cells_on_boxes(trace: dict, fig: go.Figure) -> None:
    cells = token_cells(fig)
    boxed = [j for j, b in enumerate(trace["boxes"]) if b is not None]
    assert sorted(cells) == boxed
    for j in boxed:
        tr, r, c = cells[j]
        x0, y0, x1, y1 = trace["boxes"][j]
        assert (tr.x[c], tr.y[r], tr.x[c + 1], tr.y[r + 1]) == pytest.approx((x0, y0, x1, y1), abs=0.02), j


# ---------------------------------------------------------------------------------------------
def test_token_rectangles_sit_on_their_boxes():
    t = synthetic_trace()
    for view in render.VIEWS:
        assert_cells_on_boxes(t, render.token_figure(image(), t, view))


@pytest.mark.parametrize("arch", ["tiny-llava", "tiny-llava-next", "tiny-qwen2.5-vl", "tiny-qwen3-vl"])
def test_geometry_of_real_traces(arch):
    vlm = occam.load(arch)
    img = Image.fromarray((np.random.default_rng(0).random((70, 110, 3)) * 255).astype(np.uint8))
    trace = vlm.generate(img, "What is it?", config=occam.OccamConfig(), max_new_tokens=1).trace.to_dict()
    fig = render.token_figure(img, trace, "final")
    assert_cells_on_boxes(trace, fig)
    heat = [tr for tr in fig.data if isinstance(tr, go.Heatmap) and tr.meta["role"] == "tokens"]
    tiles = sorted({g[0] for g, b in zip(trace["grid"], trace["boxes"]) if b is not None})
    assert [tr.meta["tile"] for tr in heat] == tiles
    if len(tiles) > 1:  # LLaVA-NeXT: base image hidden behind a legend entry, high-res tiles shown
        assert heat[0].visible == "legendonly" and all(tr.visible is True for tr in heat[1:])
        assert [tr.name for tr in heat if tr.showlegend] == ["base image", "high-res tiles"]
    boxless = [j for j, b in enumerate(trace["boxes"]) if b is None]
    strip = [j for tr in fig.data if isinstance(tr, go.Scatter) and tr.meta["role"] == "boxless"
             for j in tr.meta["tokens"]]
    assert sorted(strip) == boxless
    # the background is the original image stretched over its full pixel size
    (bg,) = fig.layout.images
    assert (bg.sizex, bg.sizey) == tuple(trace["image_size"]) and bg.source.startswith("data:image/jpeg")


def test_figure_contents_per_view():
    t = synthetic_trace()
    figs = render.all_token_figures(image(), t)
    assert list(figs) == list(render.VIEWS)
    for view, fig in figs.items():
        heat = [tr for tr in fig.data if isinstance(tr, go.Heatmap)]
        strips = [tr for tr in fig.data if isinstance(tr, go.Scatter) and tr.meta["role"] == "boxless"]
        # + "dropped here" (dimmed) layer in the evidence views, + "dropped earlier" in Stage II's
        assert len(heat) == {"stage1_evidence": 2, "stage2_evidence": 3}.get(view, 1), view
        assert [j for tr in strips for j in tr.meta["tokens"]] == [6]  # the box-less register
        assert len(fig.layout.shapes) == 1  # register 5 (a Stage II sink) has a box: outlined
        sh = fig.layout.shapes[0]
        assert (sh.x0, sh.y0, sh.x1, sh.y1) == (40, 20, 60, 40)
        assert fig.layout.meta["view"] == view
        assert fig.layout.yaxis.range[0] > H and fig.layout.yaxis.range[1] == 0  # image y axis points down


def _z(fig: go.Figure, j: int) -> float:
    tr, r, c = token_cells(fig)[j]
    return tr.z[r][c]


def test_view_values():
    t = synthetic_trace()
    ev1 = render.token_figure(image(), t, "stage1_evidence")
    # log10(s), centred on log10(alpha) = 0
    assert [_z(ev1, j) for j in range(6)] == pytest.approx([math.log10(v) for v in (2.0, 0.5, 1.5, 0.2, 1.0, 3.0)])
    heat = ev1.data[0]
    assert heat.zmin < 0 < heat.zmax and heat.zmax == pytest.approx(-heat.zmin)  # the threshold at the centre
    assert "α = 1" in ev1.layout.title.text and "reference: register" in ev1.layout.title.text
    assert "log scale" in ev1.layout.title.text
    ticks = dict(zip(heat.colorbar.tickvals, heat.colorbar.ticktext))
    assert ticks[0.0] == "◀ α = 1"  # the threshold marked on the colour bar
    # one hue above the threshold, another below: the scale splits at its middle
    scale = [tuple(c) for c in heat.colorscale]
    below, above = [c for p, c in scale if p < 0.5 or p == 0.5][:2], [c for p, c in scale if p >= 0.5][-2:]
    assert below[0] != above[-1] and scale[1][0] == scale[2][0] == 0.5
    dim = next(tr for tr in ev1.data if isinstance(tr, go.Heatmap) and tr.meta["role"] == "dropped here")
    assert np.nansum(np.array(dim.z, dtype=float)) == 2  # tokens 1 and 3 dropped by Stage I, dimmed
    legend = [tr.name for tr in ev1.data if isinstance(tr, go.Scatter) and tr.meta["role"] == "legend"]
    assert legend == ["above threshold", "below threshold", "dropped here (dimmed)", "register"]
    m1 = render.token_figure(image(), t, "stage1_mask")
    assert [_z(m1, j) for j in range(6)] == [1, 0, 1, 0, 1, 1]
    ev2 = render.token_figure(image(), t, "stage2_evidence")
    assert _z(ev2, 0) == pytest.approx(math.log10(1.2)) and math.isnan(_z(ev2, 1)) and math.isnan(_z(ev2, 5))
    gone = next(tr for tr in ev2.data if isinstance(tr, go.Heatmap) and tr.meta["role"] == "dropped earlier")
    assert gone.hoverinfo == "skip" and np.nansum(np.array(gone.z, dtype=float)) == 2  # tokens 1 and 3
    legend2 = [tr.name for tr in ev2.data if isinstance(tr, go.Scatter) and tr.meta["role"] == "legend"]
    assert "dropped at an earlier stage" in legend2 and legend2[:2] == ["above threshold", "below threshold"]
    fin = render.token_figure(image(), t, "final")
    assert [_z(fin, j) for j in range(6)] == [1, 0, 0, 0, 1, 1]
    assert fin.layout.title.text.startswith("Final: 4 of 7")
    reg = render.token_figure(image(), t, "registers")
    assert _z(reg, 2) == 0.3 and "explicit" in reg.layout.title.text and "sink" in reg.layout.title.text


def test_log_scores_centre_on_the_threshold():
    logs, centre, half = render.log_scores([0.1, 1.0, 10.0, None, 0.0], 1.0)
    assert logs[:3] == pytest.approx([-1, 0, 1]) and logs[3] is None and logs[4] == pytest.approx(-2)
    assert centre == 0 and half >= 1
    _, centre, half = render.log_scores([0.5, 0.6], 0.55)
    assert half == pytest.approx(math.log10(2))  # at least a factor of 2 each side


def test_register_markers_are_readable():
    fig = render.token_figure(image(), synthetic_trace(), "final")
    (strip,) = [tr for tr in fig.data if isinstance(tr, go.Scatter) and tr.meta["role"] == "boxless"]
    assert strip.marker.size >= 18 and list(strip.text) == ["R6"]
    assert any("R = register" in a.text and a.font.size >= 12 for a in fig.layout.annotations)


def test_hover_text_fields():
    texts = render.hover_texts(synthetic_trace())
    assert len(texts) == 7
    t0 = texts[0]
    for field in ("token 0", "tile 0, row 0, col 0", "box [0, 0, 20, 20]", "register: no",
                  "Stage I: s=2 vs α=1 → kept", "Stage II (layer 1): s=1.2 vs β=1 → kept", "final: kept"):
        assert field in t0, field
    assert "Stage II (layer 1): not scored → dropped earlier" in texts[1]
    assert "Stage I: s=0.5 vs α=1 → dropped" in texts[1]
    assert "register: yes (explicit)" in texts[6] and "box none" in texts[6]
    assert "register: yes (sink)" in texts[5] and "Stage II (layer 1): register → kept" in texts[5]
    assert "register attention: 0.3" in texts[2]
    # the figure's hover is exactly these texts
    fig = render.token_figure(image(), synthetic_trace(), "final")
    tr, r, c = token_cells(fig)[0]
    assert tr.text[r][c] == t0 and tr.hoverinfo == "text"


def test_views_of_a_baseline_without_stage1():
    t = synthetic_trace()
    fastv = dict(t["stages"][1], name="fastv", registers=[], register_source="none", reference_kind="budget",
                 reference=None, threshold=0.01, scores=[0.02, 0.001, 0.005, 0.001, 0.03, 0.04, 0.01])
    t.update(config={"method": "fastv"}, stages=[fastv])
    fig = render.token_figure(image(), t, "stage1_evidence")
    assert "not part of this run" in fig.layout.title.text and "'fastv'" in fig.layout.title.text
    ev = render.token_figure(image(), t, "stage2_evidence")
    assert "FastV" in ev.layout.title.text and "lowest kept = 0.01" in ev.layout.title.text
    reg = render.token_figure(image(), t, "registers")
    assert "no register found" in reg.layout.title.text


def test_histogram_per_stage_with_threshold_lines():
    fig = render.histogram_figure(synthetic_trace())
    hists = [tr for tr in fig.data if isinstance(tr, go.Histogram)]
    assert len(hists) == 4  # kept + dropped per stage, one row each (stacked: fits a phone's width)
    by = {(tr.xaxis, tr.name): sorted(10 ** np.array(tr.x)) for tr in hists}  # log10(s) on the x axis
    assert by[("x", "kept")] == pytest.approx([1.0, 1.5, 2.0, 3.0]) and by[("x", "dropped")] == pytest.approx([0.2, 0.5])
    assert by[("x2", "kept")] == pytest.approx([1.2, 2.0]) and by[("x2", "dropped")] == pytest.approx([0.4])
    lines = [s for s in fig.layout.shapes if s.type == "line"]
    assert [(s.x0, s.xref) for s in lines] == [(0.0, "x"), (0.0, "x2")]
    assert fig.layout.xaxis2.domain == fig.layout.xaxis.domain  # rows, not columns
    empty = render.histogram_figure(full_trace())
    assert not empty.data and "No evidence scores" in empty.layout.annotations[0].text


def test_overlay_image_paints_boxes():
    t = synthetic_trace()
    base = image()
    out = render.overlay_image(base, t, "final")
    assert out.size == (W, H)
    dropped = np.array(out.getpixel((30, 10)))   # token 1 (dropped): darkened
    kept = np.array(out.getpixel((10, 10)))      # token 0 (kept): green tint
    assert dropped.sum() < 200 * 3 * 0.5
    assert kept[1] > kept[0] and kept[1] > kept[2]
    assert out.getpixel((40, 30)) == render.REGISTER_RGB  # outline of register 5's box (left edge)
    small = render.overlay_image(base, t, "final", max_side=30)  # downscaled: boxes scale with it
    assert small.size == (30, 20)
    assert np.array(small.getpixel((15, 5))).sum() < 300 and np.array(small.getpixel((5, 5)))[1] > 200


TIMING = {"n": 3, "warmup": 1,
          "full": {"prefill_s": {"median": 0.04, "min": 0.03, "max": 0.05, "n": 3},
                   "total_s": {"median": 0.2, "min": 0.19, "max": 0.3, "n": 3}},
          "pruned": {"prefill_s": {"median": 0.02, "min": 0.018, "max": 0.03, "n": 3},
                     "total_s": {"median": 0.1, "min": 0.09, "max": 0.12, "n": 3}},
          "ratio": {"prefill": {"median": 2.0, "min": 1.5, "max": 2.2, "n": 3},
                    "total": {"median": 2.0, "min": 1.9, "max": 2.5, "n": 3}}}


def test_stats_and_speedup_markdown():
    md = render.stats_markdown(full_trace(), synthetic_trace(), TIMING)
    for row in ("| visual tokens (before) | 7 | 7 |", "| after Stage I | 7 | 5 |", "| after Stage II | 7 | 4 |",
                "| retention | 100.0% | 57.1% |", "| prefill FLOPs (estimate) | 8.00 GFLOP | 5.00 GFLOP |",
                "| KV cache after prefill (estimate from lengths) | 4.00 MiB | 3.00 MiB |",
                "| time: prefill (measured: median, min–max, n) | 40.0 ms (30.0 ms–50.0 ms, n=3) | "
                "20.0 ms (18.0 ms–30.0 ms, n=3) |"):
        assert row in md, row
    assert "| Stage I | 2 | 7 → 5 | 1 (explicit) | register ρ = 0.1 | α = 1 |" in md
    assert "| Stage II | 1 | 5 → 4 | 2 (explicit+sink) | register ρ = 0.02 | β = 1 |" in md
    sp = {"measured": {"n": 3, "warmup": 1, **TIMING["ratio"]}, "estimated": {"flops": 1.6, "kv_cache": 4 / 3}}
    line = render.speedup_markdown(sp)
    assert "prefill ×2.00 (range ×1.50–×2.20)" in line and "median of 3 timed pairs after 1 warm-up" in line
    assert "Estimated from token counts (not measured):** prefill FLOPs ×1.60" in line
    line = render.run_summary_markdown(synthetic_trace(), "Pruned", TIMING, "pruned")
    assert "**4** / 7 visual tokens" in line and "prefill 20.0 ms (18.0 ms–30.0 ms, n=3)" in line
    assert "(one run, n=1)" in render.run_summary_markdown(synthetic_trace(), "Pruned")


def test_agreement_and_budget_markdown():
    md = render.agreement_markdown({"same": False, "reference": "four", "full_correct": True, "pruned_correct": False})
    assert "Answer changed" in md and "full model ✓ matches" in md and "pruned ✗ does not match" in md
    assert "Same answer" in render.agreement_markdown({"same": True, "reference": None})
    md = render.budget_markdown({"method": "occam", "mode": "recommended", "source": None, "note": "α = β = 1: no"},
                                {"no_content": "stage1"})
    assert md.startswith("⚠ **Budget** (α/β: recommended)") and "Stage I left no content token" in md


def test_method_grid_and_inspector_markdown():
    t = synthetic_trace()
    runs = {"target_retention": 0.25, "rule": "same budget", "reference": "red",
            "full": {"answer": "red", "visual_tokens": 7, "correct": True},
            "rows": [{"method": "occam", "answer": "red", "kept": 4, "visual": 7, "retention": 4 / 7,
                      "same_as_full": True, "correct": True, "alpha": 2.0, "beta": 1.5, "trace": t},
                     {"method": "random", "answer": "blue", "kept": 4, "visual": 7, "retention": 4 / 7,
                      "same_as_full": False, "correct": False, "alpha": None, "beta": None, "trace": t}]}
    html = render.method_grid_html(image(), runs)
    assert html.count("<figure") == 3 and html.count("occ-changed") == 2  # the CSS rule + the random card
    assert 'data-method="random"' in html and "≠ full" in html and "data:image/png;base64," in html
    table = render.method_table(runs)
    assert table[0][0] == "full model" and table[2] == ["random", 4, 57.1, "blue", "NO", "NO"]
    from app import backend
    md = render.inspector_markdown(backend.inspect_token(t, 2))
    assert "### Token 2" in md and "**Stage I (layer 2): kept**" in md and "rank 3 of 6" in md
    assert "**Stage II (layer 1): dropped**" in md and "not available for this method" in md


def test_sweep_rendering():
    sweep = {"param": "alpha=beta", "full": {"answer": "red", "visual_tokens": 7}, "rows": [
        {"value": 0.5, "alpha": 0.5, "beta": 0.5, "kept": 6, "retention": 6 / 7, "answer": "red", "same_as_full": True},
        {"value": 1.0, "alpha": 1.0, "beta": 1.0, "kept": 4, "retention": 4 / 7, "answer": "red", "same_as_full": True},
        {"value": 2.0, "alpha": 2.0, "beta": 2.0, "kept": 1, "retention": 1 / 7, "answer": "blue",
         "same_as_full": False}]}
    fig = render.sweep_figure(sweep)
    markers = [tr for tr in fig.data if tr.mode == "markers"]
    assert [list(tr.x) for tr in markers] == [[0.5, 1.0], [2.0]]
    assert "answer: blue" in markers[1].text[0] and fig.layout.xaxis.type == "log"
    assert render.sweep_table(sweep)[2] == [2.0, 2.0, 2.0, 1, 14.3, "CHANGED", "blue"]
    md = render.sweep_summary_markdown(sweep)
    assert "holds down to 4 tokens" in md and "first changes at alpha=beta = 2" in md and "**blue**" in md
    same = dict(sweep, rows=sweep["rows"][:2])
    assert "equals the full model's at every" in render.sweep_summary_markdown(same)


def test_background_is_downscaled_for_display():
    uri = render.image_data_uri(Image.new("RGB", (4000, 1000)), max_side=400)
    import base64
    import io
    img = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert img.size == (400, 100)


def test_as_dict_accepts_trace_objects():
    tr = occam.Trace(model="m", family="f", config={}, image_size=(2, 2), num_visual=0, boxes=[], grid=[], kinds=[])
    assert render.as_dict(tr)["model"] == "m"
    with pytest.raises(TypeError):
        render.as_dict(42)
    with pytest.raises(ValueError, match="Unknown view"):
        render.view_values(synthetic_trace(), "nope")
