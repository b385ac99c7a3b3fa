"""Video input: frames sampled uniformly over a clip with OpenCV, their timestamps kept. No Hugging Face here.

A video reaches ``vlm.generate`` as one of:

* an :class:`Video` (``occam.Video``), built by :func:`read_video` (a file) or :meth:`Video.from_frames`;
* a path (``str`` / ``os.PathLike``) whose extension is one of :data:`VIDEO_EXTENSIONS`;
* a list or tuple of frames (PIL images or H x W x 3 uint8 arrays), or one T x H x W x 3 uint8 array.

Anything else is an image. A path or a frame list is sampled the way the model's processor asks
(``Adapter.video_sampling``: a frame count for Video-LLaVA, frames per second for Qwen); to choose the
count yourself, build the :class:`Video` first (``occam.read_video(path, num_frames=16)``).

Every rejection is a ``ValueError`` that says what was wrong and what to do: file not found, not a video,
a codec this OpenCV build cannot decode, a corrupt or truncated file, zero frames, a clip longer than
:data:`MAX_DURATION_S`, frames larger than :data:`MAX_FRAME_PIXELS`, too many frames.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .inputs import to_rgb

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp", ".ogv")
MAX_DURATION_S = 600.0             # clips longer than 10 minutes are refused
MAX_FRAME_PIXELS = 3840 * 2160     # larger frames (beyond 4K UHD) are refused
MAX_FRAMES = 256                   # sampled frames per video (a frame list longer than this must be sampled)
MAX_DECODED_FRAMES = 100_000       # frames decoded at most when the container does not say how many it has
_READABLE = "MP4 / MOV (H.264, MPEG-4), AVI (MJPG, XVID, MPEG-4), MKV, WebM"


@dataclass(frozen=True)
class Video:
    """Frames of one clip (RGB PIL images of one size) and the time of each, in seconds from the clip start."""
    frames: tuple
    timestamps: tuple
    fps: float | None = None             # the source's frame rate (None: unknown)
    duration: float | None = None        # the source's duration in seconds (None: unknown)
    source_frames: int | None = None     # frames in the source
    indices: tuple | None = None         # source frame index of each sampled frame
    source: str | None = None            # the file it was read from

    def __post_init__(self) -> None:
        if len(self.frames) == 0:
            raise ValueError("The video has zero frames: nothing to look at. Give at least one frame.")
        if len(self.frames) > MAX_FRAMES:
            raise ValueError(f"The video has {len(self.frames)} frames; the limit is {MAX_FRAMES}. Sample fewer "
                             "(Video.from_frames(..., num_frames=8) or read_video(path, num_frames=8)).")
        if len(self.timestamps) != len(self.frames):
            raise ValueError(f"{len(self.timestamps)} timestamps for {len(self.frames)} frames.")
        if any(not isinstance(f, Image.Image) or f.mode != "RGB" for f in self.frames):
            raise TypeError("Video.frames must be RGB PIL images; use Video.from_frames for arrays or other modes.")
        sizes = {f.size for f in self.frames}
        if len(sizes) > 1:
            raise ValueError(f"All frames of a video must have one size, got {sorted(sizes)}.")
        ts = [float(t) for t in self.timestamps]
        if any(not math.isfinite(t) for t in ts) or any(b < a for a, b in zip(ts, ts[1:])):
            raise ValueError("Frame timestamps must be finite and non-decreasing (seconds from the clip start).")

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of every frame, in pixels."""
        return self.frames[0].size

    def __len__(self) -> int:
        return len(self.frames)

    @classmethod
    def from_frames(cls, frames, fps: float | None = None, timestamps=None, num_frames: int | None = None,
                    max_frame_pixels: int = MAX_FRAME_PIXELS) -> "Video":
        """A clip from frames: PIL images or H x W x 3 uint8 arrays (a list), or a T x H x W x 3 uint8 array.

        ``timestamps`` (seconds) default to i / ``fps``, or to i (one frame per second) without ``fps``.
        ``num_frames``: sample that many frames uniformly (over the whole list) first.
        """
        frames = _frame_list(frames)
        if not frames:
            raise ValueError("The video has zero frames: nothing to look at. Give at least one frame.")
        if fps is not None and (isinstance(fps, bool) or not isinstance(fps, (int, float)) or not fps > 0):
            raise ValueError(f"fps={fps!r} is invalid: accepted a number > 0 (frames per second) or None.")
        if timestamps is None:
            timestamps = [i / fps if fps else float(i) for i in range(len(frames))]
        timestamps = list(timestamps)
        if len(timestamps) != len(frames):
            raise ValueError(f"{len(timestamps)} timestamps for {len(frames)} frames.")
        index = list(range(len(frames)))
        if num_frames is not None:
            index = sample_indices(len(frames), _check_count(num_frames))
        imgs = tuple(_to_frame(frames[i], max_frame_pixels) for i in index)
        duration = len(frames) / fps if fps else None
        return cls(imgs, tuple(float(timestamps[i]) for i in index), fps=fps, duration=duration,
                   source_frames=len(frames), indices=tuple(index))

    def sample(self, num_frames: int) -> "Video":
        """``num_frames`` of these frames, uniformly over the clip (all of them if there are fewer)."""
        index = sample_indices(len(self), _check_count(num_frames))
        src = self.indices or tuple(range(len(self)))
        return Video(tuple(self.frames[i] for i in index), tuple(self.timestamps[i] for i in index), self.fps,
                     self.duration, self.source_frames, tuple(src[i] for i in index), self.source)


def _check_count(n) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"num_frames={n!r} is invalid: accepted an integer >= 1.")
    return n


def sample_indices(total: int, num_frames: int) -> list[int]:
    """``num_frames`` indices spread uniformly over 0..total-1, first and last included (Video-LLaVA's
    ``np.linspace(0, total - 1, n).astype(int)``); every index once when total <= num_frames."""
    if total <= num_frames:
        return list(range(total))
    return [int(i) for i in np.linspace(0, total - 1, num_frames).astype(int)]


def frames_for(duration: float | None, total: int, num_frames: int | None = None, fps: float | None = None,
               min_frames: int = 1, max_frames: int = 32, multiple: int = 1) -> int:
    """How many frames to sample: ``num_frames``, or ``fps`` frames per second of the clip clamped to
    [min_frames, max_frames]; rounded down to a ``multiple`` (Qwen merges frame pairs), never above ``total``."""
    if num_frames is None:
        if fps is None or duration is None:
            num_frames = max_frames if fps is not None else min_frames
        else:
            num_frames = round(duration * fps)
        num_frames = min(max(num_frames, min_frames), max_frames)
    if num_frames >= total:
        return total                    # every frame (a processor pads a partial temporal patch)
    return max(num_frames // multiple * multiple, min(multiple, total))


def is_video_path(x) -> bool:
    return isinstance(x, (str, os.PathLike)) and os.fspath(x).lower().endswith(VIDEO_EXTENSIONS)


def is_video_input(x) -> bool:
    """Whether ``vlm.generate`` treats ``x`` as a video (see the module docstring)."""
    if isinstance(x, Video) or is_video_path(x):
        return True
    if isinstance(x, np.ndarray):
        return x.ndim == 4
    return isinstance(x, (list, tuple))


def as_video(x, *, num_frames: int | None = None, fps: float | None = None, min_frames: int = 1,
             max_frames: int = 32, multiple: int = 1) -> Video:
    """A :class:`Video` from any accepted video input, sampled as asked (a ``Video`` is taken as it is)."""
    if isinstance(x, Video):
        return x
    if is_video_path(x):
        return read_video(x, num_frames=num_frames, fps=fps, min_frames=min_frames, max_frames=max_frames,
                          multiple=multiple)
    frames = _frame_list(x)
    if not frames:
        raise ValueError("The video has zero frames: nothing to look at. Give at least one frame.")
    n = frames_for(None, len(frames), num_frames if num_frames is not None else max_frames, None, min_frames,
                   max_frames, multiple)
    return Video.from_frames(frames, num_frames=n)


def _frame_list(frames) -> list:
    if isinstance(frames, np.ndarray):
        if frames.ndim != 4:
            raise ValueError(f"A video array must be T x H x W x 3, got shape {frames.shape}.")
        return list(frames)
    if not isinstance(frames, (list, tuple)):
        raise TypeError(f"Video frames must be a list of PIL images / arrays or a T x H x W x 3 array, "
                        f"got {type(frames).__name__}.")
    return list(frames)


def _to_frame(f, max_frame_pixels: int) -> Image.Image:
    if isinstance(f, np.ndarray):
        if f.ndim != 3 or f.shape[2] not in (3, 4) or f.dtype != np.uint8:
            raise ValueError(f"A frame array must be H x W x 3 uint8 (RGB), got shape {f.shape} dtype {f.dtype}.")
        f = Image.fromarray(f[..., :3])
    if not isinstance(f, Image.Image):
        raise TypeError(f"A video frame must be a PIL image or an H x W x 3 uint8 array, got {type(f).__name__}.")
    w, h = f.size
    if w * h > max_frame_pixels:
        raise ValueError(f"Video frames too large: {w}x{h} = {w * h:,} pixels, the limit is {max_frame_pixels:,} "
                         "(4K UHD). Downscale the clip.")
    return to_rgb(f)


# -- reading files -------------------------------------------------------------------------------------------
def read_video(path, num_frames: int | None = 8, *, fps: float | None = None, min_frames: int = 1,
               max_frames: int = 32, multiple: int = 1, max_duration_s: float = MAX_DURATION_S,
               max_frame_pixels: int = MAX_FRAME_PIXELS) -> Video:
    """Decode a video file with OpenCV and sample frames uniformly over the whole clip.

    ``num_frames`` frames (Video-LLaVA's way), or with ``num_frames=None`` and ``fps``, ``fps`` frames per
    second of the clip clamped to [min_frames, max_frames] (Qwen's way), rounded down to a ``multiple``.
    Timestamps are source frame index / the container's frame rate. The file is decoded once, in order
    (seeking is unreliable in some codecs), keeping only the sampled frames.
    """
    import cv2

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"Video file not found: {path}")
    if os.path.getsize(path) == 0:
        raise ValueError(f"The video file {os.path.basename(path)} is empty (0 bytes).")
    cap = cv2.VideoCapture(path)
    try:
        if not cap.isOpened():
            raise ValueError(_unreadable(path))
        width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if width * height > max_frame_pixels:
            raise ValueError(f"Video frames too large: {width}x{height} = {width * height:,} pixels, the limit is "
                             f"{max_frame_pixels:,} (4K UHD). Downscale the clip.")
        rate = cap.get(cv2.CAP_PROP_FPS)
        rate = float(rate) if rate and math.isfinite(rate) and rate > 0 else None
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        count = count if count > 0 else None
        duration = count / rate if count and rate else None
        if duration is not None and duration > max_duration_s:
            raise ValueError(f"The video is too long: {duration:.1f} s, the limit is {max_duration_s:g} s. "
                             "Trim it to the part you want to ask about.")
        if count is None:   # the container does not say: count by decoding (bounded)
            count = _count_frames(cap, rate, max_duration_s)
            cap.release()
            cap = cv2.VideoCapture(path)
            duration = count / rate if rate else None
        n = frames_for(duration, count, num_frames, fps, min_frames, max_frames, multiple)
        wanted = sample_indices(count, n)
        got, decoded = _decode(cap, wanted, count)
    finally:
        cap.release()
    name = os.path.basename(path)
    if decoded == 0:
        raise ValueError(f"No frame of {name} could be decoded: the file is corrupt or truncated, or has "
                         "zero frames.")
    if decoded < count:
        raise ValueError(f"The video {name} is truncated or corrupt: only {decoded} of the {count} frames its "
                         "header announces could be decoded. Re-export or re-download the file.")
    frames = tuple(_to_frame(Image.fromarray(cv2.cvtColor(got[i], cv2.COLOR_BGR2RGB)), max_frame_pixels)
                   for i in wanted)
    times = tuple(i / rate if rate else float(i) for i in wanted)
    return Video(frames, times, fps=rate, duration=duration, source_frames=count, indices=tuple(wanted), source=path)


def _count_frames(cap, rate: float | None, max_duration_s: float) -> int:
    limit = min(MAX_DECODED_FRAMES, int(max_duration_s * rate) + 1 if rate else MAX_DECODED_FRAMES)
    n = 0
    while cap.grab():
        n += 1
        if n > limit:
            raise ValueError(f"The video is too long: over {limit} frames (limit {max_duration_s:g} s). "
                             "Trim it to the part you want to ask about.")
    if n == 0:
        raise ValueError("The video has zero decodable frames: the file is empty, corrupt or truncated.")
    return n


def _decode(cap, wanted: list[int], count: int) -> tuple[dict, int]:
    """Grab frames 0..count-1 in order, retrieving only the ``wanted`` ones; (frames by index, frames decoded)."""
    want = set(wanted)
    got, i = {}, 0
    while i < count and cap.grab():
        if i in want:
            ok, frame = cap.retrieve()
            if not ok or frame is None:
                break
            got[i] = frame
        i += 1
    return got, i


_MAGIC = {b"RIFF": "AVI", b"\x1aE\xdf\xa3": "Matroska / WebM", b"OggS": "Ogg"}


def _container(head: bytes) -> str | None:
    if head[4:8] == b"ftyp":
        return "MP4 / MOV"
    for magic, name in _MAGIC.items():
        if head.startswith(magic):
            return name
    return None


def _unreadable(path: str) -> str:
    """Why OpenCV could not open ``path``, as precisely as the bytes tell."""
    with open(path, "rb") as f:
        head = f.read(4096)
    name = os.path.basename(path)
    kind = _container(head)
    if kind == "AVI":
        i = head.find(b"vids")
        fourcc = head[i + 4:i + 8].decode("latin-1") if i >= 0 else ""
        if fourcc and fourcc.strip("\x00 ") and fourcc.upper() not in _AVI_DECODABLE:
            return (f"Unsupported video codec {fourcc!r} in {name} (an AVI file): this OpenCV / FFmpeg build cannot "
                    f"decode it. Re-encode the clip (accepted: {_READABLE}).")
        return f"The video {name} (AVI) cannot be decoded: the file is corrupt or truncated."
    if kind is not None:
        return (f"The video {name} ({kind}) cannot be opened: the file is corrupt or truncated (e.g. an "
                f"interrupted download), or its codec is not supported here (accepted: {_READABLE}).")
    return f"{name} is not a video file OpenCV can read (accepted: {_READABLE})."


_AVI_DECODABLE = {"MJPG", "XVID", "DIVX", "DX50", "FMP4", "MP4V", "H264", "X264", "AVC1", "FFV1", "IYUV", "I420",
                  "MP42", "MP43", "WMV2", "HFYU", "DIB ", "RAW "}
