"""Tile geometry: the tokens of one tile as a grid of cells whose edges come from the token boxes (original
pixels); the tokens without a box."""
from __future__ import annotations

from typing import Mapping

import numpy as np


def _edges(starts: dict[int, float], ends: dict[int, float], lo: int, hi: int) -> list[float]:
    """Cell edges for grid indices lo..hi from the boxes' starts/ends (missing ones interpolated)."""
    known = sorted(starts)
    idx = np.arange(lo, hi + 1, dtype=float)
    s = np.interp(idx, known, [starts[k] for k in known])
    e = np.interp(idx, known, [ends[k] for k in known])
    edges = [float(s[0])] + [float((e[i] + s[i + 1]) / 2) for i in range(len(idx) - 1)] + [float(e[-1])]
    return edges


def tile_grids(trace: Mapping) -> list[dict]:
    """Per tile: x/y cell edges and the (row, col) cell of each of its boxed tokens.

    Returns ``[{"tile", "x", "y", "tokens": [j...], "cells": [(r, c)...]}]``, ``x``/``y`` being
    the ncols+1 / nrows+1 edges in original pixels.
    """
    boxes, grid = trace.get("boxes") or [], trace.get("grid") or []
    by_tile: dict[int, list[int]] = {}
    for j, box in enumerate(boxes):
        if box is None:
            continue
        tile = int(grid[j][0]) if j < len(grid) and grid[j] else 0
        by_tile.setdefault(tile, []).append(j)
    out = []
    for tile in sorted(by_tile):
        toks = by_tile[tile]
        rows = [int(grid[j][1]) if j < len(grid) else 0 for j in toks]
        cols = [int(grid[j][2]) if j < len(grid) else 0 for j in toks]
        col_x0: dict[int, list[float]] = {}
        col_x1: dict[int, list[float]] = {}
        row_y0: dict[int, list[float]] = {}
        row_y1: dict[int, list[float]] = {}
        for j, r, c in zip(toks, rows, cols):
            x0, y0, x1, y1 = boxes[j]
            col_x0.setdefault(c, []).append(x0)
            col_x1.setdefault(c, []).append(x1)
            row_y0.setdefault(r, []).append(y0)
            row_y1.setdefault(r, []).append(y1)
        med = lambda d: {k: float(np.median(v)) for k, v in d.items()}  # noqa: E731
        r0, c0 = min(rows), min(cols)
        out.append({
            "tile": tile,
            "x": _edges(med(col_x0), med(col_x1), c0, max(cols)),
            "y": _edges(med(row_y0), med(row_y1), r0, max(rows)),
            "tokens": toks,
            "cells": [(r - r0, c - c0) for r, c in zip(rows, cols)],
        })
    return out


def _boxless(trace: Mapping) -> list[int]:
    return [j for j, b in enumerate(trace.get("boxes") or []) if b is None]
