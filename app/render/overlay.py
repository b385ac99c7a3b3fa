"""Static overlay PNGs: a view painted onto the original image with the same geometry, no JavaScript."""
from __future__ import annotations

import base64
import io
from typing import Any

from PIL import Image, ImageDraw

from .traces import as_dict
from .views import ATTENTION_SCALE, DIM_RGBA, DROPPED_RGBA, EVIDENCE_SCALE, EVIDENCE_STOPS, KEPT_RGBA, REGISTER_RGB, view_values


def _colormap(name: str, t: float) -> tuple[int, int, int]:
    """Two small colour ramps: diverging blue-white-red (evidence) and black-red-yellow (attention)."""
    t = min(max(t, 0.0), 1.0)
    if name == EVIDENCE_SCALE:
        stops = list(EVIDENCE_STOPS)
        stops = stops[:2] if t < 0.5 else stops[2:]
    else:
        stops = [(0.0, (0, 0, 4)), (0.5, (187, 55, 84)), (1.0, (252, 255, 164))]
    for (t0, c0), (t1, c1) in zip(stops, stops[1:]):
        if t <= t1:
            f = (t - t0) / (t1 - t0) if t1 > t0 else 0
            return tuple(int(round(a + (b - a) * f)) for a, b in zip(c0, c1))
    return stops[-1][1]


def overlay_image(image: Image.Image, trace: Any, view: str, max_side: int | None = 1024) -> Image.Image:
    """The view painted onto the original image (boxes in original pixels, optionally downscaled)."""
    trace = as_dict(trace)
    spec = view_values(trace, view)
    width, height = (int(v) for v in trace["image_size"])
    base = image.convert("RGB")
    if base.size != (width, height):
        base = base.resize((width, height))
    scale = 1.0
    if max_side and max(width, height) > max_side:
        scale = max_side / max(width, height)
        base = base.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.BILINEAR)
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    boxes = trace.get("boxes") or []
    earlier = set(spec.get("earlier") or [])
    dropped = set(spec.get("dropped") or [])
    multi = len({g[0] for g, b in zip(trace.get("grid") or [], boxes) if b is not None}) > 1
    for j in range(trace["num_visual"]):
        box = boxes[j] if j < len(boxes) else None
        if box is None or (multi and trace["grid"][j][0] == 0):  # NeXT: draw the high-res tiles
            continue
        v = spec["values"][j]
        rect = [box[0] * scale, box[1] * scale, box[2] * scale - 1, box[3] * scale - 1]
        if j in earlier:
            draw.rectangle(rect, fill=DROPPED_RGBA)
        elif v is None:
            continue
        elif spec["kind"] == "mask":
            draw.rectangle(rect, fill=KEPT_RGBA if v >= 0.5 else DROPPED_RGBA)
        else:
            t = (v - spec["zmin"]) / max(spec["zmax"] - spec["zmin"], 1e-12)
            rgb = _colormap(EVIDENCE_SCALE if spec.get("log") else ATTENTION_SCALE, t)
            if j in dropped:  # dimmed: mixed with the dark of a dropped token
                rgb = tuple(int(0.55 * c + 0.45 * d) for c, d in zip(rgb, DIM_RGBA[:3]))
            draw.rectangle(rect, fill=rgb + (150 if j not in dropped else 190,))
    for j in spec["registers"]:
        box = boxes[j] if j < len(boxes) else None
        if box is not None:
            draw.rectangle([box[0] * scale, box[1] * scale, box[2] * scale - 1, box[3] * scale - 1],
                           outline=REGISTER_RGB + (255,), width=2)
    return Image.alpha_composite(base.convert("RGBA"), layer).convert("RGB")


def png_data_uri(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
