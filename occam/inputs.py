"""Input checks shared by the library and the app: every rejection says what was wrong and what is accepted."""
from __future__ import annotations

import io
import os
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_PIXELS = 40_000_000          # larger images are refused (decompression bombs)
MAX_QUESTION_CHARS = 2000


def open_image(source, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open a path, bytes or file object as an RGB image, refusing what is not a usable image."""
    if isinstance(source, Image.Image):
        return to_rgb(source, max_pixels)
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    elif isinstance(source, (str, os.PathLike)) and not os.path.isfile(source):
        raise ValueError(f"Image file not found: {source}")
    old = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(source)
            _check_pixels(img.size, max_pixels)
            img.load()
    except (UnidentifiedImageError, Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        if isinstance(e, UnidentifiedImageError):
            raise ValueError("This file is not an image Pillow can read (accepted: PNG, JPEG, WebP, GIF, BMP, "
                             "TIFF, ...).") from None
        raise ValueError(f"Image too large: over the limit of {max_pixels:,} pixels.") from None
    except (OSError, SyntaxError, EOFError) as e:
        raise ValueError(f"The image file is corrupt or truncated ({e}).") from None
    finally:
        Image.MAX_IMAGE_PIXELS = old
    return to_rgb(img, max_pixels)


def _check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    w, h = size
    if w < 1 or h < 1:
        raise ValueError(f"Image has no pixels ({w}x{h}).")
    if w * h > max_pixels:
        raise ValueError(f"Image too large: {w}x{h} = {w * h:,} pixels, the limit is {max_pixels:,}.")


def to_rgb(img: Image.Image, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """First frame, EXIF orientation applied, any mode (RGBA, LA, P, CMYK, I;16, F, 1, ...) to 8-bit RGB."""
    if not isinstance(img, Image.Image):
        raise TypeError(f"Expected a PIL.Image.Image, got {type(img).__name__}; use occam.inputs.open_image "
                        "for paths and bytes.")
    _check_pixels(img.size, max_pixels)
    if getattr(img, "n_frames", 1) > 1:
        img.seek(0)
    img = ImageOps.exif_transpose(img) or img
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(arr.astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def describe_image(source, max_pixels: int = MAX_PIXELS) -> dict:
    """What a person should know about an image file before it is used: its size after conversion,
    the file's format and mode, how many frames it has (the first is used) and whether an EXIF
    rotation was applied. Raises the same ValueErrors as ``open_image`` for unusable files."""
    img = open_image(source, max_pixels)
    out = {"width": img.width, "height": img.height, "mode": "RGB", "format": None, "file_mode": None,
           "frames": 1, "exif_rotated": False}
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    if isinstance(source, (str, os.PathLike, io.IOBase)):
        if isinstance(source, io.IOBase):
            source.seek(0)
        with Image.open(source) as raw:
            out.update(format=raw.format, file_mode=raw.mode, frames=getattr(raw, "n_frames", 1),
                       exif_rotated=raw.getexif().get(0x0112, 1) not in (0, 1))
    elif isinstance(source, Image.Image):
        out.update(format=source.format, file_mode=source.mode, frames=getattr(source, "n_frames", 1))
    return out


def check_question(question) -> str:
    if not isinstance(question, str):
        raise TypeError(f"The question must be a string, got {type(question).__name__}.")
    q = " ".join(question.split())
    if not q:
        raise ValueError("The question is empty: type a question about the image or video.")
    if len(q) > MAX_QUESTION_CHARS:
        raise ValueError(f"The question is too long ({len(q)} characters); the limit is {MAX_QUESTION_CHARS}.")
    return q
