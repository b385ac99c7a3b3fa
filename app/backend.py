"""The app's backend: settings -> OccamConfig, a thread-safe model cache, full-vs-pruned runs, sweeps.

Nothing here imports gradio. Every request carries its own ``Settings``; the only shared state is
the model cache (a loaded model serves concurrent requests with different configs, see occam.VLM).
Bad input raises ``ValueError`` (or ``ModelLoadError``) with a message a person can act on.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import occam
from occam.inputs import check_question, open_image

log = logging.getLogger("occam.app")

Progress = Callable[[float, str], None]
FIXED_BUDGET_METHODS = ("topk", "fastv", "visionzip", "random")
REFERENCES = ("register", "mean")
SWEEP_PARAMS = ("alpha=beta", "alpha", "beta", "target retention")
DEFAULT_SWEEP_VALUES = {"alpha=beta": "0.25, 0.5, 1, 1.5, 2, 4", "alpha": "0.25, 0.5, 1, 1.5, 2, 4",
                        "beta": "0.25, 0.5, 1, 1.5, 2, 4", "target retention": "0.05, 0.1, 0.25, 0.5, 0.75"}
MAX_SWEEP_VALUES = 12
MAX_NEW_TOKENS = 256


def default_model() -> str:
    """The model the app starts with: $OCCAM_APP_MODEL, else the offline toy model."""
    return os.environ.get("OCCAM_APP_MODEL", "").strip() or "toy"


def model_choices() -> list[str]:
    """Suggestions for the model box (any hub id or local folder may be typed in as well)."""
    from occam.archs import HUB_IDS, TINY_ARCH_NAMES
    out = [default_model(), "toy", *HUB_IDS.values(), *TINY_ARCH_NAMES]
    return list(dict.fromkeys(out))


def device() -> str:
    """Where models run: the GPU when there is one, the CPU otherwise."""
    try:
        import torch
        return "cuda" if torch.cuda.is_available() else "cpu"
    except Exception:  # pragma: no cover
        return "cpu"


# ---------------------------------------------------------------------------------------------
# settings
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    """What one request asks for. ``target_retention``: for occam, alpha/beta are calibrated on this
    input to reach it (overriding alpha and beta); for the fixed-budget methods it is their budget."""

    model: str = field(default_factory=default_model)
    method: str = "occam"
    alpha: float = 1.0
    beta: float = 1.0
    stage1: bool = True
    stage2: bool = True
    stage2_layer: int | None = None      # None: the library's default (about 1/3 of the depth)
    reference: str = "register"
    keep_registers: bool = True
    min_tokens: int | None = None
    max_tokens: int | None = None
    target_retention: float | None = None
    max_new_tokens: int = 24

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


SETTING_NAMES = tuple(f.name for f in dataclasses.fields(Settings))


def _bad(name: str, value: Any, accepted: str) -> ValueError:
    return ValueError(f"Setting {name}={value!r} is invalid: accepted {accepted}.")


def _is_blank(v: Any) -> bool:
    return v is None or (isinstance(v, str) and v.strip().lower() in ("", "auto", "none", "off"))


def _number(name: str, v: Any, accepted: str) -> float:
    if isinstance(v, bool):
        raise _bad(name, v, accepted)
    try:
        x = float(v.strip()) if isinstance(v, str) else float(v)
    except (TypeError, ValueError):
        raise _bad(name, v, accepted) from None
    if not math.isfinite(x):
        raise _bad(name, v, accepted)
    return x


def _integer(name: str, v: Any, accepted: str, optional: bool = True, minimum: int = 0) -> int | None:
    if optional and _is_blank(v):
        return None
    x = _number(name, v, accepted)
    if x != int(x) or x < minimum:
        raise _bad(name, v, accepted)
    return int(x)


def _flag(name: str, v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)) and v in (0, 1):
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in ("true", "false", "1", "0", "yes", "no", "on", "off"):
        return v.strip().lower() in ("true", "1", "yes", "on")
    raise _bad(name, v, "true or false")


def parse_settings(raw: Mapping[str, Any] | str | Settings | None = None) -> Settings:
    """Settings from a dict (UI values, API JSON) or a JSON string; missing keys take the defaults."""
    if isinstance(raw, Settings):
        return raw
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        raw = {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ValueError(f"Settings are not valid JSON ({e.msg} at position {e.pos}).") from None
    if not isinstance(raw, Mapping):
        raise ValueError(f"Settings must be a JSON object of name: value, got {type(raw).__name__}.")
    unknown = sorted(set(raw) - set(SETTING_NAMES))
    if unknown:
        raise ValueError(f"Unknown setting(s) {', '.join(map(repr, unknown))}: accepted {', '.join(SETTING_NAMES)}.")
    d = Settings()
    out: dict[str, Any] = {}
    model = raw.get("model")
    if model is None or (isinstance(model, str) and not model.strip()):
        model = d.model
    if not isinstance(model, str):
        raise _bad("model", model, "a model name: 'toy', a hub id or a local folder")
    out["model"] = model.strip()
    method = raw.get("method", d.method)
    if not isinstance(method, str) or method.strip() not in occam.METHODS:
        raise _bad("method", method, "one of " + ", ".join(occam.METHODS))
    out["method"] = method.strip()
    for name in ("alpha", "beta"):
        v = raw.get(name, getattr(d, name))
        x = _number(name, v, "a finite number > 0")
        if x <= 0:
            raise _bad(name, v, "a finite number > 0")
        out[name] = x
    for name in ("stage1", "stage2", "keep_registers"):
        out[name] = _flag(name, raw.get(name, getattr(d, name)))
    out["stage2_layer"] = _integer("stage2_layer", raw.get("stage2_layer"),
                                   "empty/'auto' or an integer >= 0 (a decoder layer index)")
    ref = raw.get("reference", d.reference)
    if ref not in REFERENCES:
        raise _bad("reference", ref, "'register' or 'mean'")
    out["reference"] = ref
    for name in ("min_tokens", "max_tokens"):
        v = raw.get(name)
        out[name] = None if _is_blank(v) or v == 0 else _integer(name, v, "empty or an integer >= 1", minimum=1)
    if out["min_tokens"] and out["max_tokens"] and out["min_tokens"] > out["max_tokens"]:
        raise _bad("min_tokens", out["min_tokens"], f"a value <= max_tokens ({out['max_tokens']})")
    tr = raw.get("target_retention")
    if _is_blank(tr) or tr == 0:
        out["target_retention"] = None
    else:
        x = _number("target_retention", tr, "empty or a retention in (0, 1] (e.g. 0.25 for 25%)")
        if not 0 < x <= 1:
            raise _bad("target_retention", tr, "empty or a retention in (0, 1] (e.g. 0.25 for 25%)")
        out["target_retention"] = x
    out["max_new_tokens"] = _integer("max_new_tokens", raw.get("max_new_tokens", d.max_new_tokens),
                                     f"an integer from 1 to {MAX_NEW_TOKENS}", optional=False, minimum=1)
    if out["max_new_tokens"] > MAX_NEW_TOKENS:
        raise _bad("max_new_tokens", out["max_new_tokens"], f"an integer from 1 to {MAX_NEW_TOKENS}")
    if out["method"] in ("occam", "topk") and not (out["stage1"] or out["stage2"]):
        raise ValueError(f"Method {out['method']!r} needs at least one of Stage I / Stage II switched on.")
    return Settings(**out)


def build_config(s: Settings) -> occam.OccamConfig:
    """The OccamConfig of the pruned run (before any calibration); its ValueErrors pass through."""
    retention = s.target_retention if s.target_retention and s.method in FIXED_BUDGET_METHODS else 0.5
    return occam.OccamConfig(method=s.method, alpha=s.alpha, beta=s.beta, stage1=s.stage1, stage2=s.stage2,
                             stage2_layer=s.stage2_layer, reference=s.reference, keep_registers=s.keep_registers,
                             min_tokens=s.min_tokens, max_tokens=s.max_tokens, retention=retention)


# ---------------------------------------------------------------------------------------------
# model cache
# ---------------------------------------------------------------------------------------------
class ModelLoadError(RuntimeError):
    """A model id that cannot be loaded; the message says why and which model is still served."""


class ModelCache:
    """Loaded models keyed by id; each id is loaded once even under concurrent requests (LRU eviction)."""

    def __init__(self, loader: Callable[..., Any] | None = None, max_models: int | None = None,
                 device: str | None = None, warmup: bool = True):
        self._loader = loader or occam.load
        self._warmup = warmup
        self._max = max(1, int(max_models or os.environ.get("OCCAM_APP_MAX_MODELS", 2)))
        self._device = device
        self._models: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()               # guards the dicts
        self._loading: dict[str, threading.Lock] = {}  # one lock per id being loaded

    @property
    def current(self) -> str | None:
        """The most recently used model id (the one the app keeps serving after a failed load)."""
        with self._lock:
            return next(reversed(self._models), None)

    def loaded(self) -> list[str]:
        with self._lock:
            return list(self._models)

    def get(self, name: str, progress: Progress | None = None):
        """The loaded model for ``name``, loading it on first use."""
        if not isinstance(name, str) or not name.strip():
            raise ModelLoadError("No model given: type 'toy', a hub id or a local model folder.")
        name = name.strip()
        with self._lock:
            if name in self._models:
                self._models.move_to_end(name)
                return self._models[name]
            lock = self._loading.setdefault(name, threading.Lock())
        with lock:
            with self._lock:
                if name in self._models:
                    self._models.move_to_end(name)
                    return self._models[name]
                current = next(reversed(self._models), None)
            if progress:
                progress(0.02, f"loading model {name} ...")
            dev = self._device or device()
            try:
                vlm = self._loader(name, device=None if dev == "cpu" else dev)
            except Exception as e:  # any failure: report it, keep serving what is loaded
                log.warning("could not load model %r: %s", name, e)
                keep = f" The app keeps serving {current!r}." if current else ""
                raise ModelLoadError(f"Could not load model {name!r}: {e}{keep}") from None
            finally:
                with self._lock:
                    self._loading.pop(name, None)
            if self._warmup:
                _warm_up(vlm)
            with self._lock:
                self._models[name] = vlm
                self._models.move_to_end(name)
                while len(self._models) > self._max:
                    self._models.popitem(last=False)
            return vlm


def _warm_up(vlm: Any) -> None:
    """One tiny run right after loading, so that the first request's timings are not a cold start."""
    try:
        from PIL import Image
        vlm.generate(Image.new("RGB", (64, 64), (128, 128, 128)), "warm up", max_new_tokens=1)
    except Exception as e:  # never fatal: the real request will report any real problem
        log.info("warm-up run failed: %s", e)


MODELS = ModelCache()


# ---------------------------------------------------------------------------------------------
# runs
# ---------------------------------------------------------------------------------------------
def _noop(_: float, __: str = "") -> None:
    return None


def load_inputs(image: Any, question: Any):
    """The image (path, bytes or PIL) as RGB and the normalised question; ValueError when unusable."""
    if image is None or (isinstance(image, str) and not image.strip()):
        raise ValueError("No image: upload an image (PNG, JPEG, WebP, ...) or pick an example.")
    img = open_image(image)
    if question is None:
        raise ValueError("The question is empty: type a question about the image.")
    if not isinstance(question, str):
        raise ValueError(f"The question must be text, got {type(question).__name__}.")
    return img, check_question(question)


def _summary(res) -> dict:
    t = res.trace
    return {"answer": res.text, "token_ids": list(res.token_ids), "visual_tokens": t.counts.get("visual"),
            "kept_tokens": t.counts.get("final"), "retention": t.counts.get("retention"),
            "prefill_s": t.timings.get("prefill_s"), "total_s": t.timings.get("total_s"),
            "trace": t.to_dict()}


@dataclass
class Comparison:
    """Full and pruned runs of one request (``image`` is the RGB original the boxes refer to)."""

    image: Any
    question: str
    settings: Settings
    config: occam.OccamConfig
    model: str
    family: str
    device: str
    full: Any       # occam.Result
    pruned: Any     # occam.Result

    def to_dict(self) -> dict:
        from .render import speedup
        return {"model": self.model, "family": self.family, "device": self.device, "question": self.question,
                "settings": self.settings.to_dict(), "config": self.config.to_dict(),
                "full": _summary(self.full), "pruned": _summary(self.pruned),
                "speedup": speedup(self.full.trace, self.pruned.trace)}


def run_compare(image: Any, question: Any, settings: Mapping | Settings | str | None = None,
                progress: Progress | None = None, cache: ModelCache | None = None) -> Comparison:
    """One request: the full model (method none) and the pruned run on the same input."""
    progress = progress or _noop
    cache = cache or MODELS
    s = parse_settings(settings)
    cfg = build_config(s)
    img, q = load_inputs(image, question)
    vlm = cache.get(s.model, progress)
    if s.method == "occam" and s.target_retention:
        progress(0.15, f"calibrating alpha/beta to {100 * s.target_retention:.0f}% retention ...")
        cfg = vlm.calibrate([(img, q)], s.target_retention, config=cfg)
    progress(0.3, "full model (method none) ...")
    full = vlm.generate(img, q, config=occam.OccamConfig(method="none"), max_new_tokens=s.max_new_tokens)
    progress(0.65, f"pruned run (method {s.method}) ...")
    pruned = vlm.generate(img, q, config=cfg, max_new_tokens=s.max_new_tokens)
    progress(0.95, "rendering ...")
    return Comparison(image=img, question=q, settings=s, config=cfg, model=s.model, family=vlm.family,
                      device=device(), full=full, pruned=pruned)


def parse_sweep_values(values: Any, param: str) -> list[float]:
    """Sweep values from "0.5, 1, 2" or a list; each checked for the swept parameter."""
    if param not in SWEEP_PARAMS:
        raise ValueError(f"Unknown sweep parameter {param!r}: accepted {', '.join(SWEEP_PARAMS)}.")
    if values is None or (isinstance(values, str) and not values.strip()):
        values = DEFAULT_SWEEP_VALUES[param]
    items = values.replace(";", ",").split(",") if isinstance(values, str) else list(values)
    accepted = "numbers in (0, 1]" if param == "target retention" else "numbers > 0"
    out = []
    for item in items:
        item = item.strip() if isinstance(item, str) else item
        if item == "":
            continue
        try:
            x = _number("sweep value", item, accepted)
        except ValueError:
            x = math.nan
        if not x > 0 or (param == "target retention" and x > 1):
            raise ValueError(f"Sweep value {item!r} is invalid for {param}: accepted {accepted}.")
        out.append(x)
    out = sorted(dict.fromkeys(out))
    if not out:
        raise ValueError("No sweep values: give a comma-separated list, e.g. 0.5, 1, 2.")
    if len(out) > MAX_SWEEP_VALUES:
        raise ValueError(f"Too many sweep values ({len(out)}); the limit is {MAX_SWEEP_VALUES}.")
    return out


def run_sweep(image: Any, question: Any, settings: Mapping | Settings | str | None, param: str, values: Any,
              progress: Progress | None = None, cache: ModelCache | None = None) -> dict:
    """Answers and kept-token counts of the pruned run across a range of alpha / beta / retention."""
    progress = progress or _noop
    cache = cache or MODELS
    s = parse_settings(settings)
    vals = parse_sweep_values(values, param)
    if s.method == "none":
        raise ValueError("Method 'none' does not prune: pick occam or a baseline to sweep a budget.")
    if param != "target retention" and s.method != "occam":
        raise ValueError(f"Sweeping {param} needs method 'occam' ({s.method!r} has a fixed budget): "
                         "sweep 'target retention' instead.")
    base = build_config(s)
    img, q = load_inputs(image, question)
    vlm = cache.get(s.model, progress)
    progress(0.05, "full model (method none) ...")
    full = vlm.generate(img, q, config=occam.OccamConfig(method="none"), max_new_tokens=s.max_new_tokens)
    rows = []
    for i, v in enumerate(vals):
        progress(0.1 + 0.85 * i / len(vals), f"{param} = {v:g} ({i + 1}/{len(vals)}) ...")
        if param == "alpha=beta":
            cfg = base.replace(alpha=v, beta=v)
        elif param in ("alpha", "beta"):
            cfg = base.replace(**{param: v})
        elif s.method == "occam":
            cfg = vlm.calibrate([(img, q)], v, config=base)
        else:
            cfg = base.replace(retention=v)
        res = vlm.generate(img, q, config=cfg, max_new_tokens=s.max_new_tokens)
        c = res.trace.counts
        rows.append({"value": v, "alpha": cfg.alpha if s.method == "occam" else None,
                     "beta": cfg.beta if s.method == "occam" else None, "kept": c["final"],
                     "retention": c["retention"], "answer": res.text, "same_as_full": res.text == full.text,
                     "prefill_s": res.trace.timings.get("prefill_s")})
    progress(1.0, "done")
    return {"param": param, "method": s.method, "model": s.model, "question": q,
            "full": {"answer": full.text, "visual_tokens": full.trace.counts["visual"]}, "rows": rows}
