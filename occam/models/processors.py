"""Processors of the supported families with Pillow image processors (no torchvision needed).

LLaVA / LLaVA-NeXT use the stock ``LlavaProcessor`` / ``LlavaNextProcessor`` with the PIL image
processors (``CLIPImageProcessorPil`` / ``LlavaNextImageProcessorPil``).

The stock ``Qwen2_5_VLProcessor`` / ``Qwen3VLProcessor`` cannot be built without torchvision
(their ``video_processor`` attribute is type-checked against ``VIDEO_PROCESSOR_MAPPING``, which is a
dummy when torchvision is missing, even when ``video_processor=None``). :class:`QwenVLProcessor` is a
minimal replacement with the same calling convention, for images and (already decoded, sampled)
video frames. It also returns
``mm_token_type_ids``, which transformers 5.x needs to compute M-RoPE positions
(Qwen3-VL raises without it; Qwen2.5-VL silently falls back to 1-D positions).

The stock ``VideoLlavaProcessor`` cannot be built without torchvision either (same type check on its
``video_processor``). :class:`VideoLlavaPILProcessor` replaces it: Video-LLaVA processes video frames
exactly as images (CLIP resize + centre crop, its ``VideoLlavaVideoProcessor`` has the image settings),
so one PIL image processor serves both, and ``<video>`` is expanded into frames x (patches + CLS) tokens.
Frames reach the processors already decoded and sampled (``occam.video``), so no video decoder is needed.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from . import family

class _TokenizerProcessor:
    """What a processor built here shares: chat template, decoding and saving go to its tokenizer."""

    tokenizer: Any
    image_processor: Any
    chat_template: str | None

    def apply_chat_template(self, conversation, add_generation_prompt: bool = False, tokenize: bool = False,
                            chat_template: str | None = None, **kwargs):
        template = chat_template if chat_template is not None else self.chat_template
        if template is None:
            raise ValueError("This processor has no chat template.")
        return self.tokenizer.apply_chat_template(conversation, chat_template=template,
                                                  add_generation_prompt=add_generation_prompt, tokenize=tokenize,
                                                  **kwargs)

    def _texts(self, text) -> list[str]:
        """The prompt(s) of a call as a list; a call without one gets an error naming this processor."""
        if text is None:
            raise ValueError(f"{type(self).__name__} needs `text` (use the chat template to get a prompt).")
        return [text] if isinstance(text, str) else list(text)

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)

    def save_pretrained(self, save_directory, **kwargs) -> None:
        save_directory = Path(save_directory)
        save_directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(save_directory)
        self.image_processor.save_pretrained(save_directory)
        if self.chat_template is not None:
            (save_directory / "chat_template.jinja").write_text(self.chat_template, encoding="utf-8")


class QwenVLProcessor(_TokenizerProcessor):
    """Image and video processor for Qwen2.5-VL and Qwen3-VL (no torchvision needed).

    Mirrors what ``Qwen2_5_VLProcessor`` / ``Qwen3VLProcessor`` do for images: every
    ``<|image_pad|>`` in the text is expanded into ``grid_t * grid_h * grid_w // merge_size**2``
    pads (one per merged visual token, in order of the images), and the output holds
    ``input_ids``, ``attention_mask``, ``pixel_values``, ``image_grid_thw`` and
    ``mm_token_type_ids`` (0 = text, 1 = image, 2 = video).
    """

    image_token = "<|image_pad|>"
    video_token = "<|video_pad|>"
    vision_start_token = "<|vision_start|>"
    vision_end_token = "<|vision_end|>"

    def __init__(self, image_processor, tokenizer, chat_template: str | None = None, processor_class: str = "Qwen2_5_VLProcessor"):
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.chat_template = chat_template if chat_template is not None else getattr(tokenizer, "chat_template", None)
        self.processor_class = processor_class
        ids = {}
        for attr in ("image_token", "video_token", "vision_start_token", "vision_end_token"):
            tok = getattr(self, attr)
            tid = tokenizer.convert_tokens_to_ids(tok)
            if tid is None or tid == getattr(tokenizer, "unk_token_id", object()):
                raise ValueError(f"The tokenizer has no {tok!r} token; it is not a Qwen-VL tokenizer.")
            ids[attr + "_id"] = int(tid)
        self.image_token_id = ids["image_token_id"]
        self.video_token_id = ids["video_token_id"]
        self.vision_start_token_id = ids["vision_start_token_id"]
        self.vision_end_token_id = ids["vision_end_token_id"]

    # -- HF-like conveniences -------------------------------------------------------------
    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids"]

    def __repr__(self) -> str:
        return (
            f"QwenVLProcessor(as {self.processor_class}, image_processor={type(self.image_processor).__name__}, "
            f"tokenizer={type(self.tokenizer).__name__}(vocab={len(self.tokenizer)}))"
        )

    def num_image_tokens(self, image_grid_thw: torch.Tensor) -> list[int]:
        merge = int(self.image_processor.merge_size)
        return [int(n) for n in (torch.as_tensor(image_grid_thw).prod(-1) // merge**2).tolist()]

    def __call__(self, images=None, text=None, videos=None, return_tensors=None, padding=False, **kwargs):
        from transformers.feature_extraction_utils import BatchFeature

        texts = self._texts(text)
        video_inputs: dict[str, Any] = {}
        if videos is not None:
            video_inputs, texts = self._videos(videos, texts, kwargs.pop("video_timestamps", None))
        elif any(self.video_token in t for t in texts):
            raise ValueError(f"The text contains {self.video_token!r} but no videos were given.")

        image_inputs: dict[str, Any] = {}
        if images is not None:
            flat = _flatten_images(images)
            if flat:
                device = {"device": kwargs["device"]} if kwargs.get("device") is not None else {}
                image_inputs = dict(self.image_processor(images=flat, return_tensors="pt", **device))
                counts = self.num_image_tokens(image_inputs["image_grid_thw"])
                texts = _expand_each(texts, self.image_token, counts)
        elif any(self.image_token in t for t in texts):
            raise ValueError(f"The text contains {self.image_token!r} but no images were given.")

        text_kwargs = {k: v for k, v in kwargs.items() if k in ("truncation", "max_length", "pad_to_multiple_of", "add_special_tokens", "padding_side")}
        enc = self.tokenizer(texts, padding=padding, return_tensors=None, **text_kwargs)
        data: dict[str, Any] = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        data["mm_token_type_ids"] = [
            [1 if t == self.image_token_id else 2 if t == self.video_token_id else 0 for t in row]
            for row in enc["input_ids"]
        ]
        if return_tensors == "pt":
            data = {k: torch.tensor(v, dtype=torch.long) for k, v in data.items()}
        elif return_tensors is not None:
            raise ValueError(f"return_tensors={return_tensors!r} is not supported (use 'pt' or None).")
        data.update(image_inputs)
        data.update(video_inputs)
        return BatchFeature(data=data)

    def _videos(self, videos, texts: list[str], timestamps=None) -> tuple[dict, list[str]]:
        """Video patches, ``video_grid_thw`` and the expanded text, as the transformers 5 Qwen processors do.

        ``videos``: a list of clips, each a list of frames (already sampled). Every frame goes through the
        Pillow image processor (smart resize, rescale, normalise, patchify); consecutive frames are then
        paired into temporal patches (the last frame repeated when the count is odd, as transformers does).
        ``timestamps`` (seconds per frame, per clip) give Qwen3-VL's ``<t seconds>`` prompt prefixes and
        Qwen2.5-VL's ``second_per_grid_ts`` (temporal_patch_size / the sampled frame rate).
        """
        ip = self.image_processor
        tp, patch, merge = int(ip.temporal_patch_size), int(ip.patch_size), int(ip.merge_size)
        pixel_values, grids, seconds, replacements = [], [], [], []
        for v, clip in enumerate(videos):
            frames = list(clip)
            if not frames:
                raise ValueError("A video has zero frames.")
            ts = [float(t) for t in timestamps[v]] if timestamps is not None else [float(i) for i in range(len(frames))]
            while len(frames) % tp:
                frames.append(frames[-1])
                ts.append(ts[-1])
            out = ip(images=frames, return_tensors="pt")
            gh, gw = (int(x) for x in out["image_grid_thw"][0, 1:])
            n_frames, groups = len(frames), len(frames) // tp
            pv = out["pixel_values"].view(n_frames, gh * gw, -1, tp, patch, patch)[:, :, :, 0]   # one copy per frame
            pv = pv.view(groups, tp, gh * gw, -1, patch, patch).permute(0, 2, 3, 1, 4, 5)       # pair the frames
            pixel_values.append(pv.reshape(groups * gh * gw, -1))
            grids.append([groups, gh, gw])
            span = ts[-1] - ts[0]
            rate = (n_frames - 1) / span if span > 0 else 1.0
            seconds.append(tp / rate)
            per_group = gh * gw // merge**2
            if self.processor_class == "Qwen3VLProcessor":   # "<t seconds>" + one vision block per temporal patch
                times = [(ts[i] + ts[i + tp - 1]) / 2 for i in range(0, n_frames, tp)]
                replacements.append("".join(f"<{t:.1f} seconds>" + self.vision_start_token
                                            + self.video_token * per_group + self.vision_end_token for t in times))
            else:
                replacements.append(self.video_token * (groups * per_group))
        out_texts, idx = [], 0
        for t in texts:
            parts = t.split(self.video_token)
            s = parts[0]
            for p in parts[1:]:
                if idx >= len(replacements):
                    raise ValueError(f"More {self.video_token!r} placeholders in the text than videos.")
                s += replacements[idx] + p
                idx += 1
            out_texts.append(s)
        if idx != len(replacements):
            raise ValueError(f"{len(replacements)} videos were given but the text has {idx} placeholders.")
        data = {"pixel_values_videos": torch.cat(pixel_values), "video_grid_thw": torch.tensor(grids)}
        if self.processor_class != "Qwen3VLProcessor":
            data["second_per_grid_ts"] = torch.tensor(seconds)
        return data, out_texts

    @classmethod
    def from_pretrained(cls, folder, processor_class: str = "Qwen2_5_VLProcessor", **kwargs) -> "QwenVLProcessor":
        from transformers import AutoTokenizer
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
        image_processor = Qwen2VLImageProcessorPil.from_pretrained(folder, **kwargs)
        chat_template = _read_chat_template(folder, **kwargs) or getattr(tokenizer, "chat_template", None)
        return cls(image_processor, tokenizer, chat_template=chat_template, processor_class=processor_class)


class VideoLlavaPILProcessor(_TokenizerProcessor):
    """Images and videos for Video-LLaVA with one Pillow image processor (no torchvision needed).

    Mirrors ``VideoLlavaProcessor``: ``<image>`` becomes (H/p)(W/p) tokens (+1 under the "full" feature
    strategy) and ``pixel_values``; ``<video>`` becomes frames x ((H/p)(W/p) + 1) tokens (the video path
    keeps [CLS]) and ``pixel_values_videos`` of shape (videos, frames, 3, H, W).
    """

    def __init__(self, image_processor, tokenizer, chat_template: str | None = None, patch_size: int = 14,
                 vision_feature_select_strategy: str = "default", num_additional_image_tokens: int = 1,
                 image_token: str = "<image>", video_token: str = "<video>"):
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.chat_template = chat_template if chat_template is not None else getattr(tokenizer, "chat_template", None)
        self.patch_size = patch_size
        self.vision_feature_select_strategy = vision_feature_select_strategy
        self.num_additional_image_tokens = num_additional_image_tokens
        self.image_token, self.video_token = image_token, video_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(video_token)
        if self.video_token_id in (None, getattr(tokenizer, "unk_token_id", object())):
            raise ValueError(f"The tokenizer has no {video_token!r} token; it is not a Video-LLaVA tokenizer.")

    def __repr__(self) -> str:
        return (f"VideoLlavaPILProcessor(image_processor={type(self.image_processor).__name__}, "
                f"tokenizer={type(self.tokenizer).__name__}(vocab={len(self.tokenizer)}))")

    def _tokens_per_frame(self, pixel_values: torch.Tensor) -> int:
        h, w = pixel_values.shape[-2:]
        return (h // self.patch_size) * (w // self.patch_size) + self.num_additional_image_tokens

    def __call__(self, images=None, text=None, videos=None, return_tensors=None, padding=False, **kwargs):
        from transformers.feature_extraction_utils import BatchFeature

        texts = self._texts(text)
        data: dict[str, Any] = {}
        if images is not None:
            pv = self.image_processor(images=_flatten_images(images), return_tensors="pt")["pixel_values"]
            n = self._tokens_per_frame(pv) - (1 if self.vision_feature_select_strategy == "default" else 0)
            texts = _expand_each(texts, self.image_token, [n] * pv.shape[0])
            data["pixel_values"] = pv
        if videos is not None:
            clips = [list(v) for v in videos]
            pvs = [self.image_processor(images=frames, return_tensors="pt")["pixel_values"] for frames in clips]
            if len({tuple(p.shape) for p in pvs}) > 1:
                raise ValueError("All videos of one call must have the same number of frames.")
            data["pixel_values_videos"] = torch.stack(pvs)
            texts = _expand_each(texts, self.video_token, [self._tokens_per_frame(p) * p.shape[0] for p in pvs])
        enc = self.tokenizer(texts, return_tensors=return_tensors, padding=padding)
        data = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], **data}
        return BatchFeature(data=data)

    @classmethod
    def from_pretrained(cls, folder, **kwargs) -> "VideoLlavaPILProcessor":
        from transformers import AutoConfig, AutoTokenizer, CLIPImageProcessorPil

        tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
        image_processor = CLIPImageProcessorPil.from_pretrained(folder, **kwargs)
        chat_template = _read_chat_template(folder, **kwargs) or getattr(tokenizer, "chat_template", None)
        cfg = AutoConfig.from_pretrained(folder, **kwargs)
        return cls(image_processor, tokenizer, chat_template=chat_template,
                   patch_size=cfg.vision_config.patch_size,
                   vision_feature_select_strategy=cfg.vision_feature_select_strategy)


def _expand_each(texts: list[str], token: str, counts: list[int]) -> list[str]:
    """Replace the i-th ``token`` over all texts by ``counts[i]`` copies of it."""
    out, idx = [], 0
    for t in texts:
        parts = t.split(token)
        s = parts[0]
        for p in parts[1:]:
            if idx >= len(counts):
                raise ValueError(f"More {token!r} placeholders in the text than inputs ({len(counts)}).")
            s += token * counts[idx] + p
            idx += 1
        out.append(s)
    if idx != len(counts):
        raise ValueError(f"{len(counts)} inputs were given but the text has {idx} {token!r} placeholders.")
    return out


def _flatten_images(images) -> list:
    if isinstance(images, (list, tuple)):
        flat = []
        for im in images:
            flat.extend(_flatten_images(im))
        return flat
    return [images]


def _read_chat_template(folder, **kwargs) -> str | None:
    """chat_template.jinja, else chat_template.json's "chat_template", else None."""
    for fname in ("chat_template.jinja", "chat_template.json"):
        path = _resolve_file(folder, fname, **kwargs)
        if path is None:
            continue
        text = Path(path).read_text(encoding="utf-8")
        if fname.endswith(".json"):
            template = json.loads(text).get("chat_template")
            if isinstance(template, str):
                return template
        else:
            return text
    return None


def _resolve_file(folder, fname: str, **kwargs) -> str | None:
    if os.path.isdir(folder):
        p = os.path.join(folder, fname)
        return p if os.path.isfile(p) else None
    from transformers.utils import cached_file

    try:
        return cached_file(folder, fname, _raise_exceptions_for_missing_entries=False,
                           _raise_exceptions_for_connection_errors=False, **kwargs)
    except OSError:
        return None


#: Pillow image processor -> its torchvision-backed twin in transformers (same settings, runs on a device)
TORCHVISION_TWINS = {"CLIPImageProcessorPil": "CLIPImageProcessor", "LlavaNextImageProcessorPil": "LlavaNextImageProcessor",
                     "Qwen2VLImageProcessorPil": "Qwen2VLImageProcessor"}


def torchvision_twin(processor):
    """A shallow copy of ``processor`` whose image processor is the torchvision-backed twin of its Pillow one
    (same settings; it resizes and normalises on the device it is given), or None without torchvision."""
    import copy

    import transformers
    from transformers.utils import is_torchvision_available

    name = TORCHVISION_TWINS.get(type(processor.image_processor).__name__)
    if name is None or not is_torchvision_available():
        return None
    settings = {k: v for k, v in processor.image_processor.to_dict().items()
                if k not in ("image_processor_type", "processor_class", "backend")}
    twin = copy.copy(processor)
    twin.image_processor = getattr(transformers, name)(**settings)
    return twin


def load_processor(name_or_path, model_type: str | None = None, **kwargs):
    """Processor for a saved folder / hub id of a supported family, with PIL image processors."""
    if model_type is None:
        from transformers import AutoConfig

        model_type = AutoConfig.from_pretrained(name_or_path, **kwargs).model_type
    fam = family(model_type)  # TypeError naming the supported families
    if fam.processor_class.startswith("Qwen"):
        return QwenVLProcessor.from_pretrained(name_or_path, processor_class=fam.processor_class, **kwargs)
    if fam.processor_class == "VideoLlavaProcessor":
        return VideoLlavaPILProcessor.from_pretrained(name_or_path, **kwargs)
    import transformers

    # backend="pil" selects CLIPImageProcessorPil / LlavaNextImageProcessorPil (torchvision-free).
    return getattr(transformers, fam.processor_class).from_pretrained(name_or_path, backend="pil", **kwargs)

