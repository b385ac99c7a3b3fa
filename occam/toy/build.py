"""Build the toy LLaVA: DINOv2-with-registers vision tower + small Llama, word-level tokenizer, processor.

The model is a plain ``transformers.LlavaForConditionalGeneration``; everything saved with
``save_pretrained`` reloads offline with ``LlavaForConditionalGeneration.from_pretrained`` and
``LlavaProcessor.from_pretrained`` / ``AutoProcessor.from_pretrained``.

Visual tokens reaching the language model: ``vision_feature_select_strategy="default"`` drops only
the CLS token, so the LM sees ``num_register_tokens`` register tokens followed by the
``(image_size // patch_size) ** 2`` patch tokens (row-major).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from tokenizers import Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordLevel
from transformers import (
    CLIPImageProcessorPil,
    Dinov2WithRegistersConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from . import world

PAD, UNK, BOS, EOS, IMAGE = "<pad>", "<unk>", "<s>", "</s>", "<image>"
SPECIALS = (PAD, UNK, BOS, EOS, IMAGE)
IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.5, 0.5, 0.5)

# "<s><image> what color is the circle? answer:"  (the processor expands <image> to N copies)
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}answer: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }} "
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image> "
    "{% elif item['type'] == 'text' %}{{ item['text'] }} {% endif %}"
    "{% endfor %}{% endif %}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }} {% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}answer:{% endif %}"
)


@dataclass
class ToyArch:
    image_size: int = world.IMAGE_SIZE
    patch_size: int = 12
    num_register_tokens: int = 4
    vision_hidden: int = 128
    vision_layers: int = 6
    vision_heads: int = 2
    vision_mlp_ratio: int = 4
    text_hidden: int = 128
    text_layers: int = 6
    text_heads: int = 4
    text_intermediate: int = 384
    max_positions: int = 256
    # init std in thousandths (1/sqrt(width)-ish; the HF default 0.02 is far too small for width 128 and
    # leaves the LM stuck on a long plateau before it learns to look up tokens in a long context)
    text_init_milli: int = 100
    vision_init_milli: int = 50

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def num_visual_tokens(self) -> int:
        """Tokens the LM sees per image: patches + registers (CLS dropped)."""
        return self.num_patches + self.num_register_tokens

    def to_dict(self) -> dict:
        d = asdict(self)
        d["num_patches"] = self.num_patches
        d["num_visual_tokens"] = self.num_visual_tokens
        return d


def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for w in world.vocabulary():
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(WordLevel(vocab=vocab, unk_token=UNK))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(behavior="isolated")]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        pad_token=PAD,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        extra_special_tokens={"image_token": IMAGE},
        padding_side="left",
        model_max_length=512,
    )
    # keep the ids fixed: specials are already in the vocab, this only marks them as special
    tok.add_special_tokens({"additional_special_tokens": [IMAGE]})
    assert tok.convert_tokens_to_ids(IMAGE) == SPECIALS.index(IMAGE), "image token id moved"
    return tok


def build_image_processor(arch: ToyArch) -> CLIPImageProcessorPil:
    s = arch.image_size
    return CLIPImageProcessorPil(
        size={"height": s, "width": s},  # resize straight to the square size, no crop
        crop_size={"height": s, "width": s},
        do_resize=True,
        do_center_crop=False,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(IMAGE_MEAN),
        image_std=list(IMAGE_STD),
        do_convert_rgb=True,
    )


def build_processor(arch: ToyArch, tokenizer: PreTrainedTokenizerFast | None = None) -> LlavaProcessor:
    tokenizer = tokenizer or build_tokenizer()
    return LlavaProcessor(
        image_processor=build_image_processor(arch),
        tokenizer=tokenizer,
        patch_size=arch.patch_size,
        num_additional_image_tokens=1 + arch.num_register_tokens,  # CLS + registers
        vision_feature_select_strategy="default",  # removes the CLS one again
        chat_template=CHAT_TEMPLATE,
    )


def build_config(arch: ToyArch, tokenizer: PreTrainedTokenizerFast) -> LlavaConfig:
    vision = Dinov2WithRegistersConfig(
        hidden_size=arch.vision_hidden,
        num_hidden_layers=arch.vision_layers,
        num_attention_heads=arch.vision_heads,
        mlp_ratio=arch.vision_mlp_ratio,
        image_size=arch.image_size,
        patch_size=arch.patch_size,
        num_register_tokens=arch.num_register_tokens,
        hidden_act="gelu",
        layerscale_value=1.0,
        layer_norm_eps=1e-6,
        initializer_range=arch.vision_init_milli / 1000,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=arch.text_hidden,
        intermediate_size=arch.text_intermediate,
        num_hidden_layers=arch.text_layers,
        num_attention_heads=arch.text_heads,
        num_key_value_heads=arch.text_heads,
        max_position_embeddings=arch.max_positions,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        initializer_range=arch.text_init_milli / 1000,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    cfg = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        projector_hidden_act="gelu",
        image_seq_length=arch.num_visual_tokens,
        tie_word_embeddings=True,
    )
    cfg.pad_token_id = tokenizer.pad_token_id
    cfg.bos_token_id = tokenizer.bos_token_id
    cfg.eos_token_id = tokenizer.eos_token_id
    return cfg


def build_model(arch: ToyArch, tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> LlavaForConditionalGeneration:
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(build_config(arch, tokenizer))
    with torch.no_grad():  # HF initialises all registers to zero (identical); break the symmetry
        emb = model.model.vision_tower.embeddings
        emb.register_tokens.normal_(0.0, arch.vision_init_milli / 1000)
    gc = model.generation_config
    gc.pad_token_id = tokenizer.pad_token_id
    gc.bos_token_id = tokenizer.bos_token_id
    gc.eos_token_id = tokenizer.eos_token_id
    gc.do_sample = False
    gc.max_new_tokens = 2
    return model


def build(arch: ToyArch | None = None, seed: int = 0):
    """Return ``(model, processor)`` freshly initialised."""
    arch = arch or ToyArch()
    tok = build_tokenizer()
    proc = build_processor(arch, tok)
    model = build_model(arch, tok, seed)
    check_consistency(model, proc)
    return model, proc


# --------------------------------------------------------------------------- helpers


def prompt_for(processor: LlavaProcessor, question: str) -> str:
    """The canonical prompt string (the way the library builds prompts)."""
    conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(conv, add_generation_prompt=True)


def pixel_values_from_uint8(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 at the model's native size -> normalised (B, 3, H, W) float32.

    Identical to what the processor produces for images already at the target size
    (checked in :func:`check_consistency`)."""
    x = torch.as_tensor(np.array(images, copy=True)).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def check_consistency(model: LlavaForConditionalGeneration, processor: LlavaProcessor) -> int:
    """Assert the processor inserts exactly as many image tokens as the model produces features."""
    cfg = model.config
    smp = world.make_sample(12345)
    inputs = processor(images=smp.image, text=prompt_for(processor, smp.question), return_tensors="pt")
    n_tok = int((inputs["input_ids"] == cfg.image_token_id).sum())
    feats = model.get_image_features(
        pixel_values=inputs["pixel_values"],
        vision_feature_layer=cfg.vision_feature_layer,
        vision_feature_select_strategy=cfg.vision_feature_select_strategy,
    )
    feats = feats.pooler_output if hasattr(feats, "pooler_output") else feats
    n_feat = feats[0].shape[0]
    vc = cfg.vision_config
    expected = (vc.image_size // vc.patch_size) ** 2 + vc.num_register_tokens
    assert n_tok == n_feat == expected == cfg.image_seq_length, (n_tok, n_feat, expected, cfg.image_seq_length)
    pv = pixel_values_from_uint8(np.asarray(smp.image)[None])
    assert torch.allclose(pv, inputs["pixel_values"].float(), atol=1e-5), "fast preprocessing != processor"
    return n_tok
