"""OccamToken: register-anchored, budget-adaptive visual-token pruning for vision-language models.

    import occam
    vlm = occam.load("toy")                        # hub id, local folder, "toy", or load(model=..., processor=...)
    res = vlm.generate(image, "What color is the circle?", config=occam.OccamConfig(alpha=1.0))
    res.text, res.trace.to_dict(), res.timings
"""
from __future__ import annotations

from .calibration import calibrate
from .config import METHODS, OccamConfig
from .engine import Result
from .trace import StageTrace, Trace
from .video import Video, read_video
from .vlm import VLM

__all__ = ["load", "OccamConfig", "METHODS", "VLM", "Result", "Trace", "StageTrace", "calibrate", "Video",
           "read_video"]


def load(name_or_path: str | None = "toy", *, model=None, processor=None, dtype=None, device=None,
         prefill: str = "auto", preprocess: str = "auto", decode: str = "auto", kv_budget: int | None = None) -> VLM:
    """Load a supported VLM (LLaVA-1.5, LLaVA-NeXT, Qwen2.5-VL, Qwen3-VL or the shipped toy model).

    ``name_or_path``: "toy" (offline default), a hub id, a local folder saved with save_pretrained,
    or a name of ``occam.archs`` (real shapes, random weights). Or pass ``model`` and ``processor``.
    ``prefill`` / ``preprocess`` / ``decode``: the GPU fast paths (see ``occam.VLM``); "auto" picks them on a GPU.
    ``kv_budget``: bytes one batch's KV cache may take (``VLM.generate_batch`` splits what does not fit).
    """
    paths = {"prefill": prefill, "preprocess": preprocess, "decode": decode, "kv_budget": kv_budget}
    if model is not None:
        if processor is None:
            raise TypeError("occam.load(model=...) also needs processor=...")
        if device is not None:
            model = model.to(device)
        return VLM(model, processor, name=getattr(model, "name_or_path", None) or type(model).__name__, **paths)
    from . import recommended
    from .loading import load_model_and_processor
    model, processor = load_model_and_processor(name_or_path, dtype=dtype, device=device)
    vlm = VLM(model, processor, name=name_or_path, **paths)
    vlm.recommended = recommended.for_model(name_or_path)  # alpha / beta per target retention, or None
    return vlm
