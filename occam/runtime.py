"""Run a VLM full or pruned: Stage I before the language model, Stage II inside it, greedy decoding.

The language model is run layer by layer with the model's own modules, so that tokens dropped at
layer K are physically removed from the hidden states, position embeddings and masks, and never
enter the KV cache of layers >= K. Everything about a call lives in that call's locals.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Iterable

import torch
from transformers import DynamicCache

from . import cost
from .config import OccamConfig
from .evidence import (attention_colmean, budget, keep_by_threshold, keep_top, random_keep,
                       relative_evidence, visionzip_groups)
from .inputs import check_question, to_rgb
from .models import adapter_for
from .models.base import Adapter, VisionOutput
from .registers import massive_activation_tokens
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


class _Clock:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.times: dict[str, float] = {}

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def add(self, name: str, seconds: float) -> None:
        self.times[name] = self.times.get(name, 0.0) + seconds


class VLM:
    """A loaded model + processor behind one call: ``generate(image, question, config=...)``."""

    def __init__(self, model, processor, name: str = "custom"):
        model.eval()
        self.name = name
        self.model = model
        self.processor = processor
        self.adapter: Adapter = adapter_for(model, processor)

    @property
    def family(self) -> str:
        return self.adapter.family

    @property
    def num_layers(self) -> int:
        return len(self.adapter.text_model.layers)

    def generate(self, image, question: str, config: OccamConfig | None = None, max_new_tokens: int = 64,
                 return_cache: bool = False) -> Result:
        """Answer ``question`` about ``image`` (a PIL image) with greedy decoding under ``config``."""
        cfg = OccamConfig() if config is None else config
        if not isinstance(cfg, OccamConfig):
            raise TypeError(f"config must be an occam.OccamConfig, got {type(cfg).__name__}.")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens={max_new_tokens!r} is invalid: accepted an integer >= 0.")
        image = to_rgb(image)
        question = check_question(question)
        if cfg.uses_stage2:
            cfg.decoder_layer(self.num_layers)  # validates K before any work
        with torch.inference_mode():
            return _run(self, image, question, cfg, max_new_tokens, return_cache)

    def calibrate(self, samples: Iterable[tuple[Any, str]], target: float,
                  config: OccamConfig | None = None, tol: float = 0.005, iters: int = 24) -> OccamConfig:
        return calibrate(self, samples, target, config, tol, iters)


# ----------------------------------------------------------------------------------------------
def _run(vlm: VLM, image, question: str, cfg: OccamConfig, max_new_tokens: int, return_cache: bool) -> Result:
    ad = vlm.adapter
    clock = _Clock(ad.device)
    t0 = clock.now()
    prep = ad.prepare(image, question)
    t1 = clock.now()
    clock.add("preprocess_s", t1 - t0)
    vis = ad.encode(prep)
    t2 = clock.now()
    if cfg.method in ("occam", "topk", "visionzip"):
        ad.stats(vis, cfg)
    vis.extra = {}                      # release the captured vision layer
    keep, embeds, stage1 = _stage1(vis, cfg)
    t3 = clock.now()
    clock.add("scoring_s", t3 - t2)     # Stage-I statistics and selection; also inside vision_s
    clock.add("vision_s", t3 - t1)
    trace = Trace(model=vlm.name, family=ad.family, config=cfg.to_dict(), image_size=tuple(prep.image_size),
                  num_visual=vis.n, boxes=vis.boxes, grid=vis.grid, kinds=vis.kinds)
    if stage1 is not None:
        trace.stages.append(stage1)

    # -- the prompt sequence with Stage-I-dropped visual tokens removed ------------------------
    lm = ad.text_model
    ids = prep.inputs["input_ids"][0]
    slots = torch.nonzero(ids == ad.image_token_id).flatten()
    if slots.numel() != vis.n:
        raise RuntimeError(f"{ad.family}: {slots.numel()} image placeholders but {vis.n} visual features.")
    emb = lm.embed_tokens(ids[None])[0].clone()
    emb[slots] = embeds.to(emb.dtype)
    pos = ad.positions(prep)
    seq_keep = torch.ones(ids.numel(), dtype=torch.bool, device=ids.device)
    seq_keep[slots[~keep.to(ids.device)]] = False
    state = _Seq(h=emb[seq_keep][None], pos=pos[:, seq_keep],
                 vis_pos=(torch.cumsum(seq_keep.long(), 0) - 1)[slots[keep.to(ids.device)]],
                 vis_ids=torch.nonzero(keep).flatten().to(ids.device))
    full_len, stage1_len = ids.numel(), state.h.shape[1]

    # -- prefill, layer by layer ---------------------------------------------------------------
    t4 = clock.now()
    cache = DynamicCache(config=lm.config)
    cos, sin = lm.rotary_emb(state.h, state.rope_pos(ad.mrope))
    k_layer = cfg.decoder_layer(len(lm.layers)) if cfg.uses_stage2 else None
    lengths = []
    for i, layer in enumerate(lm.layers):
        if i == k_layer:
            ts = clock.now()
            keep2, stage2 = _stage2(ad, layer, state, cos, sin, vis, keep, cfg, i)
            cos, sin = state.cut(keep2, cos, sin)
            keep = torch.zeros_like(keep)
            keep[state.vis_ids.cpu()] = True
            stage2.kept = keep.tolist()
            trace.stages.append(stage2)
            clock.add("scoring_s", clock.now() - ts)   # Stage-II scoring; also inside prefill_s
        lengths.append(state.h.shape[1])
        state.h = layer(state.h, attention_mask=_causal_mask(lm, state.h), position_embeddings=(cos, sin),
                        past_key_values=cache)
        if vis.deepstack is not None and i < len(vis.deepstack):
            state.h = state.h.clone()
            state.h[0, state.vis_pos] += vis.deepstack[i][state.vis_ids].to(state.h.dtype)
    logits = ad.lm_head(lm.norm(state.h[:, -1:]))[0, -1].float()
    t5 = clock.now()
    clock.add("prefill_s", t5 - t4)
    kv_bytes = cost.kv_cache_bytes(cache)

    # -- greedy decoding on the pruned cache -------------------------------------------------
    tokens, next_logits = [], logits
    next_pos = int(state.pos.max()) + 1
    eos = ad.eos_token_ids
    for step in range(max_new_tokens):
        tok = int(next_logits.argmax())
        tokens.append(tok)
        if tok in eos or step == max_new_tokens - 1:
            break
        h = lm.embed_tokens(torch.tensor([[tok]], device=ids.device))
        p = torch.full((3 if ad.mrope else 1, 1, 1), next_pos + step, device=ids.device)
        c, s = lm.rotary_emb(h, p if ad.mrope else p[0])
        for layer in lm.layers:
            h = layer(h, attention_mask=None, position_embeddings=(c, s), past_key_values=cache)
        next_logits = ad.lm_head(lm.norm(h))[0, -1]
    t6 = clock.now()
    clock.add("decode_s", t6 - t5)
    clock.add("total_s", t6 - t0)
    clock.times["decode_tokens_per_s"] = (len(tokens) - 1) / clock.times["decode_s"] if len(tokens) > 1 else None

    n_final = int(keep.sum())
    trace.kept = keep.tolist()
    trace.counts = {"visual": vis.n, "after_stage1": stage1_len - (full_len - vis.n), "after_stage2": n_final,
                    "final": n_final, "retention": n_final / vis.n if vis.n else 1.0}
    trace.timings = {k: round(v, 6) if v is not None else None for k, v in clock.times.items()}
    trace.flops = {"prefill": cost.prefill_flops(lm.config, lengths),
                   "prefill_full": cost.prefill_flops(lm.config, [full_len] * len(lengths))}
    trace.kv_cache_bytes = kv_bytes
    trace.sequence = {"prompt": full_len, "after_stage1": stage1_len, "per_layer": lengths,
                      "stage2_layer": k_layer}
    text = ad.processor.tokenizer.decode(tokens, skip_special_tokens=True).strip()
    return Result(text, tokens, trace, logits, cache if return_cache else None)


@dataclass
class _Seq:
    """The running prefill sequence: hidden states, positions, and where the visual tokens sit."""
    h: torch.Tensor           # (1, L, D)
    pos: torch.Tensor         # (P, L) position ids, P = 1 or 3 (M-RoPE)
    vis_pos: torch.Tensor     # (n,) index in the sequence of each remaining visual token
    vis_ids: torch.Tensor     # (n,) which visual token (0..N-1) sits there

    def rope_pos(self, mrope: bool) -> torch.Tensor:
        return self.pos[:, None] if mrope else self.pos

    def cut(self, keep_vis: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """Drop the visual tokens with keep_vis False from everything the next layers see."""
        keep_vis = keep_vis.to(self.h.device)
        seq_keep = torch.ones(self.h.shape[1], dtype=torch.bool, device=self.h.device)
        seq_keep[self.vis_pos[~keep_vis]] = False
        new_index = torch.cumsum(seq_keep.long(), 0) - 1
        self.h, self.pos = self.h[:, seq_keep], self.pos[:, seq_keep]
        self.vis_pos, self.vis_ids = new_index[self.vis_pos[keep_vis]], self.vis_ids[keep_vis]
        return cos[:, seq_keep], sin[:, seq_keep]


def _causal_mask(lm, h: torch.Tensor) -> torch.Tensor | None:
    """None lets sdpa / flash use their causal kernels; eager attention needs an explicit mask."""
    n = h.shape[1]
    if n == 1 or lm.config._attn_implementation != "eager":
        return None
    mask = torch.full((n, n), torch.finfo(h.dtype).min, dtype=h.dtype, device=h.device).triu(1)
    return mask[None, None]


def _stage1(vis: VisionOutput, cfg: OccamConfig) -> tuple[torch.Tensor, torch.Tensor, StageTrace | None]:
    """Stage I (or a vision-side baseline): which visual tokens reach the language model."""
    n = vis.n
    keep = torch.ones(n, dtype=torch.bool)
    embeds = vis.embeds
    newline = torch.tensor([k == "newline" for k in vis.kinds], dtype=torch.bool)
    if cfg.method == "random":
        keep = random_keep(n, budget(n, cfg.retention), cfg.seed)
        return keep, embeds, _budget_stage("random", None, list(range(n)), None, keep)
    if cfg.method == "visionzip":
        total = budget(n, cfg.retention)
        n_ctx = min(total - 1, round(total * cfg.visionzip_contextual)) if total > 1 else 0
        dominant, assign = visionzip_groups(vis.cls_attention.cpu(), vis.keys.cpu(), total - n_ctx, n_ctx)
        targets = torch.unique(assign[assign >= 0])
        keep = dominant.clone()
        keep[targets] = True
        embeds = embeds.clone()
        for t in targets.tolist():
            embeds[t] = vis.embeds[(assign == t).to(embeds.device)].mean(0)
        st = _budget_stage("visionzip", vis.layer, list(range(n)), vis.cls_attention.cpu(), keep)
        st.merged_into = [int(a) if a >= 0 and a != j else None for j, a in enumerate(assign.tolist())]
        return keep, embeds, st
    if not (cfg.method in ("occam", "topk") and cfg.stage1):
        return keep, embeds, None
    regs = vis.registers.cpu()
    cand = ~regs & ~newline
    sc = relative_evidence(vis.evidence.cpu(), cand, regs, cfg.reference,
                           None if vis.register_values is None else vis.register_values.cpu())
    share = math.sqrt(cfg.retention) if cfg.stage2 else cfg.retention
    keep, rail, threshold = _select(cfg, sc, cand, regs, cfg.alpha, budget(n, share))
    if vis.row_id is not None and newline.any():  # a NeXT row-end token stays iff its row keeps a token
        rows_kept = set(vis.row_id[keep & ~newline].tolist())
        keep[newline] = torch.tensor([r in rows_kept for r in vis.row_id[newline].tolist()], dtype=torch.bool)
    return keep, embeds, StageTrace(
        name="stage1", layer=vis.layer, n_in=n, n_out=int(keep.sum()),
        candidates=torch.nonzero(cand).flatten().tolist(), registers=torch.nonzero(regs).flatten().tolist(),
        register_source=vis.register_source if regs.any() else "none", reference_kind=sc.reference_kind,
        reference=sc.reference, threshold=threshold, scores=_floats(sc.scores), kept=keep.tolist(), rail=rail,
        register_attention=None if vis.register_attention is None else _floats(vis.register_attention.cpu()))


def _stage2(ad: Adapter, layer, state: _Seq, cos, sin, vis: VisionOutput, keep1: torch.Tensor,
            cfg: OccamConfig, k_layer: int) -> tuple[torch.Tensor, StageTrace]:
    """Stage II (or FastV) at decoder layer K: which of the remaining visual tokens go on."""
    n_seq, n_vis = state.h.shape[1], state.vis_pos.numel()
    if cfg.method == "fastv":
        rows = torch.tensor([n_seq - 1], device=state.h.device)
    else:  # the question and assistant prompt: every token after the last visual token
        rows = torch.arange(int(state.vis_pos.max()) + 1 if n_vis else 0, n_seq, device=state.h.device)
    q, k, scale = ad.query_key(layer, state.h, rows, cos, sin)
    attn = attention_colmean(q, k, scale, cfg.attn_chunk, row_positions=rows)[state.vis_pos].cpu()
    ids = state.vis_ids.cpu()
    all_scores = torch.full((vis.n,), float("nan"))
    if cfg.method == "fastv":
        keep2 = keep_top(attn, torch.ones(n_vis, dtype=torch.bool), budget(vis.n, cfg.retention))
        all_scores[ids] = attn
        kept = keep1.clone()
        kept[ids[~keep2]] = False
        return keep2, _budget_stage("fastv", k_layer, ids.tolist(), all_scores, kept)
    stage1_regs = vis.registers.cpu()[ids] if vis.registers is not None else torch.zeros(n_vis, dtype=torch.bool)
    sinks = torch.zeros(n_vis, dtype=torch.bool)
    sinks[massive_activation_tokens(state.h[0, state.vis_pos], cfg.sink_kappa, cfg.max_register_frac).cpu()] = True
    regs = stage1_regs | sinks
    cand = ~regs
    sc = relative_evidence(attn, cand, regs, cfg.reference)
    keep2, rail, threshold = _select(cfg, sc, cand, regs, cfg.beta, budget(vis.n, cfg.retention))
    sources = [s for s, on in ((vis.register_source, stage1_regs.any()), ("sink", sinks.any())) if on]
    all_scores[ids] = sc.scores
    return keep2, StageTrace(
        name="stage2", layer=k_layer, n_in=n_vis, n_out=int(keep2.sum()), candidates=ids[cand].tolist(),
        registers=ids[regs].tolist(), register_source="+".join(sources) or "none",
        reference_kind=sc.reference_kind, reference=sc.reference, threshold=threshold,
        scores=_floats(all_scores), kept=[], rail=rail)


def _select(cfg: OccamConfig, sc, cand: torch.Tensor, regs: torch.Tensor, threshold: float,
            count: int) -> tuple[torch.Tensor, str | None, float | None]:
    """occam: keep s >= threshold (rails apply); topk: the same scores with a fixed ``count``."""
    if cfg.method == "occam":
        keep, rail = keep_by_threshold(sc.scores, cand, regs, threshold, cfg.keep_registers,
                                       cfg.min_tokens, cfg.max_tokens)
        return keep, rail, threshold
    keep = keep_top(sc.scores, cand, count, regs if cfg.keep_registers else None)
    return keep, None, _lowest(sc.scores, keep & cand)


def _lowest(scores: torch.Tensor, mask: torch.Tensor) -> float | None:
    vals = scores[mask]
    vals = vals[torch.isfinite(vals)]
    return float(vals.min()) if vals.numel() else None


def _budget_stage(name: str, layer: int | None, candidates: list[int], scores: torch.Tensor | None,
                  kept: torch.Tensor) -> StageTrace:
    """Trace of a fixed-budget stage (random, visionzip, fastv): no register reference.

    scores: (N,) per visual token (NaN where not scored) or None; kept: (N,) after the stage.
    """
    n = kept.numel()
    scores = torch.full((n,), float("nan")) if scores is None else scores.float()
    return StageTrace(name=name, layer=layer, n_in=len(candidates), n_out=int(kept.sum()), candidates=candidates,
                      registers=[], register_source="none", reference_kind="budget", reference=None,
                      threshold=_lowest(scores, kept), scores=_floats(scores), kept=kept.tolist())


# ----------------------------------------------------------------------------------------------
def calibrate(vlm: VLM, samples: Iterable[tuple[Any, str]], target: float, config: OccamConfig | None = None,
              tol: float = 0.005, iters: int = 24) -> OccamConfig:
    """alpha / beta giving a target AVERAGE retention over ``samples`` (METHOD.md section 4).

    Bisection on log(alpha) with Stage II off (target sqrt(t) when both stages are on, t otherwise),
    then on log(beta) with that alpha. A stage's scores do not depend on its own threshold, so each
    sample is run once per stage and the bisection works on its traced scores; one more pass checks
    the result, and only if it disagrees (NeXT row-end tokens, scores at a rounding edge) does the
    bisection fall back to full runs (``iters`` steps). Returns ``config`` with the found alpha and beta.
    """
    cfg = OccamConfig(method="occam") if config is None else config
    if cfg.method != "occam":
        raise ValueError(f"calibrate() tunes method='occam', got method={cfg.method!r}.")
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target <= 1:
        raise ValueError(f"target={target!r} is invalid: accepted a retention in (0, 1].")
    samples = list(samples)
    if not samples:
        raise ValueError("calibrate() needs at least one (image, question) sample.")

    def traces(c: OccamConfig) -> list[Trace]:
        return [vlm.generate(img, q, c, max_new_tokens=0).trace for img, q in samples]

    def mean_retention(ts: list[Trace]) -> float:
        return sum(t.counts["retention"] for t in ts) / len(ts)

    def bisect(retention_at, goal: float, steps: int) -> float:
        lo, hi = math.log(1e-4), math.log(1e4)   # retention falls as the threshold rises
        best, err = 0.0, math.inf
        for _ in range(steps):
            mid = (lo + hi) / 2
            r = retention_at(math.exp(mid))
            if abs(r - goal) < err:
                best, err = mid, abs(r - goal)
            if err <= tol:
                break
            lo, hi = (mid, hi) if r > goal else (lo, mid)
        return math.exp(best)

    def solve(field: str, base: OccamConfig, goal: float) -> OccamConfig:
        stage = "stage1" if field == "alpha" else "stage2"
        seen = traces(base)
        predicted = lambda t: sum(_retention_at(tr, stage, t, base) for tr in seen) / len(seen)  # noqa: E731
        found = base.replace(**{field: bisect(predicted, goal, 60)})
        r = mean_retention(traces(found))
        if abs(r - goal) <= tol or abs(r - predicted(getattr(found, field))) < 1e-9:
            return found
        return base.replace(**{field: bisect(lambda t: mean_retention(traces(base.replace(**{field: t}))),
                                             goal, iters)})

    use_stage2 = cfg.stage2
    if cfg.stage1:
        goal1 = math.sqrt(target) if use_stage2 else target
        cfg = solve("alpha", cfg.replace(stage2=False), goal1).replace(stage2=use_stage2)
    if use_stage2:
        cfg = solve("beta", cfg, target)
    return cfg


def _retention_at(trace: Trace, stage: str, threshold: float, cfg: OccamConfig) -> float:
    """Retention the traced run would have had with ``threshold`` for ``stage`` (same selection rule)."""
    st = next(s for s in trace.stages if s.name == stage)
    n = trace.num_visual
    scores = torch.tensor([math.nan if v is None else v for v in st.scores])
    cand, regs = torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)
    cand[st.candidates], regs[st.registers] = True, True
    keep, _ = keep_by_threshold(scores, cand, regs, threshold, cfg.keep_registers, cfg.min_tokens, cfg.max_tokens)
    other = sum(k for j, k in enumerate(st.kept) if not (cand[j] or regs[j]))  # NeXT row-end tokens (stage I)
    return (int(keep.sum()) + other) / n
