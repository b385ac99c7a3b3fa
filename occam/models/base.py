"""What every model-family adapter provides, and the language-model side they all share.

An adapter is the ONLY place that knows Hugging Face internals (with ``processors``). It turns
(image, question) into model inputs, runs the vision side (the visual tokens as the language model
sees them, and the Stage-I statistics of the vision layer whose features the language model
receives), and runs the language model one decoder layer at a time for ``occam.engine``, which
removes tokens between layers and never touches a transformers module itself.

Reads from the model: the vision tower's scored layer (its input, via ``Probe``), the decoder
layers, embeddings, rotary embedding, final norm and head, each called as its own forward does.
Modifies on the model: nothing. One forward pre-hook and one forward hook are installed once, at
adapter construction, on the scored vision layer (``Probe``). They are inert unless the running
call (a ContextVar, so per thread / per task) asks to capture that layer; they never change outputs.
"""
from __future__ import annotations

import contextlib
import contextvars
import inspect
import sys

import torch
from transformers import DynamicCache

from ..evidence import attention_colmeans
from ..types import Prepared, TokenStats, VisionOutput, VisionStats  # noqa: F401 (re-exported)
from ..video import Video

_CAPTURE: contextvars.ContextVar[dict | None] = contextvars.ContextVar("occam_capture", default=None)


class Probe:
    """Captures the input (hidden states + kwargs) and output of one module, only when asked."""

    def __init__(self, module: torch.nn.Module):
        self.module = module
        module.register_forward_pre_hook(self._pre, with_kwargs=True)
        module.register_forward_hook(self._post, with_kwargs=True)

    def _slot(self) -> dict | None:
        cap = _CAPTURE.get()
        return None if cap is None else cap.get(id(self))

    def _pre(self, module, args, kwargs):
        slot = self._slot()
        if slot is not None:
            slot["input"] = args[0] if args else kwargs["hidden_states"]
            slot["kwargs"] = dict(kwargs)

    def _post(self, module, args, kwargs, output):
        slot = self._slot()
        if slot is not None:
            slot["output"] = output[0] if isinstance(output, tuple) else output

    @contextlib.contextmanager
    def capture(self):
        slot: dict = {}
        token = _CAPTURE.set({id(self): slot})
        try:
            yield slot
        finally:
            _CAPTURE.reset(token)


def vision_token_stats(q: torch.Tensor, k: torch.Tensor, scale: float, registers: torch.Tensor,
                       cls_index: int | None, chunk: int) -> TokenStats:
    """Stage-I statistics from a vision layer's q and k, each (B, H, T, d); registers: (B, T) bool.

    One softmax pass over all query rows gives the three weighted column means; no host synchronisation.
    """
    regs = registers.float()
    rest = 1.0 - regs
    weights = [rest / rest.sum(-1, keepdim=True).clamp(min=1), regs / regs.sum(-1, keepdim=True).clamp(min=1)]
    if cls_index is not None:
        cls = torch.zeros_like(regs)
        cls[:, cls_index] = 1.0
        weights.append(cls)
    means = attention_colmeans(q, k, scale, torch.stack(weights, dim=1), chunk)     # (B, W, T)
    keys = k.transpose(1, 2).reshape(k.shape[0], k.shape[2], -1)
    return TokenStats(means[:, 0], means[:, 1], means[:, 2] if cls_index is not None else None, keys)


def rotary_function(module: torch.nn.Module, name: str):
    """The family's own rotary function, from the transformers module that defines ``module``'s class.

    Each modeling file defines its own ``apply_rotary_pos_emb`` (M-RoPE sections, interleaving, vision
    variants); looking it up there applies exactly the rotation the model's forward applies.
    """
    return getattr(sys.modules[type(module).__module__], name)


def _device_processor(processor, preprocess: str, device: torch.device):
    """The torchvision twin of ``processor`` when ``preprocess`` asks for it (see ``Adapter``), else None."""
    from .processors import torchvision_twin

    if preprocess not in ("auto", "pil", "torchvision"):
        raise ValueError(f"preprocess={preprocess!r} is invalid: accepted 'auto', 'pil' or 'torchvision'.")
    if preprocess == "pil" or (preprocess == "auto" and device.type != "cuda"):
        return None
    twin = torchvision_twin(processor)
    if twin is None and preprocess == "torchvision":
        raise ValueError("preprocess='torchvision' needs torchvision (pip install torchvision matching your torch).")
    return twin


class Adapter:
    """Base adapter. Per family: ``vision_layer``, ``encode``, ``stats`` (and ``positions`` for M-RoPE).
    Shared: inputs (``prepare``) and the language-model side the engine calls between removals."""

    family = "base"
    mrope = False          # positions are (3, L) M-RoPE ids instead of (1, L)
    takes_video = False    # whether ``prepare`` / ``encode`` accept an ``occam.Video``

    def __init__(self, model, processor, preprocess: str = "auto"):
        """``preprocess``: "pil" (Pillow image processors), "torchvision" (their torchvision twins, run on the
        model's device), or "auto" (torchvision on a GPU when it is installed, Pillow otherwise)."""
        self.model = model
        self.processor = processor
        self.config = model.config
        self.device_processor = _device_processor(processor, preprocess, self.device)
        self.lm = model.model.language_model
        # decided once: the cache keyword of the decoder layers ("cache" since transformers 5.2x)
        params = inspect.signature(type(self.lm.layers[0]).forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        # decided once: sdpa / flash attention apply their causal kernels, eager needs the mask spelled out
        self._explicit_mask = self.lm.config._attn_implementation == "eager"
        self._layouts: dict = {}   # token layouts (boxes, grid, ...) by input geometry: pure functions of it
        self.setup(model)          # the family's attributes, then the probe on its scored layer: in this order
        self.probe = Probe(self.vision_layer())

    # -- per family ----------------------------------------------------------------------------
    def setup(self, model) -> None:
        """The family's own attributes, decided once (layers, offsets, module lookups); called by ``__init__``
        before anything reads them, so a family overrides this and never ``__init__``."""

    def vision_layer(self) -> torch.nn.Module:
        """The vision encoder layer whose attention Stage I scores."""
        raise NotImplementedError

    def encode(self, prep: Prepared) -> VisionOutput:
        """Visual tokens as the LM sees them and their boxes; the scored layer is in ``captured``."""
        raise NotImplementedError

    def encode_batch(self, preps: list[Prepared]) -> list[VisionOutput]:
        """``encode`` of every input; families whose tower takes several inputs at once override it."""
        return [self.encode(p) for p in preps]

    def stats(self, vis: VisionOutput, cfg) -> VisionStats:
        """Stage-I statistics (evidence, registers, attention, keys) from ``vis.captured``."""
        raise NotImplementedError

    def cached_layout(self, key: tuple, build):
        """``build()`` once per input geometry ``key`` (for example the image size), then a copy of its lists.

        Token layouts (boxes, grid, kinds) are pure functions of the geometry, and computing them per token
        in Python costs milliseconds on LLaVA-NeXT's 2,000+ tokens. At most 256 geometries are kept.
        """
        hit = self._layouts.get(key)
        if hit is None:
            hit = build()
            if len(self._layouts) < 256:
                self._layouts[key] = hit
        return tuple(list(v) if isinstance(v, list) else v for v in hit)

    def positions(self, prep: Prepared) -> torch.Tensor:
        """Position ids of the full prompt: (1, L), or (3, L) for M-RoPE."""
        length = prep.inputs["input_ids"].shape[1]
        return torch.arange(length, device=self.device)[None]

    # -- inputs ----------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.model.lm_head.weight.device

    @property
    def image_token_id(self) -> int:
        return self.config.image_token_id

    def placeholder_id(self, prep: Prepared) -> int:
        """The token id whose slots the visual features fill: the image token, or the video token for a video."""
        return self.config.video_token_id if prep.video is not None else self.image_token_id

    def video_sampling(self) -> dict:
        """How a video file or frame list is sampled for this model (``occam.video.as_video`` keywords)."""
        return {"num_frames": 8}

    @property
    def eos_token_ids(self) -> set[int]:
        eos = getattr(self.model.generation_config, "eos_token_id", None)
        if eos is None:
            eos = self.processor.tokenizer.eos_token_id
        return set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}

    def build_prompt(self, question: str, media: str = "image") -> str:
        conversation = [{"role": "user", "content": [{"type": media}, {"type": "text", "text": question}]}]
        return self.processor.apply_chat_template(conversation, add_generation_prompt=True)

    def prepare(self, image, question: str) -> Prepared:
        """The processor's inputs for the family's chat prompt, on the model's device and dtype.

        ``image``: a PIL image, or an ``occam.Video`` for a family that takes video."""
        if isinstance(image, Video):
            if not self.takes_video:
                raise ValueError(f"{self.family} takes images only.")
            return self.prepare_video(image, question)
        prompt = self.build_prompt(question)
        if self.device_processor is not None:
            inputs = self.device_processor(images=[image], text=[prompt], return_tensors="pt", device=self.device)
        else:
            inputs = self.processor(images=[image], text=[prompt], return_tensors="pt")
        return Prepared(self._to_device(inputs), image.size, prompt)

    def prepare_video(self, video: Video, question: str) -> Prepared:
        prompt = self.build_prompt(question, "video")
        inputs = self.processor(videos=[list(video.frames)], text=[prompt], return_tensors="pt")
        return Prepared(self._to_device(inputs), video.size, prompt, video=video)

    def _to_device(self, inputs) -> dict:
        inputs = {k: v.to(self.device) if hasattr(v, "to") else v for k, v in inputs.items()}
        for key in ("pixel_values", "pixel_values_videos"):
            if key in inputs:
                inputs[key] = inputs[key].to(self.model.dtype)
        return inputs

    def token_texts(self, ids: torch.Tensor) -> list[str]:
        """The text of each token id, for the trace (e.g. Stage II's query tokens)."""
        tok = self.processor.tokenizer
        return [tok.decode([i]) for i in ids.tolist()]

    # -- the language model, one step at a time ----------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.lm.layers)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """(L,) token ids -> (1, L, D), or (B, L) -> (B, L, D): input embeddings."""
        return self.lm.embed_tokens(ids[None] if ids.dim() == 1 else ids)

    def rope(self, h: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin), each (B, L, d), for position ids (P, L) (B = 1) or (B, P, L); P = 3 for M-RoPE, else 1."""
        if pos.dim() == 2:
            pos = pos[None]
        return self.lm.rotary_emb(h, pos.transpose(0, 1) if self.mrope else pos[:, 0])

    def new_cache(self) -> DynamicCache:
        return DynamicCache(config=self.lm.config)

    def kv_shape(self) -> tuple[int, int]:
        """(key / value heads, head dim) of the decoder's KV cache."""
        c = self.lm.config
        heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
        return heads, getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads

    def layer(self, i: int, h: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], cache,
              mask: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder layer i on (B, L, D), appending its keys / values to ``cache``.

        Without ``mask`` the L new tokens are causal over themselves (the prefill, and a decode step whose
        cache rows all hold the same length); ``mask``: an additive (B, 1, L, S) mask over the S keys."""
        if mask is None and h.shape[1] > 1 and self._explicit_mask:
            mask = torch.full((h.shape[1],) * 2, torch.finfo(h.dtype).min, dtype=h.dtype, device=h.device).triu(1)
            mask = mask[None, None]
        return self.lm.layers[i](h, attention_mask=mask, position_embeddings=rope, **{self._cache_kw: cache})

    def logits(self, h_last: torch.Tensor) -> torch.Tensor:
        """(B, 1, D) last hidden states -> (B, V) next-token logits."""
        return self.model.lm_head(self.lm.norm(h_last))[:, -1]

    def query_key(self, i: int, hidden: torch.Tensor, rows: torch.Tensor,
                  rope: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Decoder layer i's own queries (only ``rows``) and keys (all tokens), after RoPE and q/k-norm.

        Mirrors the first half of the family's attention forward (input norm, q/k projections, q/k norm
        where the family has one, rotary) without computing attention. hidden: (1, L, D) residual stream
        entering the layer. Returns q (H, R, d), k (H, L, d) with GQA groups expanded, and the scale.
        """
        layer = self.lm.layers[i]
        attn = layer.self_attn
        cos, sin = rope
        x = layer.input_layernorm(hidden)
        hd = attn.head_dim
        q = attn.q_proj(x[:, rows]).view(1, rows.numel(), -1, hd).transpose(1, 2)
        k = attn.k_proj(x).view(1, x.shape[1], -1, hd).transpose(1, 2)
        if getattr(attn, "q_norm", None) is not None:
            q, k = attn.q_norm(q), attn.k_norm(k)
        rotate = rotary_function(attn, "apply_rotary_pos_emb")
        q, _ = rotate(q, q, cos[:, rows], sin[:, rows])
        _, k = rotate(k, k, cos, sin)
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        return q[0], k[0], attn.scaling
