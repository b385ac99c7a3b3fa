"""``VLM``: a loaded model + processor behind one call, ``generate(image_or_video, question, config=...)``."""
from __future__ import annotations

from typing import Any, Iterable

import torch

from . import engine, memory
from .calibration import calibrate
from .config import OccamConfig
from .engine import Result
from .inputs import check_question, to_rgb
from .models import adapter_for, video_families
from .models.decoding import decoder_for
from .models.graphs import segments_for
from .video import as_video, is_video_input

__all__ = ["VLM", "Result"]


class VLM:
    """A loaded model + processor. Settings travel with each call: nothing is stored on the model."""

    def __init__(self, model, processor, name: str = "custom", prefill: str = "auto", preprocess: str = "auto",
                 kv_budget: int | None = None, decode: str = "auto"):
        """``prefill``: how decoder layers run in the prefill: "auto" (CUDA graphs at bucketed lengths on a
        GPU, eager per-layer calls elsewhere), "eager", "padded" (the graph path's padding, eagerly) or
        "cuda-graphs". ``preprocess``: "auto" (torchvision image processors on the GPU when torchvision is
        installed, Pillow otherwise), "pil" or "torchvision". ``kv_budget``: the bytes one batch's KV cache
        may take (a batch that would need more is split into groups that fit); None: half of the memory
        free on the model's device at each call. ``decode``: how a batch's one-token steps run: "auto" (CUDA
        graphs per batch-size bucket on a GPU, eager elsewhere), "eager", "static" (the graphs' static
        shapes, eagerly) or "cuda-graphs"."""
        if kv_budget is not None and (isinstance(kv_budget, bool) or not isinstance(kv_budget, int) or kv_budget < 1):
            raise ValueError(f"kv_budget={kv_budget!r} is invalid: accepted None or a number of bytes >= 1.")
        self.kv_budget = kv_budget
        model.eval()
        self.name = name
        self.model = model
        self.processor = processor
        self.adapter = adapter_for(model, processor, preprocess)
        self.segments = segments_for(self.adapter, prefill)
        self.decoder = decoder_for(self.adapter, decode)
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
        """Answer ``question`` about ``image`` with greedy decoding under ``config``: a batch of one.

        ``image``: a PIL image, or a video: an ``occam.Video``, a path with a video extension, a list of
        frames (PIL images / H x W x 3 uint8 arrays) or a T x H x W x 3 array (see ``occam.video``). Paths
        and frame lists are sampled as the model's processor asks (``adapter.video_sampling()``).
        """
        return self.generate_batch([image], [question], config, max_new_tokens, return_cache, _single=True)[0]

    def generate_batch(self, images: list, questions: list[str], configs=None, max_new_tokens: int = 64,
                       return_cache: bool = False, _single: bool = False) -> list[Result]:
        """Answer ``questions[i]`` about ``images[i]`` for every i, each under its own config.

        ``configs``: None (the default ``OccamConfig``), one config for all, or a list with one per request
        (requests may differ in method, thresholds, K, retention, seed). Every result equals what
        ``generate`` returns for that request alone. Every input is checked before any work: a bad one
        raises a ``ValueError`` naming its index, and nothing runs.
        """
        images, questions, cfgs = self._check_batch(images, questions, configs, max_new_tokens, _single)
        with torch.inference_mode():
            budget = self.kv_budget if self.kv_budget is not None else memory.kv_budget(self.adapter.device)
            return engine.run_batch(self.adapter, self.name, images, questions, cfgs, max_new_tokens,
                                    return_cache, self.segments, budget, self.decoder)

    def _check_batch(self, images, questions, configs, max_new_tokens, single: bool):
        """(images, questions, configs) as the engine takes them, or the first problem, naming its index."""
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens={max_new_tokens!r} is invalid: accepted an integer >= 0.")
        for name, seq in (("images", images), ("questions", questions)):
            if not isinstance(seq, (list, tuple)):
                raise ValueError(f"{name} must be a list (one entry per request), got {type(seq).__name__}.")
        if len(images) != len(questions):
            raise ValueError(f"images and questions differ in length ({len(images)} vs {len(questions)}): "
                             "accepted one question per image.")
        if not images:
            raise ValueError("An empty batch: accepted at least one (image, question) request.")
        if configs is None or isinstance(configs, OccamConfig):
            configs = [configs] * len(images)
        elif not isinstance(configs, (list, tuple)) or len(configs) != len(images):
            raise ValueError("configs must be None, one occam.OccamConfig, or a list of one per request "
                             f"({len(images)}).")
        where = (lambda i: "") if single else (lambda i: f"Request {i}: ")
        out_images, out_questions, out_cfgs = [], [], []
        for i, (image, question, cfg) in enumerate(zip(images, questions, configs)):
            cfg = OccamConfig() if cfg is None else cfg
            if not isinstance(cfg, OccamConfig):
                if single:
                    raise TypeError(f"config must be an occam.OccamConfig, got {type(cfg).__name__}.")
                raise ValueError(f"{where(i)}config must be an occam.OccamConfig, got {type(cfg).__name__}.")
            try:
                if is_video_input(image):
                    if not self.adapter.takes_video:
                        raise ValueError(f"This model ({self.family}) takes images only; video input needs one "
                                         "of: " + ", ".join(video_families()) + ".")
                    image = as_video(image, **self.adapter.video_sampling())
                else:
                    image = to_rgb(image)
                question = check_question(question)
                if cfg.uses_stage2:
                    cfg.decoder_layer(self.num_layers)  # validates K before any work
            except (ValueError, TypeError) as e:
                if single:
                    raise
                raise ValueError(f"{where(i)}{e}") from None
            out_images.append(image), out_questions.append(question), out_cfgs.append(cfg)
        return out_images, out_questions, out_cfgs

    def calibrate(self, samples: Iterable[tuple[Any, str]], target: float,
                  config: OccamConfig | None = None, tol: float = 0.005, iters: int = 24) -> OccamConfig:
        """alpha / beta giving a target AVERAGE retention over ``samples`` (see ``occam.calibration``)."""
        return calibrate(self, samples, target, config, tol, iters)
