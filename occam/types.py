"""The typed hand-offs between the steps of a request: inputs -> vision -> statistics -> stages.

Plain dataclasses of tensors and lists; no transformers import, so the method code
(``occam.methods``) can be read and tested without a model.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .video import Video


@dataclass
class CapturedLayer:
    """The scored vision layer as one encode saw it (``Probe``), read by the adapter's ``stats``."""
    input: torch.Tensor                   # the layer's input hidden states
    output: torch.Tensor                  # its output hidden states
    kwargs: dict = field(default_factory=dict)   # the keyword arguments of its call (Qwen: position_embeddings)
    module: torch.nn.Module | None = None  # the layer itself (Video-LLaVA's video tower has its own)
    src: torch.Tensor | None = None       # LLaVA: per LM token, its index into (tiles x tokens) after ``offset``
    offset: int = 0                       # LLaVA: leading tokens of the layer the LM does not see ([CLS])
    thw: torch.Tensor | None = None       # Qwen: the (t, h, w) patch grid of the input


@dataclass
class Prepared:
    """Model inputs for one (image or video, question), plus what the trace needs to know about the input."""
    inputs: dict
    image_size: tuple[int, int]        # original (width, height) of the image, or of every video frame
    prompt: str
    video: Video | None = None         # the sampled clip, for a video input


@dataclass
class VisionOutput:
    """The N visual tokens as the language model sees them, where they come from, and the captured layer."""
    embeds: torch.Tensor                # (N, D) language-model input embeddings
    boxes: list                         # per token: [x0, y0, x1, y1] in original pixels, or None
    grid: list                          # per token: [tile, row, col]
    kinds: list[str]                    # per token: "patch", "cls", "register" (explicit), "newline"
    layer: int                          # index of the vision layer scored
    row_id: torch.Tensor | None = None  # (N,) long: NeXT row of a tile token / newline, -1 else
    deepstack: list | None = None       # Qwen3-VL: per LM layer, (N, D) features added after it
    captured: CapturedLayer | None = None  # the scored layer, read by ``stats`` (released after it)
    frame: torch.Tensor | None = None   # video: (N,) long, the frame (Qwen: temporal patch) of each token
    frame_times: list | None = None     # video: seconds, per frame index of ``frame``

    @property
    def n(self) -> int:
        return self.embeds.shape[0]


@dataclass
class VisionStats:
    """Stage-I statistics of the scored vision layer, per visual token (N), on the CPU (keys: on the device)."""
    evidence: torch.Tensor                    # (N,) e_j, mean attention drawn from non-register queries
    registers: torch.Tensor                   # (N,) bool: the reference tokens
    register_source: str                      # "explicit" or "emergent"
    register_values: torch.Tensor             # evidence of the registers at their native granularity
    register_attention: torch.Tensor | None   # (N,) attention paid by the registers
    cls_attention: torch.Tensor               # (N,) [CLS] attention (VisionZip); e_j when no CLS
    keys: torch.Tensor | None                 # (N, dk) keys of the scored layer, on the model's device; only
                                              # for the methods that read them (VisionZip, temporal_similarity)
    register_frame: torch.Tensor | None = None  # video: (len(register_values),) the frame of each register value
    norms: torch.Tensor | None = None         # (N,) L2 norm of the scored layer's output (Qwen: largest of the
                                              # merged patches; NaN for row-end tokens): read by the premise report

    @property
    def explicit(self) -> torch.Tensor:
        """(N,) bool: registers that exist by construction (kept under keep_registers='explicit')."""
        return self.registers if self.register_source == "explicit" else torch.zeros_like(self.registers)


@dataclass
class TokenStats:
    """Attention statistics of one vision layer over B images / tiles / frames of T tokens, on the device."""
    evidence: torch.Tensor              # (B, T) mean over non-register queries of A[i, j]
    register_attention: torch.Tensor    # (B, T) mean over register queries (0 where a row has none)
    cls_attention: torch.Tensor | None  # (B, T) the [CLS] query's row
    keys: torch.Tensor                  # (B, T, H*d)
