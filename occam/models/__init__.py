"""Adapters, one per model family: the only code that knows Hugging Face internals."""
from __future__ import annotations

from .base import Adapter
from .llava import LlavaAdapter, LlavaNextAdapter
from .qwen import Qwen3Adapter, QwenAdapter

ADAPTERS = {
    "LlavaForConditionalGeneration": LlavaAdapter,
    "LlavaNextForConditionalGeneration": LlavaNextAdapter,
    "Qwen2_5_VLForConditionalGeneration": QwenAdapter,
    "Qwen3VLForConditionalGeneration": Qwen3Adapter,
}


def adapter_for(model, processor) -> Adapter:
    """The adapter of ``model``'s class; TypeError naming the accepted classes otherwise."""
    cls = type(model).__name__
    if cls not in ADAPTERS:
        raise TypeError(f"Unsupported model class {cls}: accepted " + ", ".join(ADAPTERS) + ".")
    if processor is None or not hasattr(processor, "tokenizer"):
        raise TypeError(f"A processor with a tokenizer and an image processor is needed for {cls}.")
    return ADAPTERS[cls](model, processor)
