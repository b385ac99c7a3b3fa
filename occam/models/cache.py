"""The KV cache of a batch of requests: per decoder layer one preallocated buffer, per request its length.

Layers at or after a request's cut at K hold fewer of its tokens than the layers before it, and requests
differ in length, so every (request, layer) has its own length. The buffers are allocated once per layer,
at the prefill, with room for the new tokens; a decode step writes each request's new key / value at its
own length (a device tensor, so the step has static shapes and can be captured as a CUDA graph) and the
attention mask hides what lies beyond it. Rows of a request that has finished can be dropped (``keep``).

Speaks the transformers ``Cache.update`` protocol the decoder layers call, nothing more. Modifies nothing.
"""
from __future__ import annotations

import torch


class BatchCache:
    """Keys / values of B requests over the decoder layers, with room for ``extra`` new tokens each."""

    def __init__(self, num_layers: int, batch: int, extra: int, device: torch.device):
        self.keys: list[torch.Tensor | None] = [None] * num_layers     # (B, H, S_i, d)
        self.values: list[torch.Tensor | None] = [None] * num_layers
        self.lengths = torch.zeros(batch, num_layers, dtype=torch.long)       # host copy: known, never read back
        self.extra = extra
        self.device = device
        self.decoding = False
        self.masks: dict | None = None    # per decode step: (layer lengths) -> mask, set by ``step_masks``
        self._lengths_dev: torch.Tensor | None = None
        self._segment: list[int] | None = None   # prefill: the real length of each row in the current segment

    # -- prefill ------------------------------------------------------------------------------------------
    def prefill_lengths(self, lengths: list[int]) -> None:
        """The real (unpadded) length of each request in the layers that run next."""
        self._segment = list(lengths)

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int, *args, **kwargs):
        """A decoder layer's new keys / values (B, H, L, d): stored, and what its attention reads returned."""
        if not self.decoding:
            n = max(self._segment)
            store = []
            for t in (keys, values):
                buf = t.new_zeros(t.shape[0], t.shape[1], n + self.extra, t.shape[3])
                buf[:, :, :n] = t[:, :, :n]
                store.append(buf)
            self.keys[layer_idx], self.values[layer_idx] = store
            self.lengths[:, layer_idx] = torch.tensor(self._segment)
            return keys, values
        return self._append(keys, values, layer_idx)

    # -- decode -------------------------------------------------------------------------------------------
    def start_decoding(self) -> None:
        self.decoding = True
        self._lengths_dev = self.lengths.to(self.device, copy=True)   # its own tensor, also on the CPU

    def _append(self, keys, values, i):
        """One new token per row (B, H, 1, d), written at each row's own length in layer i."""
        lengths = self.lengths[:, i]
        n = int(lengths[0])
        if bool((lengths == n).all()):                   # every row equally long: plain slices, no mask
            self.keys[i][:, :, n] = keys[:, :, 0]
            self.values[i][:, :, n] = values[:, :, 0]
            return self.keys[i][:, :, :n + 1], self.values[i][:, :, :n + 1]
        rows, at = torch.arange(keys.shape[0], device=keys.device), self._lengths_dev[:, i]
        self.keys[i][rows, :, at] = keys[:, :, 0]
        self.values[i][rows, :, at] = values[:, :, 0]
        used = int(lengths.max()) + 1
        return self.keys[i][:, :, :used], self.values[i][:, :, :used]

    def step_mask(self, i: int, dtype: torch.dtype) -> torch.Tensor | None:
        """The additive (B, 1, 1, S) mask of layer i for the next decode step; None when every row is as long."""
        lengths = self.lengths[:, i]
        if bool((lengths == lengths[0]).all()):
            return None
        key = (tuple(lengths.tolist()), dtype)
        if key not in self.masks:
            used = int(lengths.max()) + 1
            ok = torch.arange(used, device=self.device)[None] <= self._lengths_dev[:, i, None]
            mask = torch.zeros(ok.shape, dtype=dtype, device=self.device).masked_fill_(~ok, torch.finfo(dtype).min)
            self.masks[key] = mask[:, None, None]
        return self.masks[key]

    def begin_step(self) -> None:
        self.masks = {}

    def end_step(self) -> None:
        """Every row has one more token in every layer."""
        self.lengths += 1
        self._lengths_dev += 1

    def keep(self, rows: torch.Tensor) -> None:
        """Only ``rows`` (host long tensor) go on: the buffers, lengths and masks shrink to them."""
        dev_rows = rows.to(self.device)
        self.keys = [t.index_select(0, dev_rows) for t in self.keys]
        self.values = [t.index_select(0, dev_rows) for t in self.values]
        self.lengths = self.lengths[rows]
        self._lengths_dev = self._lengths_dev.index_select(0, dev_rows)

    # -- one request's part, as a transformers cache ------------------------------------------------------
    def row(self, b: int, lengths: list[int], config):
        """Request b's keys / values (its own ``lengths`` per layer) as a transformers ``DynamicCache``."""
        from transformers import DynamicCache

        cache = DynamicCache(config=config)
        for i, n in enumerate(lengths):
            cache.update(self.keys[i][b:b + 1, :, :n].clone(), self.values[i][b:b + 1, :, :n].clone(), i)
        return cache
