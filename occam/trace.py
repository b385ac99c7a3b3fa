"""The trace of one run (docs/method.md section 6): what the app draws and the benchmarks read.

Every per-token list is indexed by visual token (0..N-1, in the order the language model sees
them) and is JSON-serialisable (floats, ints, bools, None).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

import numpy as np


def _floats(t, digits: int = 6) -> list:
    """Tensor (1-D or 2-D) -> (nested) list of floats rounded to ``digits`` significant digits, NaN -> None.

    Vectorised: a Stage-II query-attention matrix has tens of thousands of entries on real models.
    """
    a = t.detach().double().cpu().numpy()
    finite = np.isfinite(a)
    safe = np.where(finite & (a != 0), np.abs(a), 1.0)
    scale = 10.0 ** (digits - 1 - np.floor(np.log10(safe)))
    rounded = np.where(finite, np.round(a * scale) / scale, 0.0)
    if finite.all():
        return rounded.tolist()
    rounded = rounded.astype(object)      # Python floats, and None where not finite
    rounded[~finite] = None
    return rounded.tolist()


@dataclass
class StageTrace:
    name: str                        # "stage1", "stage2", "fastv", "visionzip", "random"
    layer: int | None                # vision layer index (stage1) or decoder layer K (stage2/fastv)
    n_in: int                        # visual tokens entering the stage
    n_out: int                       # visual tokens leaving it
    candidates: list[int]            # visual token indices that competed on their score
    registers: list[int]             # visual token indices used as the reference
    register_source: str             # "explicit", "emergent", "sink", "explicit+sink", ... or "none"
    reference_kind: str              # "register", "mean" (asked or fallback) or "budget" (fixed-K methods)
    reference: float | None          # rho or rho_q
    threshold: float | None          # alpha / beta, or the lowest kept score for fixed budgets
    scores: list                     # per visual token: relative evidence s_j, None if not scored
    kept: list[bool]                 # per visual token: present after this stage
    rail: str | None = None          # "min" / "max" when a floor or cap decided the count
    register_attention: list | None = None  # per visual token: attention the registers pay to it
    merged_into: list | None = None  # visionzip: per token, the token it was merged into (or None)
    content_left: int | None = None  # kept tokens that are neither registers nor row-end tokens
    query_tokens: list[str] | None = None      # stage2 / fastv: the text of each query row
    query_attention: list | None = None        # per query row, per visual token: its attention at K (None: absent)
    frame_references: list | None = None       # video Stage I: per frame, its own reference rho (None: no token)
    frame_reference_kinds: list | None = None  # video Stage I: per frame, "register" or "mean" (fallback)
    repeats: list | None = None                # video Stage I (temporal_similarity): tokens dropped as repeats


@dataclass
class Trace:
    model: str
    family: str
    config: dict
    image_size: tuple[int, int]      # original (width, height) in pixels
    num_visual: int
    boxes: list                      # per visual token: [x0, y0, x1, y1] in ORIGINAL pixels, or None
    grid: list                       # per visual token: [tile, row, col] (tile 0 = base / only image)
    kinds: list[str]                 # per visual token: "patch", "register", "newline"
    stages: list[StageTrace] = field(default_factory=list)
    kept: list[bool] = field(default_factory=list)   # final decision per visual token
    counts: dict = field(default_factory=dict)
    # seconds: preprocess_s; vision_s (encoder + Stage-I statistics and selection); prefill_s (LM prefill to the
    # first logits, Stage-II scoring included); scoring_s (evidence only, Stage I + II: a part of vision_s and
    # prefill_s, not an extra bucket); decode_s; total_s; and decode_tokens_per_s
    timings: dict = field(default_factory=dict)
    flops: dict = field(default_factory=dict)
    kv_cache_bytes: int = 0                          # K+V bytes of the cache after the prefill
    sequence: dict = field(default_factory=dict)     # prefill lengths: before/after pruning, per layer
    flags: dict = field(default_factory=dict)        # {"no_content": stage} when a stage kept no content token
    # video only (None for an image): boxes are in each frame's original pixels, ``image_size`` is the frame size
    media: str = "image"                             # "image" or "video"
    frames: list | None = None                       # per visual token: its frame (Qwen: temporal patch) index
    timestamps: list | None = None                   # per visual token: its frame's time in seconds
    frame_times: list | None = None                  # per frame: time in seconds

    def add_frames(self, frames: list[int], frame_times: list[float]) -> None:
        """Record the frame of every token and the counts per frame: visual, after each stage, final."""
        self.media, self.frames = "video", list(frames)
        self.frame_times = [round(float(t), 6) for t in frame_times]
        self.timestamps = [self.frame_times[f] if f >= 0 else None for f in self.frames]

        def per_frame(kept: list[bool]) -> list[int]:
            counts = [0] * len(self.frame_times)
            for f, k in zip(self.frames, kept):
                counts[f] += bool(k)
            return counts

        from .methods import language_stages, vision_stages   # here: the methods import this module

        vision_side = next((s for s in self.stages if s.name in vision_stages()), None)
        language_side = next((s for s in self.stages if s.name in language_stages()), None)
        visual = per_frame([True] * len(self.frames))
        after1 = per_frame(vision_side.kept) if vision_side is not None else visual
        self.counts["per_frame"] = {"visual": visual, "after_stage1": after1,
                                    "after_stage2": per_frame(language_side.kept) if language_side else after1,
                                    "final": per_frame(self.kept)}

    def stage(self, name: str) -> StageTrace | None:
        return next((s for s in self.stages if s.name == name), None)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Trace":
        """A trace read back from its JSON form (``to_dict``), e.g. one a run folder saved."""
        names = {f.name for f in dataclasses.fields(StageTrace)}
        stages = [StageTrace(**{k: v for k, v in s.items() if k in names}) for s in d.get("stages") or []]
        fields = {f.name for f in dataclasses.fields(cls)} - {"stages"}
        return cls(**{k: v for k, v in d.items() if k in fields}, stages=stages)

    def to_json(self, **kw) -> str:
        return json.dumps(self.to_dict(), **kw)
