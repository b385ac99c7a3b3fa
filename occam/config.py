"""OccamConfig: every knob of one pruning run, validated on construction and frozen.

A config travels with each call (``vlm.generate(..., config=cfg)``); nothing about a run is
stored on the model, so one loaded model can serve concurrent calls with different configs.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from .methods import METHODS, Method
from .methods import get as get_method
REFERENCES = ("register", "mean")
KEEP_REGISTERS = ("explicit", "all", "none")


def _fail(name: str, value, accepted: str) -> None:
    raise ValueError(f"OccamConfig.{name}={value!r} is invalid: accepted {accepted}.")


@dataclass(frozen=True)
class OccamConfig:
    """Settings of one run. ``method`` picks OccamToken or a baseline; see docs/method.md.

    occam:     Stage I keeps token j iff s_j = e_j / rho >= alpha; Stage II iff a_j / rho_q >= beta.
    topk:      the same scores with a fixed budget ``retention`` (the paper's fixed-budget ablation).
    fastv:     at layer ``fastv_layer`` keep the top ``retention`` by the last token's attention.
    visionzip: dominant tokens by [CLS] attention + merged contextual tokens, budget ``retention``.
    random:    ``retention`` of the tokens, uniformly at random (``seed``).
    none:      the unmodified model.
    """

    method: str = "occam"
    alpha: float = 1.0              # Stage I threshold on relative evidence s_j = e_j / rho
    beta: float = 1.0               # Stage II threshold on s_j = a_j / rho_q
    stage1: bool = True
    stage2: bool = True
    stage2_layer: int | None = None  # K; None -> round(0.34 * num_layers)
    reference: str = "register"      # "register" or "mean" (ablation)
    keep_registers: str = "explicit"  # kept by force: "explicit" registers, "all" (+ emergent, sinks), "none"
    min_tokens: int | None = None    # floor on kept visual tokens (per stage), keeps the best s_j
    max_tokens: int | None = None    # cap on kept visual tokens (per stage)
    retention: float = 0.5           # budget of fixed-budget methods (topk, fastv, visionzip, random)
    stage_split: float = 0.5         # a budget t is split t^s (Stage I), the rest by Stage II (ours)
    fastv_layer: int = 2
    visionzip_contextual: float = 0.16  # share of the visionzip budget spent on merged tokens
    kappa: float = 4.0               # emergent register: norm >= kappa * median norm (ours)
    max_register_frac: float = 0.02  # at most ceil(2% of N) emergent registers / sinks (ours)
    sink_kappa: float = 10.0         # LM sink: max |h_j,d| >= sink_kappa * median over visual tokens (ours)
    attn_chunk: int = 256            # query rows per chunk when scoring (memory O(chunk x tokens))
    temporal_similarity: float | None = None  # video Stage I: drop a token whose key is this cosine-similar to the
                                              # same-position token of the previous frame (a repeat; ours). None: off
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.method, str) or self.method not in METHODS:
            _fail("method", self.method, "one of " + ", ".join(METHODS))
        if self.reference not in REFERENCES:
            _fail("reference", self.reference, "'register' or 'mean'")
        if self.keep_registers not in KEEP_REGISTERS:
            _fail("keep_registers", self.keep_registers, "'explicit', 'all' or 'none'")
        s = self.stage_split
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 <= s <= 1:
            _fail("stage_split", s, "a number in [0, 1]")
        for name in ("alpha", "beta", "kappa", "sink_kappa"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                _fail(name, v, "a finite number > 0")
        for name in ("retention", "visionzip_contextual", "max_register_frac"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 < v <= 1):
                _fail(name, v, "a number in (0, 1]")
        for name in ("min_tokens", "max_tokens"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                _fail(name, v, "None or an integer >= 1")
        if self.min_tokens and self.max_tokens and self.min_tokens > self.max_tokens:
            _fail("min_tokens", self.min_tokens, f"a value <= max_tokens ({self.max_tokens})")
        for name in ("stage2_layer", "fastv_layer"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                _fail(name, v, "None or an integer >= 0 (a decoder layer index)")
        t = self.temporal_similarity
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not -1 <= t <= 1):
            _fail("temporal_similarity", t, "None or a cosine similarity in [-1, 1]")
        for name in ("stage1", "stage2"):       # "false" is truthy: strings are parsed by from_strings, not here
            if not isinstance(getattr(self, name), bool):
                _fail(name, getattr(self, name), "True or False")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            _fail("seed", self.seed, "an integer")
        if isinstance(self.attn_chunk, bool) or not isinstance(self.attn_chunk, int) or self.attn_chunk < 1:
            _fail("attn_chunk", self.attn_chunk, "an integer >= 1")
        self.spec.validate(self)

    # -- derived views: the method decides ---------------------------------------------------
    @property
    def spec(self) -> Method:
        """The method module's object (``occam.methods``): what it needs, where it cuts, how it selects."""
        return get_method(self.method)

    @property
    def uses_stage2(self) -> bool:
        """Whether the run cuts inside the language model (Stage II, FastV)."""
        return self.spec.uses_stage2(self)

    @property
    def uses_vision_stats(self) -> bool:
        """Whether the run needs the scored vision layer's statistics (Stage II also reads its registers)."""
        return self.spec.needs_vision_stats(self)

    @property
    def needs_keys(self) -> bool:
        """Whether those statistics must include the scored layer's keys (VisionZip, temporal repeats)."""
        return self.spec.needs_keys(self)

    def stage1_share(self, target: float) -> float:
        """The retention the vision side aims at for an overall target (target ** stage_split for OccamToken)."""
        return self.spec.stage1_share(self, target)

    def decoder_layer(self, num_layers: int) -> int:
        """The decoder layer K where the method cuts inside the language model, validated against the depth."""
        name = self.spec.layer_field or "stage2_layer"
        k = getattr(self, name)
        if k is None:
            k = max(1, round(0.34 * num_layers))
        if not 0 <= k < num_layers:
            raise ValueError(f"OccamConfig.{name}={k} is out of range: accepted 0..{num_layers - 1} for this "
                             f"model ({num_layers} decoder layers).")
        return k

    def replace(self, **changes) -> "OccamConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_strings(cls, values: Mapping[str, Any], base: "OccamConfig | None" = None) -> "OccamConfig":
        """A config from UI text, JSON or command-line values, each typed by its field (``coerce_value``).

        The one string-to-config coercer (the app's settings, lmms-eval's ``--model_args``); the range
        rules stay ``__post_init__``'s. ``base``: the config the values change (default: the defaults)."""
        kinds = field_types(cls)
        unknown = sorted(set(values) - set(kinds))
        if unknown:
            raise ValueError(f"Unknown OccamConfig field(s) {', '.join(map(repr, unknown))}: accepted "
                             f"{', '.join(kinds)}.")
        typed = {k: coerce_value(k, v, kinds[k]) for k, v in values.items()}
        return base.replace(**typed) if base is not None else cls(**typed)


# -- text -> typed values: one set of words for "empty", "true" and "false" ----------------------------
EMPTY_WORDS = ("", "auto", "none", "null")     # an optional field's automatic choice (None)
TRUE_WORDS, FALSE_WORDS = ("true", "yes", "on", "1"), ("false", "no", "off", "0")
_NONE = type(None)
_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "text"}


@cache
def field_types(cls: type | None = None) -> dict[str, tuple[type, ...]]:
    """Field name -> the types its annotation accepts (NoneType last for ``X | None``), of OccamConfig or ``cls``."""
    cls = cls or OccamConfig
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        out[f.name] = tuple(sorted(typing.get_args(hint) if union else (hint,), key=lambda k: k is _NONE))
    return out


def _as(kind: type, v: Any) -> Any:
    """``v`` (a Python value or its text) as ``kind``; TypeError / ValueError if it is not one."""
    text = v.strip().lower() if isinstance(v, str) else None
    if kind is bool:
        if isinstance(v, bool):
            return v
        if isinstance(v, (int, float)) and v in (0, 1):
            return bool(v)
        if text in TRUE_WORDS + FALSE_WORDS:
            return text in TRUE_WORDS
    elif kind is str:
        if isinstance(v, str):
            return v.strip()
    elif not isinstance(v, bool) and isinstance(v, (int, float, str)):
        x = float(v)                           # ValueError for text that is no number
        if math.isfinite(x) and (kind is float or x == int(x)):
            return int(x) if kind is int else (v if isinstance(v, (int, float)) else x)  # numbers stay as typed
    raise ValueError(v)


def coerce_value(name: str, value: Any, kinds: tuple[type, ...], prefix: str = "OccamConfig.") -> Any:
    """``value`` typed as the first of ``kinds`` (bool, int, float, str, NoneType) that takes it.

    Empty text (``EMPTY_WORDS``) is None where None is accepted; no range checks here. ValueError
    ``"<prefix><name>=<value> is invalid: accepted ..."`` otherwise."""
    if _NONE in kinds and (value is None or (isinstance(value, str) and value.strip().lower() in EMPTY_WORDS)):
        return None
    for kind in kinds:
        if kind is not _NONE:
            try:
                return _as(kind, value)
            except (TypeError, ValueError):
                continue
    accepted = " or ".join(_WORDS.get(k, k.__name__) for k in kinds if k is not _NONE)
    if _NONE in kinds:
        accepted = "empty (auto) or " + accepted
    raise ValueError(f"{prefix}{name}={value!r} is invalid: accepted {accepted}.")
