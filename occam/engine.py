"""The engine: a batch of requests, as named steps. Per request: preprocess -> vision (+ Stage I) ->
prompt sequence. Then for the whole batch: prefill layer by layer, each request cut at its own K
(Stage II), over right-padded ragged sequences -> greedy decoding of every live request at once on a
preallocated cache with per-request, per-layer lengths -> one trace per request.

Tokens dropped by Stage I never reach the language model; tokens dropped at layer K are physically
removed from the hidden states, position ids and rotary tables before layer K runs, so they never
enter the KV cache of layers >= K. Right padding is exact: attention is causal, so no real token sees
a pad, and pads never enter the cache a real token reads. The engine calls the model only through its
adapter (``occam.models``) and asks the method (``OccamConfig.spec``, ``occam.methods``) what to do;
it names none. Everything about a call lives in that call's locals.
"""
from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field
from typing import Any

import torch

from . import cost
from .config import OccamConfig
from .evidence import attention_rows
from .models.base import Adapter
from .models.cache import BatchCache
from .registers import lm_sinks
from .trace import StageTrace, Trace, _floats
from .types import Prepared, VisionOutput, VisionStats


@dataclass
class Result:
    text: str
    token_ids: list[int]
    trace: Trace
    logits: torch.Tensor          # (V,) logits of the first generated token (end of prefill), float32
    cache: Any = None             # the KV cache, when asked for (return_cache=True)

    @property
    def timings(self) -> dict:
        return self.trace.timings


class Clock:
    """Wall-clock buckets; on a GPU every reading waits for the device, so a bucket holds its kernels."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.times: dict[str, float] = {}
        self.last = self.now()

    def now(self) -> float:
        if self.cuda:   # this thread's stream only: a device-wide sync would break another thread's graph capture
            torch.cuda.current_stream().synchronize()
        return time.perf_counter()

    def add(self, name: str, seconds: float) -> None:
        self.times[name] = self.times.get(name, 0.0) + seconds

    def lap(self, *names: str) -> float:
        """Seconds since the previous lap, added to every bucket in ``names``."""
        t = self.now()
        for name in names:
            self.add(name, t - self.last)
        self.last, dt = t, t - self.last
        return dt


@dataclass
class Sequence:
    """The running prefill sequence: hidden states, positions, and where the visual tokens sit."""
    h: torch.Tensor           # (1, L, D)
    pos: torch.Tensor         # (P, L) position ids, P = 1 or 3 (M-RoPE)
    ids: torch.Tensor         # (L,) token ids (for the trace's query tokens)
    vis_pos: torch.Tensor     # (n,) index in the sequence of each remaining visual token
    vis_ids: torch.Tensor     # (n,) which visual token (0..N-1) sits there
    n_query: int              # the text after the last visual token: Stage II's query rows

    def cut(self, keep_vis: torch.Tensor) -> None:
        """Drop the visual tokens with keep_vis False from everything the next layers see."""
        keep_vis = keep_vis.to(self.h.device)
        keep = torch.ones(self.h.shape[1], dtype=torch.bool, device=self.h.device)
        keep[self.vis_pos[~keep_vis]] = False
        new_index = torch.cumsum(keep.long(), 0) - 1
        self.h, self.pos, self.ids = self.h[:, keep], self.pos[:, keep], self.ids[keep]
        self.vis_pos, self.vis_ids = new_index[self.vis_pos[keep_vis]], self.vis_ids[keep_vis]




@dataclass
class Request:
    """One request of a batch: its inputs, its config, and what each step hands to the next."""
    image: Any
    question: str
    cfg: OccamConfig
    clock: Clock
    prep: Prepared | None = None
    vis: VisionOutput | None = None
    stats: VisionStats | None = None
    keep: torch.Tensor | None = None      # (N,) bool, on the host: visual tokens still present
    seq: Sequence | None = None
    trace: Trace | None = None
    stage1: StageTrace | None = None
    stage2: StageTrace | None = None
    cut_at: int | None = None             # decoder layer K of its cut inside the LM, or None
    full_len: int = 0                     # prompt tokens before any pruning
    lengths: list = field(default_factory=list)   # tokens per decoder layer in the prefill
    logits: torch.Tensor | None = None    # (V,) first-token logits
    tokens: list = field(default_factory=list)
    query: tuple | None = None            # Stage II's (query token ids (R,), attention (R, N)) until finish()


def run_batch(ad: Adapter, name: str, images: list, questions: list[str], cfgs: list[OccamConfig],
              max_new_tokens: int, return_cache: bool = False, segments=None,
              kv_budget: int | None = None, decoder=None) -> list[Result]:
    """Answer every request of a validated batch; each result equals that request run alone.

    ``segments``: how runs of decoder layers execute in the prefill (``occam.models.graphs``): None for
    eager per-layer calls, or a padded / CUDA-graph runner. ``kv_budget``: bytes the KV cache of one
    group may take; requests are grouped so that none exceeds it (a request larger than it alone runs
    alone). ``decoder``: how decode steps run (``occam.models.decoding``): None for eager steps.
    """
    if return_cache:     # the cache is returned as the eager steps leave it
        decoder = None
    now = Clock(ad.device).now            # waits for this thread's stream on a GPU
    start = now()
    reqs = [Request(image, question, cfg, Clock(ad.device)) for image, question, cfg in zip(images, questions, cfgs)]
    prepare(ad, name, reqs)
    results: list[Result | None] = [None] * len(reqs)
    for group in plan_groups(ad, reqs, max_new_tokens, kv_budget):
        batch = [reqs[i] for i in group]
        t0 = now()
        cache = prefill(ad, batch, max_new_tokens, segments)
        t1 = now()
        decode(ad, batch, cache, max_new_tokens, decoder, drop_finished=not return_cache)
        t2 = now()
        for i, r in zip(group, batch):
            r.clock.add("prefill_s", t1 - t0)
            r.clock.add("decode_s", t2 - t1)
            r.clock.times["total_s"] = t2 - start
            row = group.index(i)
            kv = cache.row(row, _final_lengths(r), ad.lm.config) if return_cache else None
            results[i] = finish(ad, r, segments, len(batch), kv, decoder)
    return results


def prepare(ad: Adapter, name: str, reqs: list[Request]) -> None:
    """Preprocess each request, its vision side (one tower call per group of like inputs, where the family
    allows it), its Stage I and its prompt sequence. A batched step's time counts for every request in it."""
    clock = Clock(ad.device)
    for r in reqs:
        r.prep = ad.prepare(r.image, r.question)
    shared = clock.lap()
    for r in reqs:
        r.clock.add("preprocess_s", shared)
    outputs = ad.encode_batch([r.prep for r in reqs])
    shared = clock.lap()
    for r, vis in zip(reqs, outputs):
        r.clock.add("vision_s", shared)
        r.clock.last = r.clock.now()
        r.vis, r.stats, r.keep, embeds, r.stage1 = vision(ad, r.prep, vis, r.cfg, r.clock)
        r.trace = Trace(model=name, family=ad.family, config=r.cfg.to_dict(), image_size=tuple(r.prep.image_size),
                        num_visual=vis.n, boxes=vis.boxes, grid=vis.grid, kinds=vis.kinds)
        r.seq = sequence(ad, r.prep, vis, embeds, r.keep)
        r.full_len = r.prep.inputs["input_ids"].shape[1]
        r.cut_at = r.cfg.decoder_layer(ad.num_layers) if r.cfg.uses_stage2 else None


def kv_bytes_per_token(ad: Adapter) -> int:
    """Bytes one token takes in the KV cache of one decoder layer (keys and values)."""
    heads, dim = ad.kv_shape()
    return 2 * heads * dim * ad.model.dtype.itemsize


def plan_groups(ad: Adapter, reqs: list[Request], max_new_tokens: int, kv_budget: int | None) -> list[list[int]]:
    """Requests (indices, in order) grouped so that each group's padded KV cache fits ``kv_budget``.

    A request's bound is its length after Stage I in every layer (Stage II only shortens it) plus its
    new tokens; a group pads every request to its longest one.
    """
    if kv_budget is None:
        return [list(range(len(reqs)))]
    per_token = kv_bytes_per_token(ad) * ad.num_layers
    groups: list[list[int]] = []
    longest = 0
    for i, r in enumerate(reqs):
        n = r.seq.h.shape[1] + max_new_tokens
        if groups and (len(groups[-1]) + 1) * max(longest, n) * per_token <= kv_budget:
            groups[-1].append(i)
            longest = max(longest, n)
        else:
            groups.append([i])
            longest = n
    return groups


def _final_lengths(r: Request) -> list[int]:
    """Request r's tokens per layer in the cache after decoding (the last token is never fed back)."""
    fed = max(0, len(r.tokens) - 1)
    return [n + fed for n in r.lengths]


def finish(ad: Adapter, r: Request, segments, batch_size: int, kv_cache, decoder=None) -> Result:
    """The request's trace and result, once its tokens are known."""
    trace, vis, keep = r.trace, r.vis, r.keep
    trace.kv_cache_bytes = sum(r.lengths) * kv_bytes_per_token(ad)      # the prefill's cache, as in the speed bench
    trace.stages = [s for s in (r.stage1, r.stage2) if s is not None]
    if r.stage2 is not None:        # formatted after the timed part
        ids, attention = r.query
        r.stage2.query_attention = _floats(attention, digits=4)
        r.stage2.query_tokens = ad.token_texts(ids)
    empty = next((s.name for s in trace.stages if s.content_left == 0), None)
    trace.flags = {"no_content": empty} if empty else {}
    n_final = int(keep.sum())
    stage1_len = r.lengths[0] if r.lengths else r.seq.h.shape[1]
    trace.kept = keep.tolist()
    trace.counts = {"visual": vis.n, "after_stage1": stage1_len - (r.full_len - vis.n), "after_stage2": n_final,
                    "final": n_final, "retention": n_final / vis.n if vis.n else 1.0}
    if vis.frame is not None:                  # video: frame index, time and counts of every frame
        trace.add_frames(vis.frame.tolist(), vis.frame_times)
    t = r.clock.times
    t["decode_tokens_per_s"] = (len(r.tokens) - 1) / t["decode_s"] if len(r.tokens) > 1 and t["decode_s"] > 0 \
        else None
    trace.timings = {k: round(v, 6) if v is not None else None for k, v in t.items()}
    trace.flops = {"prefill": cost.prefill_flops(ad.lm.config, r.lengths),
                   "prefill_full": cost.prefill_flops(ad.lm.config, [r.full_len] * len(r.lengths))}
    trace.sequence = {"prompt": r.full_len, "after_stage1": stage1_len, "per_layer": r.lengths,
                      "stage2_layer": r.stage2.layer if r.stage2 is not None else None,
                      "prefill_path": getattr(segments, "name", "eager"),
                      "decode_path": getattr(decoder, "name", "eager"),
                      "preprocess_path": "torchvision" if ad.device_processor is not None else "pil",
                      "batch_size": batch_size}
    text = ad.processor.tokenizer.decode(r.tokens, skip_special_tokens=True).strip()
    return Result(text, r.tokens, trace, r.logits, kv_cache)


def vision(ad: Adapter, prep: Prepared, vis: VisionOutput, cfg: OccamConfig, clock: Clock):
    """The Stage-I statistics of encoded visual tokens (when the method needs them) and the Stage-I selection."""
    stats = ad.stats(vis, cfg) if cfg.uses_vision_stats else None
    vis.captured = None                      # release the captured vision layer
    seed = _input_digest(prep) if cfg.spec.seeded_by_input else 0
    keep, embeds, stage1 = cfg.spec.stage1(vis, stats, cfg, seed)
    clock.lap("scoring_s", "vision_s")       # Stage-I statistics and selection: part of vision_s
    return vis, stats, keep, embeds, stage1


def _input_digest(prep: Prepared) -> int:
    """A reproducible number for this input (pixels and prompt), so that a seeded random mask varies per image."""
    digest = 0
    for key in ("input_ids", "pixel_values", "pixel_values_videos"):
        if key in prep.inputs:
            digest = zlib.crc32(prep.inputs[key].detach().float().cpu().numpy().tobytes(), digest)
    return digest


def sequence(ad: Adapter, prep: Prepared, vis: VisionOutput, embeds: torch.Tensor, keep: torch.Tensor) -> Sequence:
    """The prompt's embeddings with the visual features in place and the Stage-I-dropped tokens removed."""
    ids = prep.inputs["input_ids"][0]
    slots = torch.nonzero(ids == ad.placeholder_id(prep)).flatten()
    if slots.numel() != vis.n:
        raise RuntimeError(f"{ad.family}: {slots.numel()} image placeholders but {vis.n} visual features.")
    emb = ad.embed(ids)[0].clone()
    emb[slots] = embeds.to(emb.dtype)
    pos = ad.positions(prep)
    keep = keep.to(ids.device)
    seq_keep = torch.ones(ids.numel(), dtype=torch.bool, device=ids.device)
    seq_keep[slots[~keep]] = False
    n_query = ids.numel() - 1 - int(slots[-1]) if vis.n else ids.numel()
    return Sequence(h=emb[seq_keep][None], pos=pos[:, seq_keep], ids=ids[seq_keep],
                    vis_pos=(torch.cumsum(seq_keep.long(), 0) - 1)[slots[keep]],
                    vis_ids=torch.nonzero(keep).flatten(), n_query=n_query)


def prefill(ad: Adapter, batch: list[Request], max_new_tokens: int, segments=None) -> BatchCache:
    """All decoder layers over the batch's prompts, each request cut before its own layer K.

    Runs between cut points are one batched call per layer over the right-padded sequences. Sets each
    request's first logits, tokens per layer, kept mask and Stage-II trace; returns the filled cache.
    """
    cache = BatchCache(ad.num_layers, len(batch), max(0, max_new_tokens - 1), ad.device)
    cuts = {r.cut_at for r in batch} - {None}
    bounds = sorted({0, ad.num_layers} | cuts)
    for start, stop in zip(bounds, bounds[1:]):
        for r in batch:
            if r.cut_at == start:
                r.clock.last = r.clock.now()
                keep2, r.stage2, r.query = stage2(ad, start, r.seq, r.vis.n, r.stats, r.cfg)
                r.seq.cut(keep2)
                r.keep = torch.zeros_like(r.keep)
                r.keep[r.seq.vis_ids.cpu()] = True
                r.clock.lap("scoring_s")                   # Stage-II scoring: part of prefill_s
            r.lengths += [r.seq.h.shape[1]] * (stop - start)
        layers(ad, start, stop, batch, cache, segments)
    last = torch.cat([r.seq.h[:, -1:] for r in batch])
    logits = ad.logits(last).float()
    for r, row in zip(batch, logits):
        r.logits = row
    return cache


def _stack(batch: list[Request]) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's hidden states (B, L, D) and positions (B, P, L), right-padded to the longest (pads repeat
    the last position: any finite values would do, no real token attends to them)."""
    seqs = [r.seq for r in batch]
    if len(seqs) == 1:
        return seqs[0].h, seqs[0].pos[None]
    n = max(s.h.shape[1] for s in seqs)

    def pad(x: torch.Tensor, dim: int) -> torch.Tensor:
        extra = n - x.shape[dim]
        if not extra:
            return x
        last = x.narrow(dim, x.shape[dim] - 1, 1)
        return torch.cat([x, last.expand(*[extra if d == dim else -1 for d in range(x.dim())])], dim=dim)

    return torch.cat([pad(s.h, 1) for s in seqs]), torch.stack([pad(s.pos, 1) for s in seqs])


def layers(ad: Adapter, start: int, stop: int, batch: list[Request], cache: BatchCache, segments) -> None:
    """Decoder layers start..stop-1 over the batch: one call each where Qwen3-VL adds its deepstack features
    after the layer (only the kept tokens' features), the rest through ``segments`` when there is one."""
    h, pos = _stack(batch)
    rope = ad.rope(h, pos)
    cache.prefill_lengths([r.seq.h.shape[1] for r in batch])
    deep = [r.vis.deepstack for r in batch]
    n_deep = min(len(d) if d is not None else 0 for d in deep)
    i = start
    while i < stop and (segments is None or i < n_deep):
        h = ad.layer(i, h, rope, cache)
        if i < n_deep:
            h = h.clone()
            for b, r in enumerate(batch):
                h[b, r.seq.vis_pos] += deep[b][i][r.seq.vis_ids].to(h.dtype)
        i += 1
    if i < stop:
        h = segments(i, stop, h, rope, cache)
    for b, r in enumerate(batch):
        r.seq.h = h[b:b + 1, :r.seq.h.shape[1]]


def stage2(ad: Adapter, i: int, seq: Sequence, n: int, stats: VisionStats | None,
           cfg: OccamConfig) -> tuple[torch.Tensor, StageTrace, tuple[torch.Tensor, torch.Tensor]]:
    """Stage II (or FastV) scores from decoder layer i's own q and k: only the query rows are computed.

    Returns (keep (n_vis,), the stage's trace, (query token ids (R,), their attention (R, n))): the last
    two become the trace's text and lists in ``finish``, after the timed part."""
    method = cfg.spec
    rope = ad.rope(seq.h, seq.pos)
    n_seq = seq.h.shape[1]
    n_rows = method.query_rows(seq.n_query)
    rows = torch.arange(n_seq - n_rows, n_seq, device=seq.h.device)
    q, k, scale = ad.query_key(i, seq.h, rows, rope)
    per_row = attention_rows(q, k, scale, cfg.attn_chunk, row_positions=rows)[:, seq.vis_pos]   # (R, n_vis)
    n_vis = seq.vis_pos.numel()
    peak = seq.h[0, seq.vis_pos].float().abs().amax(dim=-1) if method.reads_sinks else per_row.new_zeros(0)
    host = torch.cat([per_row.flatten().float(), peak, seq.vis_ids.float()]).cpu()   # one transfer to the host
    a, b = n_rows * n_vis, n_rows * n_vis + peak.numel()
    per_row, peak, vis_ids = host[:a].view(n_rows, n_vis), host[a:b], host[b:].long()
    attention = per_row.mean(dim=0) if n_rows else torch.zeros(n_vis)
    sinks = lm_sinks(peak, cfg.sink_kappa, cfg.max_register_frac) if method.reads_sinks else \
        torch.zeros(n_vis, dtype=torch.bool)
    keep, trace = method.stage2(attention, vis_ids, n, stats, sinks, cfg, i)
    full = torch.full((n_rows, n), float("nan"))
    full[:, vis_ids] = per_row
    return keep, trace, (seq.ids[rows], full)


SYNC_EVERY = 8   # decode steps between reads of the stop flags on a GPU (the only host syncs of the loop)


def sync_every(device: torch.device, decoder=None) -> int:
    """Decode steps between reads of the stop flags: ``SYNC_EVERY`` on a GPU (a read waits for the device);
    every step for eager decoding on the CPU, where a read costs nothing and a batch whose requests have all
    stopped should not run up to SYNC_EVERY - 1 more steps of the whole model (short answers: most of it)."""
    return 1 if torch.device(device).type == "cpu" and decoder is None else SYNC_EVERY


def decode(ad: Adapter, batch: list[Request], cache: BatchCache, max_new_tokens: int, decoder=None,
           drop_finished: bool = True) -> None:
    """Greedy decoding of the whole batch on its cache; each request's new tokens continue from its largest
    prompt position + 1. Stop flags stay on the device and are read every ``sync_every`` steps; rows of
    finished requests are then dropped, so a finished request stops costing work.

    ``decoder``: None for eager steps on ``cache`` (the reference), or a static-shape / CUDA-graph step
    runner (``occam.models.decoding``) that takes the cache's rows over. ``drop_finished=False`` keeps every
    row to the end, so that the returned cache is still indexed by request (``return_cache``)."""
    if max_new_tokens == 0:
        return
    dev = ad.device
    eos = torch.tensor(sorted(ad.eos_token_ids), dtype=torch.long, device=dev)
    logits = torch.stack([r.logits for r in batch]).to(dev)
    live = torch.arange(len(batch))                                   # host: which request each row is
    pos = torch.tensor([int(r.seq.pos.max()) + 1 for r in batch], device=dev)
    n_pos = batch[0].seq.pos.shape[0]
    out = torch.zeros(len(batch), max_new_tokens, dtype=torch.long, device=dev)
    steps = torch.full((len(batch),), max_new_tokens, dtype=torch.long, device=dev)   # tokens each produced
    done = torch.zeros(len(batch), dtype=torch.bool, device=dev)
    state = None
    every = sync_every(dev, decoder)
    if decoder is not None and max_new_tokens > 1:
        state = decoder.acquire(cache, logits.argmax(dim=-1), pos)
        cache.keys = cache.values = None                              # the state holds them now
    else:
        cache.start_decoding()
    try:
        for step in range(max_new_tokens):
            tok = logits.argmax(dim=-1)
            rows = live.to(dev)
            out[rows, step] = tok
            stop = torch.isin(tok, eos) & ~done[rows]
            steps[rows[stop]] = step + 1
            done[rows] |= stop
            if step == max_new_tokens - 1:
                break
            if (step + 1) % every == 0:
                alive = ~done[rows].cpu()
                if not alive.any():
                    break
                if not alive.all() and drop_finished:
                    if state is None:
                        cache.keep(torch.nonzero(alive).flatten())
                        live, pos, tok = live[alive], pos[alive.to(dev)], tok[alive.to(dev)]
                    else:
                        state, moved = decoder.keep(state, alive, max_new_tokens - step - 1)
                        if moved:
                            live, tok = live[alive], tok[alive.to(dev)]
            if state is not None:
                logits = decoder.step(state, tok)
                continue
            h = ad.embed(tok[:, None])
            rope = ad.rope(h, pos[:, None, None].expand(-1, n_pos, 1))
            cache.begin_step()
            for i in range(ad.num_layers):
                h = ad.layer(i, h, rope, cache, mask=cache.step_mask(i, h.dtype))
            cache.end_step()
            logits = ad.logits(h)
            pos = pos + 1
    finally:
        if state is not None:
            decoder.release(state)
    out, steps = out.cpu(), steps.cpu()
    for b, r in enumerate(batch):
        r.tokens = out[b, :int(steps[b])].tolist()
