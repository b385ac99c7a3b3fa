"""Where each visual token lies in the ORIGINAL image: per-axis affine maps through resize, crop, pad.

A processed-image pixel u maps to original pixel ``a * u + b`` on each axis. Pure arithmetic.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Affine:
    ax: float
    bx: float
    ay: float
    by: float

    def box(self, x0: float, y0: float, x1: float, y1: float, width: int, height: int) -> list[float] | None:
        """Map a processed-pixel box to original pixels, clipped to the image; None if it lies in padding."""
        X0, X1 = sorted((self.ax * x0 + self.bx, self.ax * x1 + self.bx))
        Y0, Y1 = sorted((self.ay * y0 + self.by, self.ay * y1 + self.by))
        X0, X1 = max(0.0, X0), min(float(width), X1)
        Y0, Y1 = max(0.0, Y0), min(float(height), Y1)
        if X1 - X0 < 1e-6 or Y1 - Y0 < 1e-6:
            return None
        return [round(X0, 2), round(Y0, 2), round(X1, 2), round(Y1, 2)]


def scale_to(width: int, height: int, out_w: float, out_h: float, off_x: float = 0.0, off_y: float = 0.0) -> Affine:
    """The image was resized to (out_w, out_h) and placed at (off_x, off_y) of the processed canvas."""
    return Affine(width / out_w, -off_x * width / out_w, height / out_h, -off_y * height / out_h)


def _size_pair(size) -> tuple[dict, bool]:
    d = size if isinstance(size, dict) else {k: getattr(size, k, None) for k in ("shortest_edge", "height", "width")}
    return {k: v for k, v in d.items() if v is not None}, True


def clip_affine(width: int, height: int, ip) -> tuple[Affine, int, int]:
    """CLIP-style processors (LLaVA-1.5, the toy): optional pad-to-square, resize, centre crop.

    Returns the affine map from processed pixels to original pixels and the processed (width, height).
    """
    size, _ = _size_pair(getattr(ip, "size", {}) or {})
    pad = bool(getattr(ip, "do_pad", False))
    w0, h0, px, py = float(width), float(height), 0.0, 0.0
    if pad:  # expand to a square canvas, image centred (LlavaImageProcessor)
        side = max(width, height)
        px, py, w0, h0 = (side - width) // 2, (side - height) // 2, float(side), float(side)
    if getattr(ip, "do_resize", True) and "shortest_edge" in size:
        s = size["shortest_edge"]
        short, long = (w0, h0) if w0 <= h0 else (h0, w0)
        new_short, new_long = s, int(s * long / short)
        rw, rh = (new_short, new_long) if w0 <= h0 else (new_long, new_short)
    elif getattr(ip, "do_resize", True) and "height" in size:
        rw, rh = size["width"], size["height"]
    else:
        rw, rh = w0, h0
    cw, ch, cl, ct = rw, rh, 0, 0
    crop = getattr(ip, "crop_size", None)
    if getattr(ip, "do_center_crop", False) and crop:
        crop, _ = _size_pair(crop)
        cw, ch = crop["width"], crop["height"]
        ct, cl = int((rh - ch) / 2.0), int((rw - cw) / 2.0)
    # processed u -> resized (u + cl) -> canvas (u + cl) * w0 / rw -> original minus pad offset
    aff = Affine(w0 / rw, cl * w0 / rw - px, h0 / rh, ct * h0 / rh - py)
    return aff, int(cw), int(ch)


def grid_boxes(aff: Affine, width: int, height: int, rows: int, cols: int, cell_w: float, cell_h: float) -> list:
    """Boxes of a rows x cols grid of cells of (cell_w, cell_h) processed pixels, row-major."""
    return [aff.box(c * cell_w, r * cell_h, (c + 1) * cell_w, (r + 1) * cell_h, width, height)
            for r in range(rows) for c in range(cols)]


def anyres_canvas(width: int, height: int, best_w: int, best_h: int) -> Affine:
    """LLaVA-NeXT tiles: the image is resized into (best_w, best_h) keeping its aspect, centred with padding."""
    scale_w, scale_h = best_w / width, best_h / height
    if scale_w < scale_h:
        new_w, new_h = best_w, min(math.ceil(height * scale_w), best_h)
    else:
        new_h, new_w = best_h, min(math.ceil(width * scale_h), best_w)
    return scale_to(width, height, new_w, new_h, (best_w - new_w) // 2, (best_h - new_h) // 2)
