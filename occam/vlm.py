"""``VLM``: a loaded model + processor behind one call, ``generate(image_or_video, question, config=...)``."""
from __future__ import annotations

from typing import Any, Iterable

import torch

from . import engine
from .calibration import calibrate
from .config import OccamConfig
from .engine import Result
from .inputs import check_question, to_rgb
from .models import adapter_for, video_families
from .models.graphs import segments_for
from .video import as_video, is_video_input

__all__ = ["VLM", "Result"]


class VLM:
    """A loaded model + processor. Settings travel with each call: nothing is stored on the model."""

    def __init__(self, model, processor, name: str = "custom", prefill: str = "auto", preprocess: str = "auto"):
        """``prefill``: how decoder layers run in the prefill: "auto" (CUDA graphs at bucketed lengths on a
        GPU, eager per-layer calls elsewhere), "eager", "padded" (the graph path's padding, eagerly) or
        "cuda-graphs". ``preprocess``: "auto" (torchvision image processors on the GPU when torchvision is
        installed, Pillow otherwise), "pil" or "torchvision"."""
        model.eval()
        self.name = name
        self.model = model
        self.processor = processor
        self.adapter = adapter_for(model, processor, preprocess)
        self.segments = segments_for(self.adapter, prefill)
        self.recommended = None     # recommended thresholds (occam.recommended), set by occam.load

    @property
    def family(self) -> str:
        return self.adapter.family

    @property
    def num_layers(self) -> int:
        return self.adapter.num_layers

    @property
    def takes_video(self) -> bool:
        return self.adapter.takes_video

    def generate(self, image, question: str, config: OccamConfig | None = None, max_new_tokens: int = 64,
                 return_cache: bool = False) -> Result:
        """Answer ``question`` about ``image`` with greedy decoding under ``config``.

        ``image``: a PIL image, or a video: an ``occam.Video``, a path with a video extension, a list of
        frames (PIL images / H x W x 3 uint8 arrays) or a T x H x W x 3 array (see ``occam.video``). Paths
        and frame lists are sampled as the model's processor asks (``adapter.video_sampling()``).
        """
        cfg = OccamConfig() if config is None else config
        if not isinstance(cfg, OccamConfig):
            raise TypeError(f"config must be an occam.OccamConfig, got {type(cfg).__name__}.")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens={max_new_tokens!r} is invalid: accepted an integer >= 0.")
        if is_video_input(image):
            if not self.adapter.takes_video:
                raise ValueError(f"This model ({self.family}) takes images only; video input needs one of: "
                                 + ", ".join(video_families()) + ".")
            image = as_video(image, **self.adapter.video_sampling())
        else:
            image = to_rgb(image)
        question = check_question(question)
        if cfg.uses_stage2:
            cfg.decoder_layer(self.num_layers)  # validates K before any work
        with torch.inference_mode():
            return engine.run(self.adapter, self.name, image, question, cfg, max_new_tokens, return_cache,
                              self.segments)

    def calibrate(self, samples: Iterable[tuple[Any, str]], target: float,
                  config: OccamConfig | None = None, tol: float = 0.005, iters: int = 24) -> OccamConfig:
        """alpha / beta giving a target AVERAGE retention over ``samples`` (see ``occam.calibration``)."""
        return calibrate(self, samples, target, config, tol, iters)
