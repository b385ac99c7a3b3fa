"""Pieces the benchmarks share: model loading, a benchmark image, occam at a matched retention,
summary statistics, a peak-memory probe and markdown tables. Everything here is small and pure
where it can be."""
from __future__ import annotations

import ctypes
import json
import math
import os
import statistics
import threading
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

import occam
from occam import archs

DTYPES = ("float32", "bfloat16", "float16")


# -- models ----------------------------------------------------------------------------------------
def load_vlm(model: str, text_layers: int | None = None, dtype: str = "float32", device: str = "cpu",
             prefill: str = "auto") -> occam.VLM:
    """A hub id / local folder / "toy" / architecture name (random weights) as an occam.VLM.

    ``text_layers`` keeps only the first N decoder layers (architectures: built that way; other
    models: the decoder's layer list is cut after loading). ``prefill``: as in ``occam.VLM``.
    """
    dt = getattr(torch, dtype)
    if model in archs.ARCH_NAMES:
        vlm = occam.VLM(*archs.build(model, text_layers=text_layers, dtype=dt, device=device), prefill=prefill)
        vlm.name = f"{model} ({vlm.num_layers} text layers, random weights)"
        return vlm
    vlm = occam.load(model, dtype=dt, device=device, prefill=prefill)
    if text_layers is not None:
        truncate_text_layers(vlm, text_layers)
    return vlm


def truncate_text_layers(vlm: occam.VLM, n: int) -> None:
    """Keep the first ``n`` decoder layers of a loaded model (its config follows)."""
    lm = vlm.adapter.lm
    if not 1 <= n:
        raise ValueError(f"text_layers={n} is invalid: accepted an integer >= 1.")
    lm.config.occam_full_depth = getattr(lm.config, "occam_full_depth", len(lm.layers))
    lm.layers = lm.layers[:n]
    lm.config.num_hidden_layers = len(lm.layers)
    if getattr(lm.config, "layer_types", None):
        lm.config.layer_types = lm.config.layer_types[:n]


# -- inputs ----------------------------------------------------------------------------------------
def random_hidden(vlm: occam.VLM, length: int) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Random (1, length, D) hidden states in the model's dtype and their rotary (cos, sin) at positions 0..length-1."""
    ad = vlm.adapter
    hidden = vlm.model.config.get_text_config().hidden_size
    h = torch.randn(1, length, hidden, device=ad.device, dtype=next(vlm.model.parameters()).dtype)
    pos = torch.arange(length, device=ad.device)[None].expand(3 if ad.mrope else 1, -1)   # (P, L), P = 3 for M-RoPE
    return h, ad.rope(h, pos)


def bench_image(width: int = 640, height: int = 480, seed: int = 0) -> Image.Image:
    """A deterministic photo-like picture: sky and ground gradients, a few blurred objects, sensor noise."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0.0, 1.0, height)[:, None, None]
    sky = np.array([90, 140, 215]) * (1 - y) + np.array([200, 220, 240]) * y
    ground = np.array([70, 110, 50]) * (1 - y) + np.array([120, 95, 60]) * y
    arr = np.where(y < 0.55, sky, ground) * np.ones((1, width, 1))
    img = Image.fromarray(arr.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    w, h = width, height
    draw.ellipse([0.38 * w, 0.35 * h, 0.62 * w, 0.75 * h], fill=(200, 40, 35))        # a red ball
    draw.rectangle([0.08 * w, 0.25 * h, 0.28 * w, 0.62 * h], fill=(150, 150, 160))     # a grey building
    draw.polygon([(0.7 * w, 0.6 * h), (0.82 * w, 0.2 * h), (0.94 * w, 0.6 * h)], fill=(35, 80, 30))  # a tree
    draw.ellipse([0.75 * w, 0.05 * h, 0.85 * w, 0.18 * h], fill=(250, 230, 120))       # the sun
    img = img.filter(ImageFilter.GaussianBlur(radius=max(1.0, w / 320)))
    noisy = np.asarray(img, dtype=np.float32) + rng.normal(0.0, 8.0, (height, width, 3))
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8))


# -- statistics ------------------------------------------------------------------------------------
def summarize(values) -> dict | None:
    """median, quartiles, min, max and n of the non-None values (None when there are none)."""
    vals = sorted(float(v) for v in values if v is not None)
    if not vals:
        return None
    q1, _, q3 = statistics.quantiles(vals, n=4, method="inclusive") if len(vals) > 1 else (vals[0],) * 3
    return {"median": statistics.median(vals), "q1": q1, "q3": q3, "min": vals[0], "max": vals[-1],
            "n": len(vals), "values": vals}


def ratios(num: list, den: list) -> list:
    """Element-wise num / den (None where either is missing or den is 0)."""
    return [a / b if a is not None and b else None for a, b in zip(num, den)]


def median(values) -> float | None:
    s = summarize(values)
    return None if s is None else s["median"]


# -- memory ----------------------------------------------------------------------------------------
def _rss() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


class PeakMemory:
    """Peak memory a block adds on top of what is held when it starts.

    CUDA: torch.cuda.max_memory_allocated (tensors only). CPU: the process's resident set size
    (RSS, /proc/self/statm) sampled every millisecond by a thread, after glibc's malloc_trim -- all
    the process maps (allocator slack included), and peaks shorter than a millisecond can be missed.
    """

    def __init__(self, device: torch.device):
        self.cuda = torch.device(device).type == "cuda"
        self.kind = "cuda max_memory_allocated" if self.cuda else "RSS peak (Linux /proc, 1 ms sampling, after malloc_trim)"
        self.bytes: int | None = None

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            self.base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            return self
        _malloc_trim()  # hand freed heap pages back first, else reused pages hide what the block allocates
        self.base = self.peak = _rss()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        if self.base is not None:
            self.thread.start()
        return self

    def _sample(self) -> None:
        while not self.stop.wait(0.001):
            self.peak = max(self.peak, _rss() or 0)

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.bytes = torch.cuda.max_memory_allocated() - self.base
        elif self.base is not None:
            self.stop.set()
            self.thread.join()
            self.bytes = max(self.peak, _rss() or 0) - self.base
        return False


# -- markdown ----------------------------------------------------------------------------------------
def md_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join("" if c is None else str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(x, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float) and not math.isfinite(x):
        return "–"
    return f"{x:.{digits}g}" if abs(x) < 10 ** digits else f"{x:.0f}"


def fmt_range(s: dict | None, digits: int = 3, scale: float = 1.0) -> str:
    """'median [min–max]' of a summarize() dict."""
    if s is None:
        return "–"
    med, lo, hi = (s[k] * scale for k in ("median", "min", "max"))
    if s["n"] == 1:
        return fmt(med, digits)
    return f"{fmt(med, digits)} [{fmt(lo, digits)}–{fmt(hi, digits)}]"


def write_report(out, md: str, data: dict) -> None:
    """A benchmark's report as ``<out>.md`` and ``<out>.json`` (folders created)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(md)
    out.with_suffix(".json").write_text(json.dumps(data, indent=1))
