"""What every model-family adapter provides, and the pieces they share.

An adapter is the ONLY place that knows Hugging Face internals. It turns (image, question) into
model inputs, runs the vision side (features + the Stage-I statistics of the vision layer whose
features the language model receives), and exposes the language model's parts (embeddings,
decoder layers, norm, rotary, head) so that ``occam.runtime`` can run the prefill layer by layer
and remove tokens physically.

What is modified on the model: nothing. One forward pre-hook and one forward hook are installed
once, at adapter construction, on the vision layer that is scored (``Probe``). They are inert
unless the running call (a ContextVar, so per thread / per task) asks to capture that layer's
input; they never change outputs.
"""
from __future__ import annotations

import contextlib
import contextvars
import sys
from dataclasses import dataclass, field

import torch

from ..evidence import attention_colmean
from ..registers import high_norm_tokens

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


@dataclass
class Prepared:
    """Model inputs for one (image, question), plus what the trace needs to know about the image."""
    inputs: dict
    image_size: tuple[int, int]        # original (width, height)
    prompt: str


@dataclass
class VisionOutput:
    """The visual tokens as the language model sees them (N of them) and their Stage-I statistics."""
    embeds: torch.Tensor                # (N, D) language-model input embeddings
    boxes: list                         # per token: [x0, y0, x1, y1] in original pixels, or None
    grid: list                          # per token: [tile, row, col]
    kinds: list[str]                    # per token: "patch", "register" (explicit), "newline"
    layer: int = -1                     # index of the vision layer scored
    evidence: torch.Tensor | None = None          # (N,) e_j, mean attention drawn from non-register queries
    registers: torch.Tensor | None = None         # (N,) bool
    register_source: str = "none"
    register_values: torch.Tensor | None = None   # evidence of the registers at their native granularity
    register_attention: torch.Tensor | None = None  # (N,) attention paid by the registers
    cls_attention: torch.Tensor | None = None     # (N,) [CLS] attention (VisionZip); e_j when no CLS
    keys: torch.Tensor | None = None              # (N, dk) keys of the scored layer (VisionZip merging)
    row_id: torch.Tensor | None = None            # (N,) long: NeXT row of a tile token / newline, -1 else
    deepstack: list | None = None                 # Qwen3-VL: per LM layer, (N, D) features added after it
    extra: dict = field(default_factory=dict)     # adapter-private: the captured vision layer, until stats()

    @property
    def n(self) -> int:
        return self.embeds.shape[0]


@dataclass
class TokenStats:
    """Attention statistics of one vision layer over its T tokens (one image or one tile)."""
    evidence: torch.Tensor              # (T,) mean over non-register queries of A[i, j]
    register_attention: torch.Tensor | None
    cls_attention: torch.Tensor | None
    keys: torch.Tensor                  # (T, H*d)


def vision_token_stats(q: torch.Tensor, k: torch.Tensor, scale: float, registers: torch.Tensor,
                       cls_index: int | None, chunk: int) -> TokenStats:
    """Stage-I statistics from a vision layer's q and k, each (H, T, d); registers is a (T,) bool mask."""
    queries = torch.nonzero(~registers).flatten()
    evidence = attention_colmean(q[:, queries], k, scale, chunk)
    reg_rows = torch.nonzero(registers).flatten()
    reg_att = attention_colmean(q[:, reg_rows], k, scale, chunk) if reg_rows.numel() else None
    cls_att = attention_colmean(q[:, [cls_index]], k, scale, chunk) if cls_index is not None else None
    keys = k.transpose(0, 1).reshape(k.shape[1], -1)
    return TokenStats(evidence, reg_att, cls_att, keys)


def emergent_registers(hidden: torch.Tensor, candidates: torch.Tensor, kappa: float, max_frac: float) -> torch.Tensor:
    """(T,) bool mask of high-norm tokens among ``candidates`` (a (T,) bool mask)."""
    idx = torch.nonzero(candidates).flatten()
    mask = torch.zeros_like(candidates)
    mask[idx[high_norm_tokens(hidden[idx], kappa, max_frac)]] = True
    return mask


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(..., T, H*d) -> (H, T, d) for a single image / sequence."""
    x = x.reshape(-1, x.shape[-1])
    return x.view(x.shape[0], heads, -1).transpose(0, 1)


class Adapter:
    """Base adapter: the language-model side is shared by all four families."""

    family = "base"
    mrope = False          # positions are (3, L) M-RoPE ids instead of (1, L)

    def __init__(self, model, processor):
        self.model = model
        self.processor = processor
        self.config = model.config
        self.probe = Probe(self.vision_layer())

    # -- to implement per family -----------------------------------------------------------
    def vision_layer(self) -> torch.nn.Module:
        raise NotImplementedError

    def prepare(self, image, question: str) -> Prepared:
        raise NotImplementedError

    def encode(self, prep: Prepared) -> VisionOutput:
        """Visual tokens as the LM sees them, their boxes; the scored vision layer is captured in ``extra``."""
        raise NotImplementedError

    def stats(self, vis: VisionOutput, cfg) -> None:
        """Fill ``vis``'s Stage-I statistics (evidence, registers, attention, keys) from the captured layer."""
        raise NotImplementedError

    def positions(self, prep: Prepared) -> torch.Tensor:
        """Position ids of the full prompt: (1, L), or (3, L) for M-RoPE."""
        length = prep.inputs["input_ids"].shape[1]
        return torch.arange(length, device=self.device)[None]

    # -- shared ------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.model.lm_head.weight.device

    @property
    def text_model(self):
        return self.model.model.language_model

    @property
    def lm_head(self):
        return self.model.lm_head

    @property
    def image_token_id(self) -> int:
        return self.config.image_token_id

    @property
    def eos_token_ids(self) -> set[int]:
        eos = getattr(self.model.generation_config, "eos_token_id", None)
        if eos is None:
            eos = self.processor.tokenizer.eos_token_id
        return set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}

    def build_prompt(self, question: str) -> str:
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return self.processor.apply_chat_template(conversation, add_generation_prompt=True)

    def processor_inputs(self, image, question: str) -> Prepared:
        prompt = self.build_prompt(question)
        inputs = self.processor(images=[image], text=[prompt], return_tensors="pt")
        inputs = {k: v.to(self.device) if hasattr(v, "to") else v for k, v in inputs.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        return Prepared(dict(inputs), image.size, prompt)

    def query_key(self, layer, hidden: torch.Tensor, rows: torch.Tensor, cos: torch.Tensor,
                  sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Decoder layer K's own queries (only ``rows``) and keys (all tokens), after RoPE and q/k-norm.

        hidden: (1, L, D) residual stream entering the layer. Returns q (H, R, d), k (H, L, d)
        with GQA groups expanded, and the softmax scale.
        """
        attn = layer.self_attn
        x = layer.input_layernorm(hidden)
        hd = attn.head_dim
        q = attn.q_proj(x[:, rows]).view(1, rows.numel(), -1, hd).transpose(1, 2)
        k = attn.k_proj(x).view(1, x.shape[1], -1, hd).transpose(1, 2)
        if getattr(attn, "q_norm", None) is not None:
            q, k = attn.q_norm(q), attn.k_norm(k)
        rope = sys.modules[type(attn).__module__].apply_rotary_pos_emb
        q, _ = rope(q, q, cos[:, rows], sin[:, rows])
        _, k = rope(k, k, cos, sin)
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        return q[0], k[0], attn.scaling


def patch_grid_meta(rows: int, cols: int, tile: int = 0) -> list:
    return [[tile, r, c] for r in range(rows) for c in range(cols)]
