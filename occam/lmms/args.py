"""``--model_args`` of the lmms-eval model: which are OccamConfig knobs, and their values typed.

Every field of ``OccamConfig`` is a model arg of the same name, read from ``dataclasses.fields`` so that
new knobs work without code changes here; the remaining args configure loading, calibration and output.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from functools import cache

from occam import OccamConfig

#: model args that are not OccamConfig knobs (lmms-eval adds batch_size, max_batch_size and device itself)
RUN_ARGS = ("pretrained", "dtype", "device", "batch_size", "max_batch_size", "target_retention", "calib_task",
            "calib_split", "calib_n", "calib_seed", "calib_include_path", "trace_dir", "label", "on_unsupported")
_TRUE, _FALSE, _NONE = ("true", "yes", "on", "1"), ("false", "no", "off", "0"), ("none", "null", "")


@cache
def config_types() -> dict[str, tuple[type, ...]]:
    """OccamConfig field name -> the types its annotation accepts (NoneType included for ``X | None``)."""
    hints = typing.get_type_hints(OccamConfig)
    out = {}
    for f in dataclasses.fields(OccamConfig):
        hint = hints[f.name]
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        out[f.name] = typing.get_args(hint) if union else (hint,)
    return out


def _as(kind: type, value):
    """``value`` (as lmms-eval parsed it: bool, int, float or str) as ``kind``; ValueError if it is not one."""
    text = str(value).strip().lower()
    if kind is type(None):
        if value is None or (isinstance(value, str) and text in _NONE):
            return None
    elif kind is bool:
        if isinstance(value, bool) or text in _TRUE + _FALSE:
            return value if isinstance(value, bool) else text in _TRUE
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and text.lstrip("-").isdigit():
            return int(text)
    elif kind is float:
        if not isinstance(value, bool):
            return float(value)
    elif kind is str:
        return text if isinstance(value, bool) else str(value)
    raise ValueError(value)


def coerce(name: str, value):
    """The value of OccamConfig field ``name`` written as ``value`` in ``--model_args``."""
    kinds = config_types()[name]
    if type(value) in kinds:            # lmms-eval already parsed it to an accepted type
        return value
    for kind in sorted(kinds, key=lambda k: k is str):  # str last: it accepts anything
        try:
            return _as(kind, value)
        except (ValueError, TypeError):
            continue
    accepted = " or ".join("None" if k is type(None) else k.__name__ for k in kinds)
    raise ValueError(f"model arg {name}={value!r} is invalid: OccamConfig.{name} takes {accepted}.")


def split_args(args: dict) -> tuple[dict, dict]:
    """(OccamConfig knobs typed, the other model args); an unknown name raises ValueError listing the known ones."""
    knobs = config_types()
    unknown = sorted(set(args) - set(knobs) - set(RUN_ARGS))
    if unknown:
        raise ValueError(f"Unknown model arg(s) {', '.join(unknown)} for --model occam: accepted the OccamConfig "
                         f"fields ({', '.join(knobs)}) and {', '.join(RUN_ARGS)}.")
    return ({k: coerce(k, v) for k, v in args.items() if k in knobs},
            {k: v for k, v in args.items() if k not in knobs})


def parse(model_args: str | dict) -> dict:
    """``key=value,key=value`` (as in a results file's ``config.model_args``) -> dict of strings."""
    if isinstance(model_args, dict):
        return dict(model_args)
    pairs = (item.split("=", 1) for item in model_args.split(",") if item.strip())
    return {k.strip(): v.strip() for k, v in pairs}


def label(args: dict) -> str:
    """A row name for a run: ``label`` if given, else the method with its non-default knobs and target."""
    if args.get("label"):
        return str(args["label"])
    knobs, other = split_args(args)
    default = OccamConfig()
    method = knobs.pop("method", default.method)
    extra = [f"{k}={v}" for k, v in knobs.items() if v != getattr(default, k)]
    if other.get("target_retention") is not None:
        extra.append(f"target={other['target_retention']}")
    return " ".join([method, *extra])
