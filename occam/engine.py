"""The engine: one request, as named steps. Preprocess -> vision (+ Stage I) -> prompt sequence ->
prefill layer by layer with the cut at K (Stage II) -> greedy decoding -> trace.

Tokens dropped by Stage I never reach the language model; tokens dropped at layer K are physically
removed from the hidden states, position ids and rotary tables before layer K runs, so they never
enter the KV cache of layers >= K. The engine calls the model only through its adapter
(``occam.models``) and decides nothing itself (``occam.policy`` does). Everything about a call
lives in that call's locals.
"""
from __future__ import annotations

import time
import zlib
from dataclasses import dataclass
from typing import Any

import torch

from . import cost, policy
from .config import OccamConfig
from .evidence import attention_rows
from .models.base import Adapter, Prepared, VisionOutput, VisionStats
from .registers import outlier_indices
from .trace import StageTrace, Trace, _floats


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

    def cut(self, keep_vis: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]):
        """Drop the visual tokens with keep_vis False from everything the next layers see."""
        keep_vis = keep_vis.to(self.h.device)
        keep = torch.ones(self.h.shape[1], dtype=torch.bool, device=self.h.device)
        keep[self.vis_pos[~keep_vis]] = False
        new_index = torch.cumsum(keep.long(), 0) - 1
        self.h, self.pos, self.ids = self.h[:, keep], self.pos[:, keep], self.ids[keep]
        self.vis_pos, self.vis_ids = new_index[self.vis_pos[keep_vis]], self.vis_ids[keep_vis]
        return tuple(t[:, keep] for t in rope)


def run(ad: Adapter, name: str, image, question: str, cfg: OccamConfig, max_new_tokens: int,
        return_cache: bool = False, segments=None) -> Result:
    """Answer ``question`` about ``image`` under ``cfg``: the whole request, step by step.

    ``segments``: how runs of decoder layers execute in the prefill (``occam.models.graphs``): None
    for eager per-layer calls, or a padded / CUDA-graph runner.
    """
    clock = Clock(ad.device)
    prep = ad.prepare(image, question)
    clock.lap("preprocess_s", "total_s")
    vis, stats, keep, embeds, stage1 = vision(ad, prep, cfg, clock)
    trace = Trace(model=name, family=ad.family, config=cfg.to_dict(), image_size=tuple(prep.image_size),
                  num_visual=vis.n, boxes=vis.boxes, grid=vis.grid, kinds=vis.kinds)
    seq = sequence(ad, prep, vis, embeds, keep)
    full_len, stage1_len = prep.inputs["input_ids"].shape[1], seq.h.shape[1]
    logits, cache, lengths, keep, stage2 = prefill(ad, seq, vis, stats, keep, cfg, clock, segments)
    trace.kv_cache_bytes = cost.kv_cache_bytes(cache)
    tokens = decode(ad, cache, logits, int(seq.pos.max()) + 1, max_new_tokens)
    clock.lap("decode_s", "total_s")

    trace.stages = [s for s in (stage1, stage2) if s is not None]
    if stage2 is not None:
        stage2.query_attention = _floats(stage2.query_attention, digits=4)
        stage2.query_tokens = ad.token_texts(stage2.query_tokens)
    empty = next((s.name for s in trace.stages if s.content_left == 0), None)
    trace.flags = {"no_content": empty} if empty else {}
    n_final = int(keep.sum())
    trace.kept = keep.tolist()
    trace.counts = {"visual": vis.n, "after_stage1": stage1_len - (full_len - vis.n), "after_stage2": n_final,
                    "final": n_final, "retention": n_final / vis.n if vis.n else 1.0}
    if vis.frame is not None:                  # video: frame index, time and counts of every frame
        trace.add_frames(vis.frame.tolist(), vis.frame_times)
    t = clock.times
    t["decode_tokens_per_s"] = (len(tokens) - 1) / t["decode_s"] if len(tokens) > 1 and t["decode_s"] > 0 else None
    trace.timings = {k: round(v, 6) if v is not None else None for k, v in t.items()}
    trace.flops = {"prefill": cost.prefill_flops(ad.lm.config, lengths),
                   "prefill_full": cost.prefill_flops(ad.lm.config, [full_len] * len(lengths))}
    trace.sequence = {"prompt": full_len, "after_stage1": stage1_len, "per_layer": lengths,
                      "stage2_layer": stage2.layer if stage2 is not None else None,
                      "prefill_path": getattr(segments, "name", "eager"),
                      "preprocess_path": "torchvision" if ad.device_processor is not None else "pil"}
    text = ad.processor.tokenizer.decode(tokens, skip_special_tokens=True).strip()
    return Result(text, tokens, trace, logits, cache if return_cache else None)


def run_batch(ad: Adapter, name: str, images: list, questions: list[str], cfgs: list[OccamConfig],
              max_new_tokens: int, return_cache: bool = False, segments=None) -> list[Result]:
    """Every request of a validated batch, each exactly as it would run alone."""
    return [run(ad, name, im, q, c, max_new_tokens, return_cache, segments) for im, q, c in zip(images, questions, cfgs)]


def vision(ad: Adapter, prep: Prepared, cfg: OccamConfig, clock: Clock):
    """Visual tokens, their Stage-I statistics (when the method needs them) and the Stage-I selection."""
    vis = ad.encode(prep)
    clock.lap("vision_s", "total_s")
    stats = ad.stats(vis, cfg) if cfg.uses_vision_stats else None
    vis.captured = None                      # release the captured vision layer
    seed = _input_digest(prep) if cfg.method == "random" else 0
    keep, embeds, stage1 = policy.stage1(vis, stats, cfg, seed)
    clock.lap("scoring_s", "vision_s", "total_s")   # Stage-I statistics and selection: part of vision_s
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


def prefill(ad: Adapter, seq: Sequence, vis: VisionOutput, stats: VisionStats | None, keep: torch.Tensor,
            cfg: OccamConfig, clock: Clock, segments=None):
    """All decoder layers over the prompt, Stage II (or FastV) cutting the sequence before layer K.

    Returns (first logits (V,) float32, the KV cache, tokens per layer, kept mask (N,), Stage-II trace or None).
    """
    cache = ad.new_cache()
    rope = ad.rope(seq.h, seq.pos)
    k_layer = cfg.decoder_layer(ad.num_layers) if cfg.uses_stage2 else None
    bounds = sorted({0, ad.num_layers} | ({k_layer} if k_layer is not None else set()))
    lengths, stage = [], None
    for start, stop in zip(bounds, bounds[1:]):
        if start == k_layer:
            clock.lap("prefill_s", "total_s")
            keep2, stage = stage2(ad, start, seq, rope, vis.n, stats, cfg)
            rope = seq.cut(keep2, rope)
            keep = torch.tensor(stage.kept, dtype=torch.bool)
            clock.lap("scoring_s", "prefill_s", "total_s")   # Stage-II scoring: part of prefill_s
        lengths += [seq.h.shape[1]] * (stop - start)
        layers(ad, start, stop, seq, rope, cache, vis.deepstack, segments)
    logits = ad.logits(seq.h[:, -1:]).float()
    clock.lap("prefill_s", "total_s")
    return logits, cache, lengths, keep, stage


def layers(ad: Adapter, start: int, stop: int, seq: Sequence, rope, cache, deepstack: list | None, segments) -> None:
    """Decoder layers start..stop-1 on ``seq.h``: one call each where Qwen3-VL adds its deepstack features
    after the layer (only the kept tokens' features), the rest through ``segments`` when there is one."""
    n_deep = len(deepstack) if deepstack is not None else 0
    i = start
    while i < stop and (segments is None or i < n_deep):
        seq.h = ad.layer(i, seq.h, rope, cache)
        if i < n_deep:
            seq.h = seq.h.clone()
            seq.h[0, seq.vis_pos] += deepstack[i][seq.vis_ids].to(seq.h.dtype)
        i += 1
    if i < stop:
        seq.h = segments(i, stop, seq.h, rope, cache)


def stage2(ad: Adapter, i: int, seq: Sequence, rope, n: int, stats: VisionStats | None,
           cfg: OccamConfig) -> tuple[torch.Tensor, StageTrace]:
    """Stage II (or FastV) scores from decoder layer i's own q and k: only the query rows are computed."""
    n_seq = seq.h.shape[1]
    n_rows = 1 if cfg.method == "fastv" else seq.n_query   # FastV: the last token; else the text after the image
    rows = torch.arange(n_seq - n_rows, n_seq, device=seq.h.device)
    q, k, scale = ad.query_key(i, seq.h, rows, rope)
    per_row = attention_rows(q, k, scale, cfg.attn_chunk, row_positions=rows)[:, seq.vis_pos]   # (R, n_vis)
    n_vis = seq.vis_pos.numel()
    peak = seq.h[0, seq.vis_pos].float().abs().amax(dim=-1) if cfg.method != "fastv" else per_row.new_zeros(0)
    host = torch.cat([per_row.flatten().float(), peak, seq.vis_ids.float()]).cpu()   # one transfer to the host
    a, b = n_rows * n_vis, n_rows * n_vis + peak.numel()
    per_row, peak, vis_ids = host[:a].view(n_rows, n_vis), host[a:b], host[b:].long()
    attention = per_row.mean(dim=0) if n_rows else torch.zeros(n_vis)
    sinks = torch.zeros(n_vis, dtype=torch.bool)
    if cfg.method != "fastv":
        sinks[outlier_indices(peak, cfg.sink_kappa, cfg.max_register_frac)] = True
    keep, trace = policy.stage2(attention, vis_ids, n, stats, sinks, cfg, i)
    full = torch.full((n_rows, n), float("nan"))
    full[:, vis_ids] = per_row
    trace.query_tokens = seq.ids[rows]    # token ids until the request is timed; run() makes them texts
    trace.query_attention = full          # a tensor until the request is timed; run() makes it a list
    return keep, trace


def decode(ad: Adapter, cache, logits: torch.Tensor, next_pos: int, max_new_tokens: int) -> list[int]:
    """Greedy decoding on the (pruned) cache; new tokens continue from the largest prompt position + 1."""
    tokens: list[int] = []
    eos, device = ad.eos_token_ids, ad.device
    for step in range(max_new_tokens):
        tok = int(logits.argmax())
        tokens.append(tok)
        if tok in eos or step == max_new_tokens - 1:
            break
        h = ad.embed(torch.tensor([tok], device=device))
        rope = ad.rope(h, torch.full((3 if ad.mrope else 1, 1), next_pos + step, device=device))
        for i in range(ad.num_layers):
            h = ad.layer(i, h, rope, cache)
        logits = ad.logits(h)
    return tokens
