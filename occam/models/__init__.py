"""The supported families, in one registry, and their adapters: the only code that knows
Hugging Face internals (with ``processors``, which builds their inputs)."""
from __future__ import annotations

from dataclasses import dataclass

from .base import Adapter
from .llava import LlavaAdapter, LlavaNextAdapter, VideoLlavaAdapter
from .qwen import Qwen3Adapter, QwenAdapter


@dataclass(frozen=True)
class Family:
    model_type: str        # config.model_type
    label: str             # the family's usual name
    model_class: str       # the transformers *ForConditionalGeneration class
    processor_class: str   # the transformers processor it mirrors
    adapter: type[Adapter]
    hub_id: str            # the published checkpoint whose shapes occam.archs copies


FAMILIES: dict[str, Family] = {f.model_type: f for f in (
    Family("llava", "LLaVA-1.5", "LlavaForConditionalGeneration", "LlavaProcessor", LlavaAdapter,
           "llava-hf/llava-1.5-7b-hf"),
    Family("llava_next", "LLaVA-NeXT", "LlavaNextForConditionalGeneration", "LlavaNextProcessor", LlavaNextAdapter,
           "llava-hf/llava-v1.6-vicuna-7b-hf"),
    Family("qwen2_5_vl", "Qwen2.5-VL", "Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor", QwenAdapter,
           "Qwen/Qwen2.5-VL-7B-Instruct"),
    Family("qwen3_vl", "Qwen3-VL", "Qwen3VLForConditionalGeneration", "Qwen3VLProcessor", Qwen3Adapter,
           "Qwen/Qwen3-VL-8B-Instruct"),
    Family("video_llava", "Video-LLaVA", "VideoLlavaForConditionalGeneration", "VideoLlavaProcessor",
           VideoLlavaAdapter, "LanguageBind/Video-LLaVA-7B-hf"),
)}


def video_families() -> list[str]:
    """Labels of the families that take video input."""
    return [f.label for f in FAMILIES.values() if f.adapter.takes_video]


def family(model_type) -> Family:
    """The registry entry of a ``config.model_type``; TypeError naming the supported ones otherwise."""
    if model_type not in FAMILIES:
        accepted = ", ".join(f"{mt!r} ({f.label})" for mt, f in FAMILIES.items())
        raise TypeError(f"Unsupported model_type {model_type!r}: OccamToken supports exactly {len(FAMILIES)} "
                        f"families: {accepted}.")
    return FAMILIES[model_type]


def model_class_for(model_type: str):
    """The ``*ForConditionalGeneration`` class of a supported ``config.model_type``."""
    import transformers

    return getattr(transformers, family(model_type).model_class)


def adapter_for(model, processor, preprocess: str = "auto") -> Adapter:
    """The adapter of ``model``'s class; TypeError naming the accepted classes otherwise."""
    cls = type(model).__name__
    match = next((f for f in FAMILIES.values() if f.model_class == cls), None)
    if match is None:
        raise TypeError(f"Unsupported model class {cls}: accepted "
                        + ", ".join(f.model_class for f in FAMILIES.values()) + ".")
    if processor is None or not hasattr(processor, "tokenizer"):
        raise TypeError(f"A processor with a tokenizer and an image processor is needed for {cls}.")
    return match.adapter(model, processor, preprocess)
