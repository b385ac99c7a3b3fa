"""The app's backend: settings -> OccamConfig, a thread-safe model cache, measured runs, comparisons.

Nothing here imports gradio. Every request carries its own ``Settings``; the only shared state is
the model cache (a loaded model serves concurrent requests with different configs, see occam.VLM)
and each loaded model's batcher (app/batcher.py: concurrent runs of a model answered together).
Bad input raises ``ValueError`` (or ``ModelLoadError``) with a message a person can act on.

Settings = the app's own few settings (``APP_SETTINGS``: model, target retention, where the
thresholds come from, max new tokens, timing repeats) + every field of ``occam.OccamConfig``, derived
from the dataclass: a new config field becomes a setting (and a UI control) by itself. Here values
are only COERCED (UI strings / JSON to the field's type, empty -> None for optional fields);
``OccamConfig`` is the one validator of the knobs' rules.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import statistics
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import occam
from occam import budget
from occam import methods as registry
from occam import recommended as recommended_mod
from occam.config import coerce_value, field_types
from occam.inputs import check_question, open_image

from . import public
from .batcher import batched, request, together
from .render.traces import token_view

log = logging.getLogger("occam.app")

Progress = Callable[[float, str], None]
FIXED_BUDGET_METHODS = registry.FIXED_BUDGET_METHODS
COMPARED_METHODS = registry.PRUNING_METHODS         # the method comparison: every method that prunes
FULL = occam.OccamConfig(method=registry.FULL)      # the unmodified model every pruned run is compared with
THRESHOLD_MODES = ("recommended", "this input", "manual")
THRESHOLD_MODE_HELP = {
    "recommended": "the model's recommended α/β for the target retention (average over a calibration set)",
    "this input": "α/β calibrated on this image and question to reach the target retention exactly",
    "manual": "α/β as typed in the advanced knobs (the target retention is then only the baselines' budget)",
}
SWEEP_PARAMS = ("alpha=beta", "alpha", "beta", "target retention")
DEFAULT_SWEEP_VALUES = {"alpha=beta": "0.25, 0.5, 1, 1.5, 2, 4", "alpha": "0.25, 0.5, 1, 1.5, 2, 4",
                        "beta": "0.25, 0.5, 1, 1.5, 2, 4", "target retention": "0.05, 0.1, 0.25, 0.5, 0.75"}
MAX_SWEEP_VALUES = 12
MAX_NEW_TOKENS = 256
MAX_REPEATS = 10
DEFAULT_TARGET = 0.25
# OccamConfig fields the app sets itself: ``retention`` (the fixed-budget methods' budget) is the target retention
MANAGED_FIELDS = ("retention",)


def default_model() -> str:
    """The model the app starts with: $OCCAM_APP_MODEL, else the offline toy model."""
    return public.served_model()


def model_choices() -> list[str]:
    """Suggestions for the model box (locally any hub id or model folder may be typed in as well; in public
    mode the allow-list, and nothing else)."""
    if public.public_mode():
        return list(public.allowed_models())
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
# settings: the app's few + OccamConfig's fields
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Knob:
    """One setting as the app sees it: its name, the types it accepts (NoneType: empty means "auto"), default."""

    name: str
    types: tuple[type, ...]
    default: Any
    app: bool = False    # an app setting, not an OccamConfig field

    @property
    def kind(self) -> str:
        """"bool", "int", "float" or "str": what the UI control edits."""
        return self.types[0].__name__

    @property
    def optional(self) -> bool:
        """Whether empty means None (the config's automatic choice)."""
        return type(None) in self.types


def config_knobs() -> tuple[Knob, ...]:
    """Every OccamConfig field the app exposes (all but ``MANAGED_FIELDS``), in the dataclass's order."""
    defaults = occam.OccamConfig()
    return tuple(Knob(name, kinds, getattr(defaults, name)) for name, kinds in field_types(occam.OccamConfig).items()
                 if name not in MANAGED_FIELDS)


APP_SETTINGS = (
    Knob("model", (str,), None, app=True),            # default: default_model()
    Knob("target_retention", (float,), DEFAULT_TARGET, app=True),
    Knob("thresholds", (str,), "recommended", app=True),
    Knob("max_new_tokens", (int,), 24, app=True),
    Knob("repeats", (int,), 3, app=True),
)


APP_NAMES = tuple(k.name for k in APP_SETTINGS)


def knobs() -> tuple[Knob, ...]:
    """All settings: the app's, then OccamConfig's."""
    return APP_SETTINGS + config_knobs()


def setting_names() -> tuple[str, ...]:
    return tuple(k.name for k in knobs())


@dataclass(frozen=True)
class Settings:
    """What one request asks for: the app's settings and the base ``OccamConfig`` (validated).

    ``target_retention``: the budget. For occam, ``thresholds`` says where alpha / beta come from
    (``THRESHOLD_MODE_HELP``); for the fixed-budget methods it is their ``retention``.
    """

    model: str = field(default_factory=default_model)
    target_retention: float = DEFAULT_TARGET
    thresholds: str = "recommended"
    max_new_tokens: int = 24
    repeats: int = 3
    config: occam.OccamConfig = field(default_factory=occam.OccamConfig)

    @property
    def method(self) -> str:
        return self.config.method

    def to_dict(self) -> dict:
        knobs_ = {k: v for k, v in self.config.to_dict().items() if k not in MANAGED_FIELDS}
        return {"model": self.model, "target_retention": self.target_retention, "thresholds": self.thresholds,
                "max_new_tokens": self.max_new_tokens, "repeats": self.repeats, **knobs_}


def _bad(name: str, value: Any, accepted: str) -> ValueError:
    return ValueError(f"Setting {name}={value!r} is invalid: accepted {accepted}.")


def coerce(knob: Knob, v: Any) -> Any:
    """A UI / JSON value as the knob's type (occam.config's one coercer; the ranges are OccamConfig's)."""
    return coerce_value(knob.name, v, knob.types, prefix="Setting ")


def _check_app(name: str, v: Any) -> None:
    """The rules of the app's own settings (the knobs' rules are OccamConfig's)."""
    if name == "target_retention" and not 0 < v <= 1:
        raise _bad(name, v, "a retention in (0, 1] (e.g. 0.25 for 25%)")
    if name == "thresholds" and v not in THRESHOLD_MODES:
        raise _bad(name, v, "one of " + ", ".join(map(repr, THRESHOLD_MODES)))
    if name == "max_new_tokens" and not 1 <= v <= MAX_NEW_TOKENS:
        raise _bad(name, v, f"an integer from 1 to {MAX_NEW_TOKENS}")
    if name == "repeats" and not 1 <= v <= MAX_REPEATS:
        raise _bad(name, v, f"an integer from 1 to {MAX_REPEATS} (timed repeats after one warm-up)")


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
    names = setting_names()
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise ValueError(f"Unknown setting(s) {', '.join(map(repr, unknown))}: accepted {', '.join(names)}.")
    app: dict[str, Any] = {}
    for knob in APP_SETTINGS:
        v = raw.get(knob.name)
        if v is None or (knob.name == "model" and isinstance(v, str) and not v.strip()):
            continue  # an app setting left empty: its default
        if knob.name == "model" and not isinstance(v, str):
            raise _bad("model", v, "a model name: 'toy', a hub id or a local folder")
        app[knob.name] = coerce(knob, v)
        _check_app(knob.name, app[knob.name])
    # the one string-to-config coercer and the one validator of the knobs (ValueError names the rule)
    cfg = occam.OccamConfig.from_strings({k: v for k, v in raw.items() if k not in APP_NAMES})
    return Settings(**app, config=cfg)


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

    def peek(self, name: str):
        """The loaded model for ``name`` if it is loaded, else None (never loads)."""
        with self._lock:
            return self._models.get(name)

    def get(self, name: str, progress: Progress | None = None):
        """The loaded model for ``name``, loading it on first use (in public mode: allow-listed names only)."""
        if not isinstance(name, str) or not name.strip():
            raise ModelLoadError("No model given: type 'toy', a hub id or a local model folder.")
        name = model_key(name)
        if public.public_mode() and name not in map(model_key, public.allowed_models()):
            raise ModelLoadError(public.refused_model(name))
        with self._lock:
            if name in self._models:
                self._models.move_to_end(name)
                return self._models[name]
            lock = self._loading.setdefault(name, threading.Lock())
        with lock:   # held until the model is stored: a second request for it waits and then finds it
            try:
                with self._lock:
                    if name in self._models:
                        self._models.move_to_end(name)
                        return self._models[name]
                    current = next(reversed(self._models), None)
                return self._load(name, current, progress)
            finally:
                with self._lock:
                    self._loading.pop(name, None)

    def _load(self, name: str, current: str | None, progress: Progress | None):
        if progress:
            progress(0.02, f"loading model {name} ...")
        dev = self._device or device()
        try:
            vlm = self._loader(name, device=None if dev == "cpu" else dev, **load_options())
        except Exception as e:  # any failure: report it, keep serving what is loaded
            log.warning("could not load model %r: %s", name, e)
            keep = f" The app keeps serving {current!r}." if current else ""
            raise ModelLoadError(f"Could not load model {name!r}: {e}{keep}") from None
        if self._warmup:
            _warm_up(vlm)
        with self._lock:
            self._models[name] = vlm
            self._models.move_to_end(name)
            # the served model is never evicted in public mode: no visitor can push it out
            keep = {default_model()} if public.public_mode() else set()
            for old in [k for k in self._models if k not in keep and k != name][:max(0, len(self._models) - self._max)]:
                self._models.pop(old)
        return vlm


def model_key(name: str) -> str:
    """One key per model: the stripped name; for an existing local folder its real path (so that other
    spellings of the same folder do not load it again)."""
    name = name.strip()
    path = os.path.expanduser(name)
    if os.path.isdir(path) and (os.sep in name or name.startswith((".", "~"))):
        return os.path.realpath(path)
    return name


def load_options() -> dict:
    """How models are loaded for the app: on ZeroGPU every GPU call runs in a fresh process, so no CUDA
    graphs (they would be captured again on every call); elsewhere occam's "auto" (graphs on a GPU)."""
    return {"prefill": "eager", "decode": "eager"} if public.zerogpu() else {}


def _warm_up(vlm: Any) -> None:
    """One tiny run right after loading, so that the first request does not pay for lazy initialisation."""
    try:
        from PIL import Image
        vlm.generate(Image.new("RGB", (64, 64), (128, 128, 128)), "warm up", max_new_tokens=1)
    except Exception as e:  # never fatal: the real request will report any real problem
        log.info("warm-up run failed: %s", e)


MODELS = ModelCache()


# ---------------------------------------------------------------------------------------------
# inputs, budgets, answers
# ---------------------------------------------------------------------------------------------
def _noop(_: float, __: str = "") -> None:
    return None


def load_inputs(image: Any, question: Any):
    """The image (path, bytes or PIL) as RGB and the normalised question; ValueError when unusable."""
    if image is None or (isinstance(image, str) and not image.strip()):
        raise ValueError("No image: upload an image (PNG, JPEG, WebP, ...) or pick an example.")
    img = open_image(image)
    if question is None:
        raise ValueError("The question is empty: type a question about the image or video.")
    if not isinstance(question, str):
        raise ValueError(f"The question must be text, got {type(question).__name__}.")
    return img, check_question(question)


def check_reference(reference: Any) -> str | None:
    """A reference answer typed by a person (or shipped with an example): None when empty."""
    if reference is None:
        return None
    if not isinstance(reference, str):
        raise ValueError(f"The reference answer must be text, got {type(reference).__name__}.")
    ref = " ".join(reference.split())
    if len(ref) > 200:
        raise ValueError(f"The reference answer is too long ({len(ref)} characters); the limit is 200.")
    return ref or None


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", (text or "").lower())


def same_answer(a: str, b: str) -> bool:
    """Two answers agree when their words are equal (case, punctuation and spacing ignored)."""
    return _words(a) == _words(b)


def matches_reference(answer: str, reference: str | None) -> bool | None:
    """True when the answer's words equal the reference's, or contain them as a whole-word run
    ("There are four circles." matches "four"); None without a reference."""
    if not reference:
        return None
    a, r = _words(answer), _words(reference)
    if not r:
        return None
    return any(a[i:i + len(r)] == r for i in range(len(a) - len(r) + 1))


def agreement(full_text: str, pruned_text: str, reference: str | None) -> dict:
    return {"same": same_answer(full_text, pruned_text), "reference": reference,
            "full_correct": matches_reference(full_text, reference),
            "pruned_correct": matches_reference(pruned_text, reference),
            "rule": "answers agree when their words are equal (case and punctuation ignored); an answer "
                    "matches the reference when it contains the reference's words as a whole-word run"}


def _changed_knobs(cfg: occam.OccamConfig, base: Mapping) -> list[str]:
    """Knobs (other than thresholds, method, budget, seed, chunking) that differ from ``base``."""
    # knobs an occam run at given alpha / beta does not read (stage_split only splits a target in calibration)
    skip = {"alpha", "beta", "method", "retention", "seed", "attn_chunk", "fastv_layer", "visionzip_contextual",
            "stage_split"}
    usable = recommended_mod.usable_knobs(dict(base))
    return [k for k, v in usable.items() if k not in skip and getattr(cfg, k, v) != v]


BUDGET_MODES = {"recommended": "recommended", "this input": "calibrated", "manual": "manual"}  # app word -> occam.budget


def resolve_budget(s: Settings, vlm: Any, img: Any = None, question: str | None = None,
                   target: float | None = None, mode: str | None = None) -> tuple[occam.OccamConfig, dict]:
    """The pruned run's OccamConfig for a target retention (``occam.budget``), and a note on where it comes from.

    A thresholded method (occam): ``mode`` (default ``s.thresholds``) picks the model's recommended alpha /
    beta (fallback when the model has none: alpha = beta = 1, docs/method.md section 8), a calibration on
    this input, or the typed alpha / beta. Fixed-budget methods: ``retention`` = the target. The full model: as is.
    """
    t = s.target_retention if target is None else target
    mode = mode or s.thresholds
    thresholded = s.config.spec.thresholded
    b = budget.for_target(vlm, s.config, t, BUDGET_MODES[mode], samples=[(img, question)])
    cfg = b.config
    info: dict[str, Any] = {"method": cfg.method, "target": t, "mode": mode if thresholded else "budget"}
    if b.source == "budget":
        info["note"] = f"fixed budget: {100 * t:.0f}% of the visual tokens of every input"
    elif b.source == "full":
        info["note"] = "no pruning (the full model)"
    elif b.source == "manual":
        info["note"] = f"α = {cfg.alpha:.4g}, β = {cfg.beta:.4g}, set by hand (the target retention is not used)"
    elif b.source == "calibrated":
        info["note"] = (f"α = {cfg.alpha:.4g}, β = {cfg.beta:.4g}, calibrated on this image and question to "
                        f"{100 * t:.0f}% retention")
    elif b.source == "fallback":
        info.update(source=None, note=f"α = β = 1: {recommended_mod.FALLBACK_RULE} (the target retention "
                                      "is not used; calibrate on this input or type α/β instead)")
    else:   # the model's recommended thresholds: "exact", "interpolated" or "clamped"
        rec = vlm.recommended
        entry = rec.entry(t)
        measured = (f", {100 * entry.measured_retention:.1f}% on average there"
                    if entry is not None and entry.measured_retention is not None else "")
        what = {"exact": "", "interpolated": " (interpolated in log between the file's targets)",
                "clamped": " (outside the file's targets: the nearest one's thresholds)"}[b.source]
        info.update(source=rec.source, how=b.source, calibration=rec.calibration.get("set"))
        info["note"] = (f"α = {cfg.alpha:.4g}, β = {cfg.beta:.4g}: recommended for {100 * t:.0f}% average retention"
                        f"{what}, calibrated on {rec.calibration.get('set', '?')}{measured}; this input keeps "
                        "as many tokens as its evidence warrants")
        changed = _changed_knobs(cfg, rec.base)
        if changed:
            info["note"] += (f". Calibrated with other values of {', '.join(changed)}: the retention will "
                             "differ from the target")
    info.update(alpha=cfg.alpha if thresholded else None, beta=cfg.beta if thresholded else None)
    return cfg, info


RUN_KINDS = ("compare", "methods", "sweep")


def plan_work(kind: str, s: Settings, n_values: int = 0, methods: tuple[str, ...] = COMPARED_METHODS,
              param: str = "") -> public.Work:
    """The runs one request of ``kind`` will make (its prompt's length not known yet: 1)."""
    calibrates = lambda st, mode=None: (st.config.spec.thresholded  # noqa: E731
                                        and BUDGET_MODES[mode or st.thresholds] == "calibrated")
    calib = public.CALIBRATION_PREFILLS
    if kind == "compare":
        return public.Work(2 + 2 * s.repeats, s.max_new_tokens, calib * calibrates(s))
    if kind == "methods":
        return public.Work(1 + len(methods), s.max_new_tokens, calib * sum(registry.get(m).thresholded for m in methods))
    if kind == "sweep":
        calibrations = n_values if param == "target retention" else 1   # a budget per value, or one base
        return public.Work(1 + n_values, s.max_new_tokens, calib * calibrations * calibrates(s))
    raise ValueError(f"Unknown run kind {kind!r}: accepted {', '.join(RUN_KINDS)}.")


def check_work(work: public.Work, vlm: Any, img: Any, question: str) -> None:
    """The request's work against the budget (public mode), before any run; the prompt's length from the
    model's own preprocessing of this input."""
    if public.work_budget() is None:
        return
    n = int(vlm.adapter.prepare(img, question).inputs["input_ids"].shape[1])
    public.check_work(dataclasses.replace(work, prompt_tokens=n))


# ---------------------------------------------------------------------------------------------
# timing: warm-up, then repeated, alternated runs
# ---------------------------------------------------------------------------------------------
TIMED = ("vision_s", "scoring_s", "prefill_s", "decode_s", "total_s")


def _spread(values: list[float]) -> dict:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def measure(vlm: Any, img: Any, question: str, full_cfg: occam.OccamConfig, cfg: occam.OccamConfig,
            max_new_tokens: int, repeats: int, progress: Progress = _noop) -> tuple[Any, Any, dict]:
    """Full and pruned runs: one untimed warm-up pair, then ``repeats`` timed pairs in alternating order.

    Returns the last full and pruned results (greedy decoding: every run gives the same answer) and
    the timing summary: per run kind, median / min / max of each timing over the ``repeats`` runs,
    and per pair the full / pruned ratio of prefill and total time (median / min / max), and the size
    of the batch each timed run ran in (``batch``: 1 = alone; the app batches concurrent visitors, see
    app/batcher.py). The warm-up pair runs as one batch; the timed runs one after another.
    """
    gen = lambda c: vlm.generate(img, question, config=c, max_new_tokens=max_new_tokens)  # noqa: E731
    progress(0.3, "warm-up (full and pruned, not timed) ...")
    full, pruned = together(vlm, [(img, question, full_cfg), (img, question, cfg)], max_new_tokens)
    texts = {(full.text, pruned.text)}
    runs: dict[str, list[dict]] = {"full": [], "pruned": []}
    for i in range(repeats):
        progress(0.35 + 0.55 * i / repeats, f"timed pair {i + 1} of {repeats} ...")
        order = ("full", "pruned") if i % 2 == 0 else ("pruned", "full")
        for kind in order:
            res = gen(full_cfg if kind == "full" else cfg)
            runs[kind].append(dict(res.trace.timings, batch=(res.trace.sequence or {}).get("batch_size", 1)))
            if kind == "full":
                full = res
            else:
                pruned = res
        texts.add((full.text, pruned.text))
    if len(texts) > 1:  # pragma: no cover - greedy decoding is deterministic
        log.warning("repeated runs gave different answers: %s", texts)
    ratio = lambda key: [f[key] / p[key] for f, p in zip(runs["full"], runs["pruned"])  # noqa: E731
                         if f.get(key) and p.get(key)]
    timing = {"n": repeats, "warmup": 1, "order": "alternating (full, pruned), (pruned, full), ...",
              "full": {k: _spread([r.get(k) for r in runs["full"]]) for k in TIMED},
              "pruned": {k: _spread([r.get(k) for r in runs["pruned"]]) for k in TIMED},
              "ratio": {"prefill": _spread(ratio("prefill_s")), "total": _spread(ratio("total_s"))},
              "batch": batch_sizes(runs)}
    return full, pruned, timing


def batch_sizes(runs: Mapping[str, list[dict]]) -> dict:
    """The batch size of every timed run (1 = it ran alone) and whether all of them ran alone."""
    sizes = {kind: [int(r.get("batch") or 1) for r in rs] for kind, rs in runs.items()}
    every = [n for ns in sizes.values() for n in ns]
    return {**sizes, "alone": all(n == 1 for n in every), "max": max(every, default=1)}


def estimates(full_trace: Any, pruned_trace: Any) -> dict:
    """Full / pruned ratios computed from token counts (not measured): prefill FLOPs and KV-cache bytes."""
    f = full_trace.to_dict() if hasattr(full_trace, "to_dict") else dict(full_trace)
    p = pruned_trace.to_dict() if hasattr(pruned_trace, "to_dict") else dict(pruned_trace)
    fl = lambda t: (t.get("flops") or {}).get("prefill")  # noqa: E731
    r = lambda a, b: a / b if a and b else None  # noqa: E731
    return {"flops": r(fl(f), fl(p)), "kv_cache": r(f.get("kv_cache_bytes"), p.get("kv_cache_bytes")),
            "flops_full": fl(f), "flops_pruned": fl(p),
            "kv_full": f.get("kv_cache_bytes"), "kv_pruned": p.get("kv_cache_bytes")}


# ---------------------------------------------------------------------------------------------
# runs
# ---------------------------------------------------------------------------------------------
def _summary(res) -> dict:
    t = res.trace
    return {"answer": res.text, "token_ids": list(res.token_ids), "visual_tokens": t.counts.get("visual"),
            "kept_tokens": t.counts.get("final"), "retention": t.counts.get("retention"),
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
    full: Any       # occam.Result (the last timed run)
    pruned: Any     # occam.Result (the last timed run)
    timing: dict = field(default_factory=dict)
    budget: dict = field(default_factory=dict)
    reference: str | None = None

    @property
    def agreement(self) -> dict:
        return agreement(self.full.text, self.pruned.text, self.reference)

    def speedup(self) -> dict:
        """Measured (median of n timed pairs after a warm-up, with min-max) and estimated ratios."""
        return {"measured": {"n": self.timing.get("n"), "warmup": self.timing.get("warmup"),
                             **(self.timing.get("ratio") or {}), "batch": self.timing.get("batch")},
                "estimated": {k: v for k, v in estimates(self.full.trace, self.pruned.trace).items()
                              if k in ("flops", "kv_cache")}}

    def to_dict(self) -> dict:
        return {"model": self.model, "family": self.family, "device": self.device, "question": self.question,
                "settings": self.settings.to_dict(), "config": self.config.to_dict(), "budget": self.budget,
                "full": _summary(self.full), "pruned": _summary(self.pruned), "agreement": self.agreement,
                "timing": self.timing, "speedup": self.speedup(),
                "estimates": estimates(self.full.trace, self.pruned.trace)}


@request
def run_compare(image: Any, question: Any, settings: Mapping | Settings | str | None = None,
                progress: Progress | None = None, cache: ModelCache | None = None,
                reference: Any = None) -> Comparison:
    """One request: the full model (method none) and the pruned run on the same input, timed."""
    progress = progress or _noop
    cache = cache or MODELS
    s = parse_settings(settings)
    ref = check_reference(reference)
    img, q = load_inputs(image, question)
    vlm = batched(cache.get(s.model, progress))
    check_work(plan_work("compare", s), vlm, img, q)
    if s.config.spec.thresholded and s.thresholds == "this input":
        progress(0.15, f"calibrating α/β to {100 * s.target_retention:.0f}% retention on this input ...")
    cfg, budget = resolve_budget(s, vlm, img, q)
    full, pruned, timing = measure(vlm, img, q, FULL, cfg, s.max_new_tokens,
                                   s.repeats, progress)
    progress(0.95, "rendering ...")
    return Comparison(image=img, question=q, settings=s, config=cfg, model=s.model, family=vlm.family,
                      device=device(), full=full, pruned=pruned, timing=timing, budget=budget, reference=ref)


@dataclass
class MethodRuns:
    """One input under every pruning method at the same retention, beside the full model."""

    image: Any
    data: dict

    def to_dict(self) -> dict:
        return self.data


@request
def run_methods(image: Any, question: Any, settings: Mapping | Settings | str | None = None,
                progress: Progress | None = None, cache: ModelCache | None = None,
                reference: Any = None, methods: tuple[str, ...] = COMPARED_METHODS) -> MethodRuns:
    """occam (alpha / beta calibrated on this input to the target retention) and the fixed-budget
    baselines at that target, each with its answer and kept-token mask, plus the full model's answer.

    The other knobs (stages, reference, registers, layers, seed) are the request's; the method and the
    thresholds mode are set here. One run per method (answers and masks, no timing).
    """
    progress = progress or _noop
    cache = cache or MODELS
    s = parse_settings(settings)
    ref = check_reference(reference)
    bad = [m for m in methods if m not in COMPARED_METHODS]
    if bad or not methods:
        raise ValueError(f"Methods {bad} are invalid: accepted {', '.join(COMPARED_METHODS)}.")
    img, q = load_inputs(image, question)
    vlm = batched(cache.get(s.model, progress))
    check_work(plan_work("methods", s, methods=methods), vlm, img, q)
    t = s.target_retention
    progress(0.1, "full model (method none) ...")
    full = vlm.generate(img, q, config=FULL, max_new_tokens=s.max_new_tokens)
    rows = []
    for i, m in enumerate(methods):
        progress(0.15 + 0.8 * i / len(methods), f"{m} ..." + (" (calibrating α/β on this input)"
                                                            if registry.get(m).thresholded else ""))
        ms = dataclasses.replace(s, config=s.config.replace(method=m))
        cfg, info = resolve_budget(ms, vlm, img, q, mode="this input")
        res = vlm.generate(img, q, config=cfg, max_new_tokens=s.max_new_tokens)
        c = res.trace.counts
        rows.append({"method": m, "answer": res.text, "kept": c["final"], "visual": c["visual"],
                     "retention": c["retention"], "same_as_full": same_answer(res.text, full.text),
                     "correct": matches_reference(res.text, ref), "alpha": info.get("alpha"),
                     "beta": info.get("beta"), "note": info.get("note"), "config": cfg.to_dict(),
                     "trace": res.trace.to_dict()})
    progress(1.0, "done")
    data = {"model": s.model, "family": vlm.family, "question": q, "target_retention": t, "reference": ref,
            "full": {"answer": full.text, "visual_tokens": full.trace.counts["visual"],
                     "correct": matches_reference(full.text, ref), "trace": full.trace.to_dict()},
            "rows": rows, "settings": s.to_dict(),
            "rule": f"{', '.join(m for m in methods if registry.get(m).thresholded)}: α/β calibrated on this image "
                    f"and question to the target; {', '.join(m for m in methods if registry.get(m).fixed_budget)}: "
                    "a fixed budget of the target share of the visual tokens"}
    return MethodRuns(image=img, data=data)


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
            x = float(item) if not isinstance(item, bool) else math.nan
        except (TypeError, ValueError):
            x = math.nan
        if not x > 0 or not math.isfinite(x) or (param == "target retention" and x > 1):
            raise ValueError(f"Sweep value {item!r} is invalid for {param}: accepted {accepted}.")
        out.append(x)
    out = sorted(dict.fromkeys(out))
    if not out:
        raise ValueError("No sweep values: give a comma-separated list, e.g. 0.5, 1, 2.")
    if len(out) > MAX_SWEEP_VALUES:
        raise ValueError(f"Too many sweep values ({len(out)}); the limit is {MAX_SWEEP_VALUES}.")
    return out


@request
def run_sweep(image: Any, question: Any, settings: Mapping | Settings | str | None, param: str, values: Any,
              progress: Progress | None = None, cache: ModelCache | None = None) -> dict:
    """Answers and kept-token counts of the pruned run across a range of alpha / beta / target retention.

    alpha / beta sweeps start from the thresholds the settings resolve to and set the swept one(s);
    a target-retention sweep resolves the budget at each target (same thresholds mode).
    """
    progress = progress or _noop
    cache = cache or MODELS
    s = parse_settings(settings)
    vals = parse_sweep_values(values, param)
    if not s.config.spec.prunes:
        raise ValueError(f"Method {s.method!r} does not prune: pick occam or a baseline to sweep a budget.")
    thresholded = s.config.spec.thresholded
    if param != "target retention" and not thresholded:
        raise ValueError(f"Sweeping {param} needs method 'occam' ({s.method!r} has a fixed budget): "
                         "sweep 'target retention' instead.")
    img, q = load_inputs(image, question)
    vlm = batched(cache.get(s.model, progress))
    check_work(plan_work("sweep", s, len(vals), param=param), vlm, img, q)
    progress(0.05, "full model (method none) ...")
    full = vlm.generate(img, q, config=FULL, max_new_tokens=s.max_new_tokens)
    base = None if param == "target retention" else resolve_budget(s, vlm, img, q)[0]
    rows = []
    for i, v in enumerate(vals):
        progress(0.1 + 0.85 * i / len(vals), f"{param} = {v:g} ({i + 1}/{len(vals)}) ...")
        if param == "alpha=beta":
            cfg = base.replace(alpha=v, beta=v)
        elif param in ("alpha", "beta"):
            cfg = base.replace(**{param: v})
        else:
            cfg, _ = resolve_budget(s, vlm, img, q, target=v)
        res = vlm.generate(img, q, config=cfg, max_new_tokens=s.max_new_tokens)
        c = res.trace.counts
        rows.append({"value": v, "alpha": cfg.alpha if thresholded else None,
                     "beta": cfg.beta if thresholded else None, "kept": c["final"],
                     "retention": c["retention"], "answer": res.text,
                     "same_as_full": same_answer(res.text, full.text)})
    progress(1.0, "done")
    return {"param": param, "method": s.method, "model": s.model, "question": q,
            "thresholds": s.thresholds if thresholded else None,
            "full": {"answer": full.text, "visual_tokens": full.trace.counts["visual"]}, "rows": rows}


# ---------------------------------------------------------------------------------------------
# the token inspector (reads a trace's JSON form)
# ---------------------------------------------------------------------------------------------


def token_at(trace: Mapping, x: float, y: float) -> int | None:
    """The visual token whose box (original pixels) contains (x, y); the smallest such box wins
    (LLaVA-NeXT: a high-res tile's token over the base image's); None outside every box."""
    best, area = None, math.inf
    for j, box in enumerate(trace.get("boxes") or []):
        if box is None:
            continue
        x0, y0, x1, y1 = box
        if x0 <= x < x1 and y0 <= y < y1 and (x1 - x0) * (y1 - y0) < area:
            best, area = j, (x1 - x0) * (y1 - y0)
    return best


def inspect_token(trace: Mapping, j: Any, top: int = 5) -> dict:
    """Everything the trace says about visual token ``j``: per stage its score, rank among the stage's
    candidates, the threshold and decision, the register reference it was tested against and, for
    Stage II, the question tokens that attended to it most (when the trace records them)."""
    n = trace["num_visual"]
    if isinstance(j, bool) or not isinstance(j, (int, float)) or j != int(j) or not 0 <= int(j) < n:
        raise ValueError(f"Token {j!r} is invalid: accepted an index from 0 to {n - 1} (or click the image).")
    j = int(j)
    kinds, grid, boxes = trace.get("kinds") or [], trace.get("grid") or [], trace.get("boxes") or []
    out: dict[str, Any] = {"token": j, "kind": kinds[j] if j < len(kinds) else "patch",
                           "grid": grid[j] if j < len(grid) else None, "box": boxes[j] if j < len(boxes) else None,
                           "final": bool((trace.get("kept") or [True] * n)[j]), "stages": [],
                           "method": (trace.get("config") or {}).get("method")}
    for sv in token_view(trace).stages:
        st, scores, regs = sv.stage, sv.scores, sorted(sv.registers)
        s, kept, entered = scores[j], sv.kept[j], sv.entered[j]
        cands = [c for c in st.get("candidates") or [] if c < n and sv.entered[c] and scores[c] is not None]
        rank = None
        if s is not None and entered and j in cands:
            rank = 1 + sum(1 for c in cands if scores[c] > s)
        if not entered:
            decision = "dropped at an earlier stage"
        elif j in sv.registers:
            decision = "register (reference), " + ("kept" if kept else "dropped")
        else:
            decision = "kept" if kept else "dropped"
        info = {"stage": st["name"], "label": sv.label, "layer": st.get("layer"),
                "entered": entered, "score": s, "rank": rank, "of": len(cands), "threshold": st.get("threshold"),
                "threshold_kind": ("relative threshold" if st.get("reference_kind") != "budget"
                                   else "lowest kept score (fixed budget)"),
                "decision": decision, "rail": st.get("rail"), "reference_kind": st.get("reference_kind"),
                "reference": st.get("reference"), "registers": regs, "register_source": st.get("register_source"),
                "is_register": j in sv.registers}
        merged = st.get("merged_into")
        if merged and j < len(merged) and merged[j] is not None:
            info["merged_into"] = merged[j]
        ra = st.get("register_attention")
        if ra and j < len(ra) and ra[j] is not None:
            info["register_attention"] = ra[j]
        if st["name"] in registry.language_stages():
            info["question_tokens"], info["question_note"] = _question_tokens(st, j, top, entered)
        out["stages"].append(info)
    if not out["stages"]:
        out["note"] = "This run has no pruning stage (method none): every token is kept."
    return out


def _question_tokens(st: Mapping, j: int, top: int, entered: bool) -> tuple[list | None, str]:
    rows, toks = st.get("query_attention"), st.get("query_tokens")
    if not rows or not toks:
        return None, "not available for this method (the trace records no per-question-token attention)"
    if not entered:
        return None, "this token did not reach the layer (dropped earlier)"
    vals = [(str(t), float(r[j])) for t, r in zip(toks, rows)
            if r is not None and j < len(r) and r[j] is not None and math.isfinite(r[j])]
    if not vals:
        return None, "no attention recorded for this token at this layer"
    total = sum(v for _, v in vals) or 1.0
    ranked = sorted(vals, key=lambda tv: -tv[1])[:top]
    return ([{"token": t, "attention": v, "share": v / total} for t, v in ranked],
            f"head-averaged attention from each question row to this token at layer {st.get('layer')}")
