"""Decoder layers at bucketed sequence lengths, replayed as CUDA graphs: a prefill whose cost follows
the kept tokens instead of a Python-and-kernel-launch floor (about 20 ms for a 32-layer 7B).

A run of decoder layers [start, stop) is padded at the END to a bucket length and run there. Causal
attention keeps the real tokens exact (no real token attends to a later position); the pads' hidden
states are dropped and only the real tokens' keys / values are appended to the request's KV cache.
``PaddedSegments`` does exactly that eagerly (the same arithmetic, testable on a CPU); ``GraphSegments``
captures each (segment, bucket) once as a CUDA graph and replays it. Eager per-layer calls
(``Adapter.layer``) stay the reference and the CPU path.

Reads from the model: the adapter's decoder-layer call. Modifies: nothing; the graphs and their
static buffers live in this object (one per loaded model, at most ``max_graphs`` of them, least recently
used dropped first), and replays are serialised by a lock so concurrent requests stay correct.
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict

import torch

log = logging.getLogger("occam")


def bucket(n: int) -> int:
    """The padded length for n tokens: multiples of 64 up to 1,024, then of 256 (at most 25% padding)."""
    step = 64 if n <= 1024 else 256
    return -(-n // step) * step


class _Collect:
    """A cache stand-in for a prefill from an empty cache: each layer's new keys / values, as returned."""

    def __init__(self):
        self.kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int, *args, **kwargs):
        self.kv[layer_idx] = (keys, values)
        return keys, values


def _pad(x: torch.Tensor, length: int) -> torch.Tensor:
    """(1, L, ...) -> (1, length, ...), repeating the last position (any finite values would do)."""
    extra = length - x.shape[1]
    return x if extra == 0 else torch.cat([x, x[:, -1:].expand(-1, extra, *x.shape[2:])], dim=1)


class PaddedSegments:
    """Decoder layers [start, stop) at a bucketed length, eagerly: the graph path's arithmetic, on any device."""

    name = "padded"

    def __init__(self, adapter):
        self.ad = adapter

    def __call__(self, start: int, stop: int, h: torch.Tensor, rope, cache) -> torch.Tensor:
        """(1, L, D) through layers start..stop-1; their real tokens' keys / values go into ``cache``."""
        n = h.shape[1]
        length = bucket(n)
        out, kv = self._run(start, stop, _pad(h, length), tuple(_pad(t, length) for t in rope))
        for i in range(start, stop):
            keys, values = kv[i]
            cache.update(keys[:, :, :n], values[:, :, :n], i)     # copies: the cache owns its tensors
        return out[:, :n]

    def _run(self, start, stop, h, rope):
        collect = _Collect()
        for i in range(start, stop):
            h = self.ad.layer(i, h, rope, collect)
        return h, collect.kv


class GraphSegments(PaddedSegments):
    """``PaddedSegments`` with every (segment, bucket) captured once as a CUDA graph and replayed.

    All graphs share one memory pool: a replay's outputs are copied out (into the request's cache and
    hidden states) before the lock is released, so no other replay can overwrite them first.
    """

    name = "cuda-graphs"

    def __init__(self, adapter, max_graphs: int = 48):
        super().__init__(adapter)
        self.graphs: OrderedDict[tuple, dict | None] = OrderedDict()   # least recently used first
        self.max_graphs = max_graphs
        self.lock = threading.Lock()
        self.pool = torch.cuda.graph_pool_handle()

    def __call__(self, start, stop, h, rope, cache):
        with self.lock:   # static buffers: one replay and its copy-out (keys / values, hidden states) at a time
            return super().__call__(start, stop, h, rope, cache).clone()

    def _run(self, start, stop, h, rope):
        key = (start, stop, h.shape[0], h.shape[1], h.dtype)
        if key not in self.graphs:
            while len(self.graphs) >= self.max_graphs:   # bounded: the oldest graph and its buffers go
                self.graphs.popitem(last=False)
            self.graphs[key] = self._capture(start, stop, h, rope)
        self.graphs.move_to_end(key)
        g = self.graphs[key]
        if g is None:                                   # capture failed once: eager for this shape
            return super()._run(start, stop, h, rope)
        g["h"].copy_(h)
        for buf, t in zip(g["rope"], rope):
            buf.copy_(t)
        g["graph"].replay()
        return g["out"], g["kv"]

    def _capture(self, start, stop, h, rope) -> dict | None:
        static_h, static_rope = h.clone(), tuple(t.clone() for t in rope)
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):               # warm-up outside the graph (lazy inits, autotuning)
                for _ in range(2):
                    PaddedSegments._run(self, start, stop, static_h, static_rope)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            # thread_local: other threads' eager requests may allocate / launch while this one captures
            with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
                out, kv = PaddedSegments._run(self, start, stop, static_h, static_rope)
        except Exception as e:  # a layer that cannot be captured: say so once, keep serving eagerly
            self.pool = torch.cuda.graph_pool_handle()   # the failed capture may leave its pool marked as recording
            log.warning("CUDA graph capture of decoder layers %d..%d at length %d failed (%s); running them "
                        "eagerly", start, stop - 1, h.shape[1], e)
            return None
        return {"graph": graph, "h": static_h, "rope": static_rope, "out": out, "kv": kv}


def segments_for(adapter, mode: str):
    """The segment runner for ``mode``: "eager" (None: per-layer calls), "padded", "cuda-graphs", or "auto"
    (CUDA graphs on a GPU, eager elsewhere)."""
    if mode == "auto":
        mode = "cuda-graphs" if adapter.device.type == "cuda" else "eager"
    if mode == "eager":
        return None
    if mode == "padded":
        return PaddedSegments(adapter)
    if mode == "cuda-graphs":
        if adapter.device.type != "cuda":
            raise ValueError(f"prefill='cuda-graphs' needs a model on a CUDA device, not {adapter.device}.")
        return GraphSegments(adapter)
    raise ValueError(f"prefill={mode!r} is invalid: accepted 'auto', 'eager', 'padded' or 'cuda-graphs'.")
