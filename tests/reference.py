"""Independent references for the pruned runs, built from the unmodified Hugging Face modules.

Stage I reference: the model's own text model fed only the kept visual tokens (original positions).
Stage II reference: the text model's layers < K on everything, layers >= K on the kept subset
(same positions), recomputed from scratch at every decoding step (no KV cache involved).
"""
from __future__ import annotations

import copy
from collections import OrderedDict

import torch
from torch import nn


def sliced_text_model(lm, start: int, stop: int, final_norm: bool):
    """A shallow copy of a transformers text model running only layers[start:stop] (shares weights)."""
    m = copy.copy(lm)
    m._modules = OrderedDict(lm._modules)
    m.layers = nn.ModuleList(list(lm.layers)[start:stop])
    if not final_norm:
        m.norm = nn.Identity()
    cfg = copy.copy(lm.config)
    cfg.num_hidden_layers = stop - start
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = list(cfg.layer_types)[start:stop]
    m.config = cfg
    return m


def _run(lm, embeds, pos, mrope, vis_mask, deepstack):
    kwargs = {}
    if deepstack is not None:
        kwargs = {"visual_pos_masks": vis_mask[None], "deepstack_visual_embeds": deepstack}
    out = lm(inputs_embeds=embeds[None], position_ids=pos[:, None] if mrope else pos,
             attention_mask=torch.ones(1, embeds.shape[0], dtype=torch.long), use_cache=False, **kwargs)
    return out.last_hidden_state[0]


@torch.inference_mode()
def hf_generate(vlm, image, question: str, steps: int):
    """The unmodified model's own greedy ``generate`` (new ids) and first-step logits on the same inputs."""
    prep = vlm.adapter.prepare(image, question)
    logits = vlm.model(**prep.inputs).logits[0, -1].float()
    out = vlm.model.generate(**prep.inputs, max_new_tokens=steps, do_sample=False)
    return out[0, prep.inputs["input_ids"].shape[1]:].tolist(), logits


@torch.inference_mode()
def reference_generate(vlm, image, question: str, keep1: torch.Tensor, keep2: torch.Tensor | None = None,
                       layer_k: int | None = None, steps: int = 4):
    """Greedy tokens and first-step logits of the reference for the given kept sets."""
    ad = vlm.adapter
    lm = ad.lm
    prep = ad.prepare(image, question)
    vis = ad.encode(prep)
    ids = prep.inputs["input_ids"][0]
    slots = torch.nonzero(ids == ad.placeholder_id(prep)).flatten()
    emb = lm.embed_tokens(ids[None])[0].clone()
    emb[slots] = vis.embeds.to(emb.dtype)
    pos = ad.positions(prep)
    seq1 = torch.ones(ids.numel(), dtype=torch.bool)
    seq1[slots[~keep1]] = False
    is_vis = torch.zeros(ids.numel(), dtype=torch.bool)
    is_vis[slots] = True
    vis_id = torch.full((ids.numel(),), -1, dtype=torch.long)
    vis_id[slots] = torch.arange(slots.numel())
    next_pos = int(pos.max()) + 1
    tokens, first_logits = [], None
    for step in range(steps):
        gen = torch.tensor(tokens, dtype=torch.long)
        E = torch.cat([emb[seq1], lm.embed_tokens(gen[None])[0]]) if tokens else emb[seq1]
        gpos = (next_pos + torch.arange(len(tokens)))[None].expand(pos.shape[0], -1)
        P = torch.cat([pos[:, seq1], gpos], dim=1)
        vmask = torch.cat([is_vis[seq1], torch.zeros(len(tokens), dtype=torch.bool)])
        vids = torch.cat([vis_id[seq1], torch.full((len(tokens),), -1)])
        ds = vis.deepstack
        if layer_k is None:
            h = _run(lm, E, P, ad.mrope, vmask, [d[vids[vmask]] for d in ds] if ds else None)
        else:
            lower = sliced_text_model(lm, 0, layer_k, final_norm=False)
            upper = sliced_text_model(lm, layer_k, len(lm.layers), final_norm=True)
            hk = _run(lower, E, P, ad.mrope, vmask, [d[vids[vmask]] for d in ds[:layer_k]] if ds else None)
            seq2 = ~(vmask & ~keep2[vids.clamp(min=0)])
            v2 = vmask[seq2]
            upper_ds = [d[vids[seq2][v2]] for d in ds[layer_k:]] if ds and len(ds) > layer_k else None
            h = _run(upper, hk[seq2], P[:, seq2], ad.mrope, v2, upper_ds)
        logits = ad.model.lm_head(h[-1:])[0].float()
        first_logits = logits if first_logits is None else first_logits
        tokens.append(int(logits.argmax()))
        if tokens[-1] in ad.eos_token_ids:
            break
    return tokens, first_logits
