"""``--model_args`` of the lmms-eval model: which are OccamConfig knobs, and their values typed.

Every field of ``OccamConfig`` is a model arg of the same name, read from ``dataclasses.fields`` so that
new knobs work without code changes here; the remaining args configure loading, calibration and output.
"""
from __future__ import annotations

from occam import OccamConfig
from occam.config import coerce_value, field_types

#: model args that are not OccamConfig knobs (lmms-eval adds batch_size, max_batch_size and device itself)
RUN_ARGS = ("pretrained", "dtype", "device", "batch_size", "max_batch_size", "target_retention", "calib_task",
            "calib_split", "calib_n", "calib_seed", "calib_include_path", "trace_dir", "label", "on_unsupported")
config_types = field_types    # OccamConfig field -> the types it accepts


def coerce(name: str, value):
    """The value of OccamConfig field ``name`` written as ``value`` in ``--model_args`` (occam.config's coercer)."""
    return coerce_value(name, value, field_types()[name], prefix="model arg ")


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
