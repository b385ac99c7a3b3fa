"""Offline model builders: real-shape and tiny VLMs with random weights (no hub access).

``build(name, *, text_layers=None, dtype=torch.float32, seed=0, device=None, attn_implementation=None)``
returns ``(model, processor)`` for a name in :data:`ARCH_NAMES`:

* real shapes, copied from the public ``config.json`` / ``preprocessor_config.json`` of
  ``llava-hf/llava-1.5-7b-hf``, ``llava-hf/llava-v1.6-vicuna-7b-hf``, ``Qwen/Qwen2.5-VL-7B-Instruct``
  and ``Qwen/Qwen3-VL-8B-Instruct`` (see :data:`HUB_IDS`): ``"llava-1.5-7b"``, ``"llava-next-7b"``,
  ``"qwen2.5-vl-7b"``, ``"qwen3-vl-8b"``;
* tiny test variants of the same classes: ``"tiny-llava"``, ``"tiny-llava-next"``,
  ``"tiny-qwen2.5-vl"``, ``"tiny-qwen3-vl"``.

``text_layers`` keeps only the first N decoder layers.  The model is created directly on ``device``
(a real-shape 7B builds on a GPU in about a second; on the CPU first and then moved, it takes minutes);
``device="meta"`` allocates nothing -- the only sensible way to instantiate a full 7B on a laptop.

The processors carry an offline byte-level BPE tokenizer (every byte is a token, no merges) whose
special tokens sit at the same ids as in the real checkpoints (``<image>`` = 32000 for LLaVA;
``<|vision_start|>`` = 151652, ``<|image_pad|>`` = 151655, ... for Qwen) and a chat template of
the family's shape.  ``config_for(name, text_layers=None)`` returns the config without building.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import torch

from .models import FAMILIES, model_class_for
from .models.processors import QwenVLProcessor

__all__ = [
    "ARCH_NAMES",
    "REAL_ARCH_NAMES",
    "TINY_ARCH_NAMES",
    "HUB_IDS",
    "build",
    "config_for",
    "processor_for",
    "make_tokenizer",
]

OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# ------------------------------------------------------------------------------------------------
# chat templates
# ------------------------------------------------------------------------------------------------

#: "USER: <image>\n{question} ASSISTANT:" (llava-hf template without {% generation %} markers).
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] + ' ' }}"
    "{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' ' }}{% endfor %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def _qwen_chat_template(default_system: str | None) -> str:
    system = (
        "{% if loop.first and message['role'] != 'system' %}"
        "{{ '<|im_start|>system\n" + default_system + "<|im_end|>\n' }}{% endif %}"
        if default_system
        else ""
    )
    return (
        "{% for message in messages %}" + system
        + "{{ '<|im_start|>' + message['role'] + '\n' }}"
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for content in message['content'] %}"
        "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
        "{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
        "{% elif content['type'] == 'video' or 'video' in content %}"
        "{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
        "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
        "{% endfor %}{% endif %}"
        "{{ '<|im_end|>\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )


#: Video-LLaVA: "USER: <video>\n{question} ASSISTANT:" (images first, then videos, then text).
VIDEO_LLAVA_CHAT_TEMPLATE = LLAVA_CHAT_TEMPLATE.replace(
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}",
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}")

QWEN25_CHAT_TEMPLATE = _qwen_chat_template("You are a helpful assistant.")
QWEN3_CHAT_TEMPLATE = _qwen_chat_template(None)

# ------------------------------------------------------------------------------------------------
# tokenizer
# ------------------------------------------------------------------------------------------------

QWEN_SPECIAL_NAMES = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]


@lru_cache(maxsize=1)
def _bytes_to_unicode() -> tuple[str, ...]:
    """GPT-2's byte -> printable unicode char table (index = byte value)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs))
    return tuple(chr(table[b]) for b in range(256))


def make_tokenizer(*, specials: dict[str, int], byte_offset: int, bos_token: str | None, eos_token: str,
                   pad_token: str, unk_token: str | None, chat_template: str, model_max_length: int,
                   extra_special_tokens: dict[str, str] | None = None):
    """Byte-level BPE tokenizer (no merges) with special tokens at fixed ids.

    Ids: specials as given, bytes at ``byte_offset .. byte_offset+255``, every other id below
    the largest one filled with unreachable ``<|reserved_i|>`` tokens so the vocabulary is contiguous.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for b, ch in enumerate(_bytes_to_unicode()):
        vocab[ch] = byte_offset + b
    for tok, i in specials.items():
        vocab[tok] = i
    used = set(vocab.values())
    if len(used) != len(vocab):
        raise ValueError("overlapping token ids")
    for i in range(max(used) + 1):
        if i not in used:
            vocab[f"<|reserved_{i}|>"] = i

    tk = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=unk_token, fuse_unk=False))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in sorted(specials, key=specials.get)])
    if bos_token is not None:
        tk.post_processor = processors.TemplateProcessing(
            single=f"{bos_token} $A", pair=f"{bos_token} $A {bos_token} $B",
            special_tokens=[(bos_token, specials[bos_token])],
        )
    else:
        tk.post_processor = processors.ByteLevel(trim_offsets=False)

    kwargs: dict[str, Any] = dict(
        tokenizer_object=tk, eos_token=eos_token, pad_token=pad_token, padding_side="left",
        model_max_length=model_max_length, model_input_names=["input_ids", "attention_mask"],
        clean_up_tokenization_spaces=False,
    )
    if bos_token is not None:
        kwargs["bos_token"] = bos_token
    if unk_token is not None:
        kwargs["unk_token"] = unk_token
    if extra_special_tokens:
        kwargs["extra_special_tokens"] = extra_special_tokens
    tokenizer = PreTrainedTokenizerFast(**kwargs)
    tokenizer.chat_template = chat_template
    for tok, i in specials.items():  # sanity: the wrapper must keep our ids
        assert tokenizer.convert_tokens_to_ids(tok) == i, (tok, i, tokenizer.convert_tokens_to_ids(tok))
    return tokenizer


def _llava_tokenizer(image_token_id: int, pad_token_id: int, max_len: int, video_token_id: int | None = None):
    # Llama/Vicuna layout: <unk>=0, <s>=1, </s>=2, byte tokens 3..258, ..., <image>, (<video>,) <pad>.
    specials = {"<unk>": 0, "<s>": 1, "</s>": 2, "<image>": image_token_id, "<pad>": pad_token_id}
    extra = {"image_token": "<image>"}
    if video_token_id is not None:
        specials["<video>"] = video_token_id
        extra["video_token"] = "<video>"
    return make_tokenizer(specials=specials, byte_offset=3, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                          unk_token="<unk>", model_max_length=max_len, extra_special_tokens=extra,
                          chat_template=LLAVA_CHAT_TEMPLATE if video_token_id is None else VIDEO_LLAVA_CHAT_TEMPLATE)


def _qwen_tokenizer(first_special_id: int, chat_template: str, max_len: int):
    # Qwen layout: bytes first (0..255 in the real vocabulary too), then <|endoftext|> .. <|video_pad|>.
    specials = {t: first_special_id + i for i, t in enumerate(QWEN_SPECIAL_NAMES)}
    return make_tokenizer(specials=specials, byte_offset=0, bos_token=None, eos_token="<|im_end|>",
                          pad_token="<|endoftext|>", unk_token=None, chat_template=chat_template,
                          model_max_length=max_len)


# ------------------------------------------------------------------------------------------------
# specs
# ------------------------------------------------------------------------------------------------


_CLIP_L_336 = {
    "hidden_size": 1024, "image_size": 336, "intermediate_size": 4096, "model_type": "clip_vision_model",
    "num_attention_heads": 16, "num_hidden_layers": 24, "patch_size": 14, "projection_dim": 768, "vocab_size": 32000,
}
_VICUNA_7B = {
    "_name_or_path": "lmsys/vicuna-7b-v1.5", "architectures": ["LlamaForCausalLM"], "max_position_embeddings": 4096,
    "model_type": "llama", "rms_norm_eps": 1e-05, "torch_dtype": "float16", "vocab_size": 32064,
}
_PINPOINTS_336 = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


@dataclass
class _Spec:
    family: str  # model_type
    config: dict  # config.json as published (or tiny)
    image_processor: dict  # kwargs of the PIL image processor
    processor: dict = field(default_factory=dict)  # extra LlavaProcessor kwargs
    tiny: bool = False


_SPECS: dict[str, _Spec] = {
    # llava-hf/llava-1.5-7b-hf
    "llava-1.5-7b": _Spec(
        family="llava",
        config={
            "architectures": ["LlavaForConditionalGeneration"], "ignore_index": -100, "image_token_index": 32000,
            "model_type": "llava", "pad_token_id": 32001, "projector_hidden_act": "gelu",
            "text_config": dict(_VICUNA_7B), "tie_word_embeddings": False, "torch_dtype": "float16",
            "vision_config": dict(_CLIP_L_336), "vision_feature_layer": -2,
            "vision_feature_select_strategy": "default", "vocab_size": 32064,
        },
        image_processor={
            "size": {"shortest_edge": 336}, "crop_size": {"height": 336, "width": 336}, "do_center_crop": True,
            "do_resize": True, "do_rescale": True, "do_normalize": True, "do_convert_rgb": True, "resample": 3,
            "image_mean": OPENAI_CLIP_MEAN, "image_std": OPENAI_CLIP_STD,
        },
        processor={"patch_size": 14, "vision_feature_select_strategy": "default", "num_additional_image_tokens": 1},
    ),
    # llava-hf/llava-v1.6-vicuna-7b-hf
    "llava-next-7b": _Spec(
        family="llava_next",
        config={
            "architectures": ["LlavaNextForConditionalGeneration"], "ignore_index": -100,
            "image_grid_pinpoints": _PINPOINTS_336, "image_token_index": 32000, "model_type": "llava_next",
            "projector_hidden_act": "gelu",
            "text_config": {**_VICUNA_7B, "pad_token_id": 0}, "torch_dtype": "float16",
            "use_image_newline_parameter": True, "vision_config": dict(_CLIP_L_336), "vision_feature_layer": -2,
            "vision_feature_select_strategy": "default", "vocab_size": 32064,
        },
        image_processor={
            "size": {"shortest_edge": 336}, "crop_size": {"height": 336, "width": 336}, "do_center_crop": True,
            "do_resize": True, "do_rescale": True, "do_normalize": True, "do_convert_rgb": True, "do_pad": True,
            "resample": 3, "image_mean": OPENAI_CLIP_MEAN, "image_std": OPENAI_CLIP_STD,
            "image_grid_pinpoints": _PINPOINTS_336,
        },
        processor={"patch_size": 14, "vision_feature_select_strategy": "default", "num_additional_image_tokens": 1},
    ),
    # LanguageBind/Video-LLaVA-7B-hf: CLIP-L/14 at 224 px for images and (a second tower) video frames,
    # Vicuna-7B; 8 frames x (256 patches + [CLS]) = 2,056 video tokens
    "video-llava-7b": _Spec(
        family="video_llava",
        config={
            "architectures": ["VideoLlavaForConditionalGeneration"], "ignore_index": -100, "image_token_index": 32000,
            "video_token_index": 32001, "model_type": "video_llava", "pad_token_id": 32002,
            "projector_hidden_act": "gelu", "text_config": {**_VICUNA_7B, "pad_token_id": 0},
            "torch_dtype": "float16", "vision_config": {**_CLIP_L_336, "image_size": 224},
            "vision_feature_layer": -2, "vision_feature_select_strategy": "default", "image_seq_length": 256,
            "video_seq_length": 2056, "vocab_size": 32064, "tie_word_embeddings": False,
        },
        image_processor={
            "size": {"shortest_edge": 224}, "crop_size": {"height": 224, "width": 224}, "do_center_crop": True,
            "do_resize": True, "do_rescale": True, "do_normalize": True, "do_convert_rgb": True, "resample": 3,
            "image_mean": OPENAI_CLIP_MEAN, "image_std": OPENAI_CLIP_STD,
        },
        processor={"patch_size": 14, "vision_feature_select_strategy": "default", "num_additional_image_tokens": 1},
    ),
    # Qwen/Qwen2.5-VL-7B-Instruct (flat text config, as published)
    "qwen2.5-vl-7b": _Spec(
        family="qwen2_5_vl",
        config={
            "architectures": ["Qwen2_5_VLForConditionalGeneration"], "attention_dropout": 0.0,
            "bos_token_id": 151643, "eos_token_id": 151645, "vision_start_token_id": 151652,
            "vision_end_token_id": 151653, "vision_token_id": 151654, "image_token_id": 151655,
            "video_token_id": 151656, "hidden_act": "silu", "hidden_size": 3584, "initializer_range": 0.02,
            "intermediate_size": 18944, "max_position_embeddings": 128000, "max_window_layers": 28,
            "model_type": "qwen2_5_vl", "num_attention_heads": 28, "num_hidden_layers": 28,
            "num_key_value_heads": 4, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768,
            "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": True,
            "use_sliding_window": False,
            "vision_config": {
                "depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                "in_chans": 3, "out_hidden_size": 3584, "patch_size": 14, "spatial_merge_size": 2,
                "spatial_patch_size": 14, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31],
                "tokens_per_second": 2, "temporal_patch_size": 2,
            },
            "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
            "vocab_size": 152064,
        },
        image_processor={
            "min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2,
            "merge_size": 2, "image_mean": OPENAI_CLIP_MEAN, "image_std": OPENAI_CLIP_STD,
        },
    ),
    # Qwen/Qwen3-VL-8B-Instruct
    "qwen3-vl-8b": _Spec(
        family="qwen3_vl",
        config={
            "architectures": ["Qwen3VLForConditionalGeneration"], "image_token_id": 151655, "model_type": "qwen3_vl",
            "text_config": {
                "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 151643, "dtype": "bfloat16",
                "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu", "hidden_size": 4096,
                "initializer_range": 0.02, "intermediate_size": 12288, "max_position_embeddings": 262144,
                "model_type": "qwen3_vl_text", "num_attention_heads": 32, "num_hidden_layers": 36,
                "num_key_value_heads": 8, "rms_norm_eps": 1e-06,
                "rope_scaling": {"mrope_interleaved": True, "mrope_section": [24, 20, 20], "rope_type": "default"},
                "rope_theta": 5000000, "use_cache": True, "vocab_size": 151936,
            },
            "tie_word_embeddings": False, "video_token_id": 151656,
            "vision_config": {
                "deepstack_visual_indexes": [8, 16, 24], "depth": 27, "hidden_act": "gelu_pytorch_tanh",
                "hidden_size": 1152, "in_channels": 3, "initializer_range": 0.02, "intermediate_size": 4304,
                "model_type": "qwen3_vl", "num_heads": 16, "num_position_embeddings": 2304, "out_hidden_size": 4096,
                "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2,
            },
            "vision_end_token_id": 151653, "vision_start_token_id": 151652,
        },
        image_processor={
            "size": {"longest_edge": 16777216, "shortest_edge": 65536}, "patch_size": 16, "temporal_patch_size": 2,
            "merge_size": 2, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        },
    ),
}

# ---- tiny variants ------------------------------------------------------------------------------
# LLaVA tiny: vocab 320, <image>=259, <pad>=260 (bytes 3..258).  Qwen tiny: vocab 320, bytes 0..255,
# <|endoftext|>=256 ... <|vision_start|>=265, <|vision_end|>=266, <|image_pad|>=268, <|video_pad|>=269.
_TINY_VOCAB = 320
_TINY_LLAVA_IMAGE, _TINY_LLAVA_PAD = 259, 260
_TINY_VLLAVA_VIDEO, _TINY_VLLAVA_PAD = 260, 261   # tiny Video-LLaVA: <image>=259, <video>=260, <pad>=261
_TINY_QWEN_FIRST = 256
_TQ = {t: _TINY_QWEN_FIRST + i for i, t in enumerate(QWEN_SPECIAL_NAMES)}

_TINY_CLIP = {
    "model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
    "num_hidden_layers": 3, "image_size": 56, "patch_size": 7, "projection_dim": 32, "vocab_size": 32,
}
_TINY_LLAMA = {
    "model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
    "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 2048, "rms_norm_eps": 1e-05,
    "vocab_size": _TINY_VOCAB, "pad_token_id": _TINY_LLAVA_PAD, "bos_token_id": 1, "eos_token_id": 2,
}
_TINY_PINPOINTS = [[56, 112], [112, 56], [112, 112]]
_TINY_CLIP_PROC = {
    "size": {"shortest_edge": 56}, "crop_size": {"height": 56, "width": 56}, "do_center_crop": True,
    "do_resize": True, "do_rescale": True, "do_normalize": True, "do_convert_rgb": True, "resample": 3,
    "image_mean": OPENAI_CLIP_MEAN, "image_std": OPENAI_CLIP_STD,
}
_TINY_LLAVA_PROC = {"patch_size": 7, "vision_feature_select_strategy": "default", "num_additional_image_tokens": 1}

_SPECS.update({
    "tiny-llava": _Spec(
        family="llava", tiny=True,
        config={
            "model_type": "llava", "image_token_index": _TINY_LLAVA_IMAGE, "pad_token_id": _TINY_LLAVA_PAD,
            "projector_hidden_act": "gelu", "text_config": dict(_TINY_LLAMA), "vision_config": dict(_TINY_CLIP),
            "vision_feature_layer": -2, "vision_feature_select_strategy": "default", "image_seq_length": 64,
            "tie_word_embeddings": False, "vocab_size": _TINY_VOCAB,
        },
        image_processor=dict(_TINY_CLIP_PROC), processor=dict(_TINY_LLAVA_PROC),
    ),
    "tiny-llava-next": _Spec(
        family="llava_next", tiny=True,
        config={
            "model_type": "llava_next", "image_token_index": _TINY_LLAVA_IMAGE, "pad_token_id": _TINY_LLAVA_PAD,
            "projector_hidden_act": "gelu", "text_config": dict(_TINY_LLAMA), "vision_config": dict(_TINY_CLIP),
            "vision_feature_layer": -2, "vision_feature_select_strategy": "default",
            "image_grid_pinpoints": _TINY_PINPOINTS, "use_image_newline_parameter": True,
            "tie_word_embeddings": False, "vocab_size": _TINY_VOCAB,
        },
        image_processor={**_TINY_CLIP_PROC, "do_pad": True, "image_grid_pinpoints": _TINY_PINPOINTS},
        processor=dict(_TINY_LLAVA_PROC),
    ),
    "tiny-video-llava": _Spec(
        family="video_llava", tiny=True,
        config={
            "model_type": "video_llava", "image_token_index": _TINY_LLAVA_IMAGE,
            "video_token_index": _TINY_VLLAVA_VIDEO, "pad_token_id": _TINY_VLLAVA_PAD,
            "projector_hidden_act": "gelu", "text_config": {**_TINY_LLAMA, "pad_token_id": _TINY_VLLAVA_PAD},
            "vision_config": dict(_TINY_CLIP), "vision_feature_layer": -2,
            "vision_feature_select_strategy": "default", "image_seq_length": 64, "video_seq_length": 4 * 65,
            "tie_word_embeddings": False, "vocab_size": _TINY_VOCAB,
        },
        image_processor=dict(_TINY_CLIP_PROC), processor=dict(_TINY_LLAVA_PROC),
    ),
    "tiny-qwen2.5-vl": _Spec(
        family="qwen2_5_vl", tiny=True,
        config={
            "model_type": "qwen2_5_vl",
            "text_config": {
                "model_type": "qwen2_5_vl_text", "vocab_size": _TINY_VOCAB, "hidden_size": 64,
                "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
                "num_key_value_heads": 2, "max_position_embeddings": 4096, "rms_norm_eps": 1e-06,
                "hidden_act": "silu", "use_sliding_window": False, "max_window_layers": 4,
                "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
                "bos_token_id": _TQ["<|endoftext|>"], "eos_token_id": _TQ["<|im_end|>"],
                "pad_token_id": _TQ["<|endoftext|>"],
            },
            "vision_config": {
                "model_type": "qwen2_5_vl_vision", "depth": 3, "hidden_size": 32, "intermediate_size": 64,
                "num_heads": 2, "hidden_act": "silu", "out_hidden_size": 64, "patch_size": 4,
                "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 32,
                "fullatt_block_indexes": [2], "tokens_per_second": 2,
            },
            "image_token_id": _TQ["<|image_pad|>"], "video_token_id": _TQ["<|video_pad|>"],
            "vision_start_token_id": _TQ["<|vision_start|>"], "vision_end_token_id": _TQ["<|vision_end|>"],
            "tie_word_embeddings": False,
        },
        image_processor={
            "min_pixels": 16 * 16, "max_pixels": 64 * 64, "patch_size": 4, "temporal_patch_size": 2,
            "merge_size": 2, "image_mean": OPENAI_CLIP_MEAN, "image_std": OPENAI_CLIP_STD,
        },
    ),
    "tiny-qwen3-vl": _Spec(
        family="qwen3_vl", tiny=True,
        config={
            "model_type": "qwen3_vl",
            "text_config": {
                "model_type": "qwen3_vl_text", "vocab_size": _TINY_VOCAB, "hidden_size": 64,
                "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
                "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 4096,
                "rms_norm_eps": 1e-06, "hidden_act": "silu",
                "rope_parameters": {"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [2, 3, 3],
                                    "mrope_interleaved": True},
                "bos_token_id": _TQ["<|endoftext|>"], "eos_token_id": _TQ["<|im_end|>"],
                "pad_token_id": _TQ["<|endoftext|>"],
            },
            "vision_config": {
                "model_type": "qwen3_vl", "depth": 3, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                "hidden_act": "gelu_pytorch_tanh", "out_hidden_size": 64, "patch_size": 4,
                "spatial_merge_size": 2, "temporal_patch_size": 2, "num_position_embeddings": 256,
                "deepstack_visual_indexes": [0, 1],
            },
            "image_token_id": _TQ["<|image_pad|>"], "video_token_id": _TQ["<|video_pad|>"],
            "vision_start_token_id": _TQ["<|vision_start|>"], "vision_end_token_id": _TQ["<|vision_end|>"],
            "tie_word_embeddings": False,
        },
        image_processor={
            "size": {"shortest_edge": 16 * 16, "longest_edge": 64 * 64}, "patch_size": 4, "temporal_patch_size": 2,
            "merge_size": 2, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        },
    ),
})

REAL_ARCH_NAMES: tuple[str, ...] = ("llava-1.5-7b", "llava-next-7b", "qwen2.5-vl-7b", "qwen3-vl-8b", "video-llava-7b")
TINY_ARCH_NAMES: tuple[str, ...] = ("tiny-llava", "tiny-llava-next", "tiny-qwen2.5-vl", "tiny-qwen3-vl",
                                   "tiny-video-llava")
ARCH_NAMES: tuple[str, ...] = REAL_ARCH_NAMES + TINY_ARCH_NAMES
#: real architecture name -> the published checkpoint whose config it copies (from the family registry)
HUB_IDS: dict[str, str] = {name: FAMILIES[_SPECS[name].family].hub_id for name in REAL_ARCH_NAMES}


def _spec(name: str) -> _Spec:
    if name not in _SPECS:
        raise KeyError(f"Unknown architecture {name!r}; known: {', '.join(ARCH_NAMES)}")
    return _SPECS[name]


# ------------------------------------------------------------------------------------------------
# public functions
# ------------------------------------------------------------------------------------------------


def config_for(name: str, text_layers: int | None = None):
    """The ``PreTrainedConfig`` of architecture ``name`` (optionally with only ``text_layers`` decoder layers)."""
    from transformers import AutoConfig

    spec = _spec(name)
    d = copy.deepcopy(spec.config)
    if text_layers is not None:
        if text_layers < 1:
            raise ValueError("text_layers must be >= 1")
        text = d["text_config"] if "text_config" in d else d  # Qwen2.5-VL's published config is flat
        full = text.get("num_hidden_layers", 32)  # LlamaConfig default (vicuna-7b) is 32
        text["num_hidden_layers"] = min(text_layers, full)
        if "max_window_layers" in text:
            text["max_window_layers"] = min(text["max_window_layers"], text["num_hidden_layers"])
    model_type = d.pop("model_type")
    d.pop("architectures", None)
    config = AutoConfig.for_model(model_type, **d)
    config.architectures = [model_class_for(model_type).__name__]
    return config


def processor_for(name: str):
    """An offline processor for architecture ``name`` (tokenizer + PIL image processor + chat template)."""
    spec = _spec(name)
    cfg = spec.config
    if spec.family == "video_llava":
        from transformers import CLIPImageProcessorPil

        from .models.processors import VideoLlavaPILProcessor

        tokenizer = _llava_tokenizer(cfg["image_token_index"], cfg["pad_token_id"],
                                     cfg["text_config"].get("max_position_embeddings", 4096), cfg["video_token_index"])
        return VideoLlavaPILProcessor(CLIPImageProcessorPil(**spec.image_processor), tokenizer,
                                      chat_template=VIDEO_LLAVA_CHAT_TEMPLATE, **spec.processor)
    if spec.family in ("llava", "llava_next"):
        from transformers import CLIPImageProcessorPil, LlavaNextImageProcessorPil, LlavaNextProcessor, LlavaProcessor

        max_len = cfg["text_config"].get("max_position_embeddings", 4096)
        pad_id = _TINY_LLAVA_PAD if spec.tiny else 32001
        tokenizer = _llava_tokenizer(cfg["image_token_index"], pad_id, max_len)
        if spec.family == "llava":
            image_processor = CLIPImageProcessorPil(**spec.image_processor)
            cls = LlavaProcessor
        else:
            image_processor = LlavaNextImageProcessorPil(**spec.image_processor)
            cls = LlavaNextProcessor
        return cls(image_processor=image_processor, tokenizer=tokenizer, chat_template=LLAVA_CHAT_TEMPLATE,
                   **spec.processor)

    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    text = cfg.get("text_config", cfg)
    first = cfg.get("vision_start_token_id", 151652) - QWEN_SPECIAL_NAMES.index("<|vision_start|>")
    if spec.family == "qwen2_5_vl":
        template, pclass = QWEN25_CHAT_TEMPLATE, "Qwen2_5_VLProcessor"
    else:
        template, pclass = QWEN3_CHAT_TEMPLATE, "Qwen3VLProcessor"
    tokenizer = _qwen_tokenizer(first, template, text.get("max_position_embeddings", 32768))
    image_processor = Qwen2VLImageProcessorPil(**spec.image_processor)
    processor = QwenVLProcessor(image_processor, tokenizer, chat_template=template, processor_class=pclass)
    assert processor.image_token_id == cfg["image_token_id"] and processor.video_token_id == cfg["video_token_id"]
    return processor


def build(name: str, *, text_layers: int | None = None, dtype=torch.float32, seed: int = 0, device=None,
          attn_implementation: str | None = None):
    """Build ``(model, processor)`` for ``name`` with seeded random weights, in ``dtype``, eval mode.

    The weights are created on ``device`` (default: the CPU); ``"meta"`` allocates nothing and
    initialises nothing.
    """
    config = config_for(name, text_layers=text_layers)
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    cls = model_class_for(config.model_type)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    target = torch.device("cpu" if device is None else device)
    if target.type == "meta":
        with torch.device("meta"):
            model = cls._from_config(config, dtype=dtype)
    else:
        accel = [] if target.type == "cpu" else [target.index or 0]
        with torch.random.fork_rng(devices=accel, device_type=target.type if accel else "cuda"), target:
            torch.manual_seed(seed)
            model = cls._from_config(config, dtype=dtype)
    model.eval()
    processor = processor_for(name)
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.pad_token_id is None:
        gen.pad_token_id = processor.tokenizer.pad_token_id
    return model, processor
