"""The one-token decode step of a batch at static shapes, replayed as a CUDA graph on a GPU.

A step's shapes are fixed by (batch bucket, cache width per layer): the batch is padded to a bucket
(1, 2, 4, 8, ...), every layer's cache to a bucketed width (``graphs.bucket``), and each row's length,
position and new token are device tensors updated in place. So one step is one fixed sequence of
kernels: ``StaticDecode`` runs it eagerly (the CPU-testable twin), ``GraphDecode`` captures it once per
shape and replays it. No host synchronisation inside; the engine reads stop flags every few steps.
Pad rows start at length 0 and compute junk that nobody reads.

Reads from the model: the adapter's embedding, rotary, decoder-layer and head calls. Modifies: nothing.
The states (buffers, graphs) live here, at most ``max_states`` of them (least recently used goes first),
each used by one batch at a time (its lock).
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict

import torch

from .graphs import bucket

log = logging.getLogger("occam")


def batch_bucket(n: int) -> int:
    """The padded batch size for n live requests: the next power of two."""
    return 1 << max(0, n - 1).bit_length()


class _StaticCache:
    """The ``Cache.update`` protocol over a state's buffers: row b's new key goes to its own length."""

    def __init__(self, st: dict):
        self.st = st

    def update(self, keys, values, layer_idx: int, *args, **kwargs):
        st = self.st
        at = st["lengths"][:, layer_idx]
        st["keys"][layer_idx][st["rows"], :, at] = keys[:, :, 0]
        st["values"][layer_idx][st["rows"], :, at] = values[:, :, 0]
        return st["keys"][layer_idx], st["values"][layer_idx]


class StaticDecode:
    """Decode steps over static buffers, eagerly: what ``GraphDecode`` captures, runnable on any device."""

    name = "static"

    def __init__(self, adapter, max_states: int = 4):
        self.ad = adapter
        self.max_states = max_states
        self.states: OrderedDict[tuple, dict] = OrderedDict()
        self.lock = threading.Lock()      # guards ``states`` (each state has its own lock for its use)

    # -- states --------------------------------------------------------------------------------------------
    def acquire(self, cache, tok: torch.Tensor, pos: torch.Tensor) -> dict:
        """A state of the right shape (locked: release it with ``release``) holding the batch's cache rows,
        next tokens (B,) and positions (B,)."""
        ad, n = self.ad, tok.shape[0]
        rows = batch_bucket(n)
        widths = tuple(bucket(int(cache.lengths[:, i].max()) + cache.extra + 1) for i in range(ad.num_layers))
        # layers whose rows all hold the same lengths share one mask: mask_of[i] is the first such layer
        cols = [tuple(cache.lengths[:, i].tolist()) for i in range(ad.num_layers)]
        mask_of = tuple(next(j for j in range(i + 1) if cols[j] == cols[i] and widths[j] == widths[i])
                        for i in range(ad.num_layers))
        key = (rows, widths, mask_of, cache.keys[0].dtype)
        with self.lock:
            st = self.states.pop(key, None)
            if st is None:
                st = self._new_state(rows, widths, cache.keys[0])
                st["mask_of"] = mask_of
                while len(self.states) >= self.max_states:
                    self.states.popitem(last=False)[1]["lock"].acquire()   # wait for its user, then drop it
            self.states[key] = st
        st["lock"].acquire()
        st["tok"].zero_()
        st["pos"].zero_()
        st["lengths"].zero_()
        st["tok"][:n], st["pos"][:n] = tok, pos
        st["lengths"][:n] = cache.lengths.to(st["lengths"].device)
        for i in range(ad.num_layers):
            for name, src in (("keys", cache.keys[i]), ("values", cache.values[i])):
                st[name][i][:n, :, :src.shape[2]] = src
        st["n"] = n
        return st

    def release(self, st: dict) -> None:
        st["lock"].release()

    def _new_state(self, rows: int, widths: tuple, like: torch.Tensor) -> dict:
        heads, dim = self.ad.kv_shape()
        dev = like.device
        return {"lock": threading.Lock(), "rows": torch.arange(rows, device=dev),
                "tok": torch.zeros(rows, dtype=torch.long, device=dev),
                "pos": torch.zeros(rows, dtype=torch.long, device=dev),
                "lengths": torch.zeros(rows, len(widths), dtype=torch.long, device=dev),
                "keys": [like.new_zeros(rows, heads, w, dim) for w in widths],
                "values": [like.new_zeros(rows, heads, w, dim) for w in widths],
                "widths": widths, "logits": None}

    # -- the step ------------------------------------------------------------------------------------------
    def _step(self, st: dict) -> torch.Tensor:
        """One token for every row: (rows, V) logits; lengths and positions advance in place."""
        ad = self.ad
        h = ad.embed(st["tok"][:, None])
        n_pos = 3 if ad.mrope else 1
        rope = ad.rope(h, st["pos"][:, None, None].expand(-1, n_pos, 1))
        cache = _StaticCache(st)
        masks: dict[int, torch.Tensor] = {}
        for i in range(ad.num_layers):
            j = st["mask_of"][i]
            if j not in masks:   # key s of row b is visible iff s <= its length (the new token included)
                ok = torch.arange(st["widths"][j], device=h.device)[None] <= st["lengths"][:, j, None]
                masks[j] = torch.zeros(ok.shape, dtype=h.dtype, device=h.device).masked_fill(
                    ~ok, torch.finfo(h.dtype).min)[:, None, None]
            h = ad.layer(i, h, rope, cache, mask=masks[j])
        st["lengths"] += 1
        st["pos"] += 1
        return ad.logits(h)

    def step(self, st: dict, tok: torch.Tensor) -> torch.Tensor:
        """Feed ``tok`` (n,) to the state's live rows; their next logits (n, V)."""
        st["tok"][:st["n"]] = tok
        return self._step(st)[:st["n"]]

    def keep(self, st: dict, alive: torch.Tensor, remaining: int) -> tuple[dict, bool]:
        """Only the rows ``alive`` (host bool, n) go on, for at most ``remaining`` more steps: moved into a
        smaller state (a smaller batch bucket) when they fit one (then True), else kept where they are."""
        n = int(alive.sum())
        if batch_bucket(n) == batch_bucket(st["n"]):
            return st, False
        idx = torch.nonzero(alive).flatten().to(st["tok"].device)
        moved = _Rows(st, idx, remaining)
        self.release(st)
        return self.acquire(moved, st["tok"].index_select(0, idx), st["pos"].index_select(0, idx)), True


class _Rows:
    """Some rows of a state, seen as a ``BatchCache`` (what ``acquire`` reads)."""

    def __init__(self, st: dict, idx: torch.Tensor, extra: int):
        self.lengths = st["lengths"].index_select(0, idx).cpu()
        used = self.lengths.max(dim=0).values.tolist()          # per layer
        self.keys = [t.index_select(0, idx)[:, :, :u] for t, u in zip(st["keys"], used)]
        self.values = [t.index_select(0, idx)[:, :, :u] for t, u in zip(st["values"], used)]
        self.extra = extra


class GraphDecode(StaticDecode):
    """``StaticDecode`` with each state's step captured once as a CUDA graph and replayed."""

    name = "cuda-graphs"

    def step(self, st: dict, tok: torch.Tensor) -> torch.Tensor:
        st["tok"][:st["n"]] = tok
        if st.get("graph") is None and not st.get("eager"):
            self._capture(st)
        if st.get("eager"):
            return self._step(st)[:st["n"]]
        st["graph"].replay()
        return st["logits"][:st["n"]]

    def _capture(self, st: dict) -> None:
        saved = [t.clone() for t in (st["tok"], st["pos"], st["lengths"])]
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):            # warm-up outside the graph (lazy inits, autotuning)
                for _ in range(2):
                    self._step(st)
                    for t, s in zip((st["tok"], st["pos"], st["lengths"]), saved):
                        t.copy_(s)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                st["logits"] = self._step(st)
            for t, s in zip((st["tok"], st["pos"], st["lengths"]), saved):   # the capture did not run the step
                t.copy_(s)
            st["graph"] = graph
        except Exception as e:  # a step that cannot be captured: say so once, decode this shape eagerly
            log.warning("CUDA graph capture of the decode step (batch %d) failed (%s); running it eagerly",
                        st["tok"].shape[0], e)
            for t, s in zip((st["tok"], st["pos"], st["lengths"]), saved):
                t.copy_(s)
            st["eager"] = True


def decoder_for(adapter, mode: str):
    """The decode-step runner for ``mode``: "eager" (None: the engine's own loop), "static", "cuda-graphs",
    or "auto" (CUDA graphs on a GPU, eager elsewhere)."""
    if mode == "auto":
        mode = "cuda-graphs" if adapter.device.type == "cuda" else "eager"
    if mode == "eager":
        return None
    if mode == "static":
        return StaticDecode(adapter)
    if mode == "cuda-graphs":
        if adapter.device.type != "cuda":
            raise ValueError(f"decode='cuda-graphs' needs a model on a CUDA device, not {adapter.device}.")
        return GraphDecode(adapter)
    raise ValueError(f"decode={mode!r} is invalid: accepted 'auto', 'eager', 'static' or 'cuda-graphs'.")
