"""Recommended thresholds per model: the alpha / beta that give a few target retentions.

A model folder may hold ``occam_thresholds.json`` (written by ``python -m occam.bench thresholds``)::

    {"model": "toy",
     "calibration": {"set": "toy-world train split, n=200, ...", "n": 200, "seed": 0, "method": "calibrate()"},
     "config": {...the base knobs the thresholds were calibrated with (alpha / beta excluded)...},
     "targets": [{"target": 0.25, "alpha": 1.9, "beta": 2.3, "measured_retention": 0.251}, ...],
     "created": "2026-11-26T01:30:00Z", "command": "python -m occam.bench thresholds ..."}

``occam.load`` attaches it as ``vlm.recommended`` (``None`` when the model has no such file; then the
documented fallback is alpha = beta = 1, docs/method.md section 8). ``Recommended.config(target)`` turns a
target retention into an ``OccamConfig``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import OccamConfig

FILENAME = "occam_thresholds.json"
FALLBACK = {"alpha": 1.0, "beta": 1.0}
FALLBACK_RULE = ("no recommended thresholds for this model (no occam_thresholds.json beside it): "
                 "alpha = beta = 1, i.e. keep a token whose evidence reaches the registers' level")


@dataclass(frozen=True)
class Entry:
    target: float                       # the average retention asked for
    alpha: float
    beta: float
    measured_retention: float | None = None   # the average retention these thresholds gave on the calibration set


@dataclass(frozen=True)
class Recommended:
    """The recommended thresholds of one model (see the module docstring for the file format)."""

    targets: tuple[Entry, ...]                          # sorted by target
    calibration: dict = field(default_factory=dict)     # what they were calibrated on (named set, n, seed)
    base: dict = field(default_factory=dict)            # the base knobs they were calibrated with
    model: str | None = None
    source: str | None = None                           # the file they were read from
    extra: dict = field(default_factory=dict)           # created, command, ...

    def __post_init__(self) -> None:
        if not self.targets:
            raise ValueError("Recommended thresholds need at least one target entry.")
        for e in self.targets:
            for name in ("target", "alpha", "beta"):
                v = getattr(e, name)
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                    raise ValueError(f"Recommended thresholds: {name}={v!r} is invalid in entry {e}: "
                                     "accepted a finite number > 0.")
            if e.target > 1:
                raise ValueError(f"Recommended thresholds: target={e.target!r} is invalid: accepted (0, 1].")
        object.__setattr__(self, "targets", tuple(sorted(self.targets, key=lambda e: e.target)))

    # -- lookup ----------------------------------------------------------------------------
    def entry(self, target: float) -> Entry | None:
        """The file's entry for exactly ``target`` (to 1e-9), else None."""
        return next((e for e in self.targets if abs(e.target - target) <= 1e-9), None)

    def thresholds(self, target: float) -> tuple[float, float, str]:
        """(alpha, beta, how) for a target retention in (0, 1].

        ``how`` is "exact" (an entry of the file), "interpolated" (log(alpha) and log(beta) linear in
        log(target) between the two neighbouring entries) or "clamped" (outside the file's range: the
        nearest end entry's thresholds, unchanged; no extrapolation).
        """
        if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target <= 1:
            raise ValueError(f"target retention {target!r} is invalid: accepted a number in (0, 1] (e.g. 0.25).")
        e = self.entry(target)
        if e is not None:
            return e.alpha, e.beta, "exact"
        ts = self.targets
        if target < ts[0].target:
            return ts[0].alpha, ts[0].beta, "clamped"
        if target > ts[-1].target:
            return ts[-1].alpha, ts[-1].beta, "clamped"
        lo = max((e for e in ts if e.target < target), key=lambda e: e.target)
        hi = min((e for e in ts if e.target > target), key=lambda e: e.target)
        f = (math.log(target) - math.log(lo.target)) / (math.log(hi.target) - math.log(lo.target))
        mix = lambda a, b: math.exp(math.log(a) + f * (math.log(b) - math.log(a)))  # noqa: E731
        return mix(lo.alpha, hi.alpha), mix(lo.beta, hi.beta), "interpolated"

    def config(self, target: float, base: OccamConfig | None = None) -> OccamConfig:
        """An occam ``OccamConfig`` aiming at average retention ``target``.

        alpha / beta: the file's entry for ``target`` when there is one; else log(alpha) and log(beta)
        interpolated linearly in log(target) between the neighbouring entries; outside the file's range,
        clamped to the nearest entry (see ``thresholds``). ``base``: the other knobs (default: the knobs
        recorded in the file, i.e. those the thresholds were calibrated with; knobs this version of
        ``OccamConfig`` does not have, or whose type changed, are left at their defaults). Thresholds
        calibrated with other knobs (Stage II off, mean reference, ...) give another retention.
        """
        alpha, beta, _ = self.thresholds(target)
        cfg = base if base is not None else self.base_config()
        return cfg.replace(method="occam", alpha=alpha, beta=beta)

    def base_config(self) -> OccamConfig:
        """``OccamConfig`` from the file's base knobs (unknown or re-typed knobs: the defaults)."""
        return OccamConfig(**usable_knobs(self.base))

    # -- JSON --------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"model": self.model, "calibration": dict(self.calibration), "config": dict(self.base),
                "targets": [dataclasses.asdict(e) for e in self.targets], **self.extra}

    @classmethod
    def from_dict(cls, d: dict, source: str | None = None) -> "Recommended":
        if not isinstance(d, dict) or not isinstance(d.get("targets"), list):
            raise ValueError("Recommended thresholds: expected a JSON object with a 'targets' list.")
        entries = []
        for e in d["targets"]:
            if not isinstance(e, dict) or not {"target", "alpha", "beta"} <= set(e):
                raise ValueError(f"Recommended thresholds: entry {e!r} needs target, alpha and beta.")
            entries.append(Entry(target=e["target"], alpha=e["alpha"], beta=e["beta"],
                                 measured_retention=e.get("measured_retention")))
        extra = {k: v for k, v in d.items() if k not in ("model", "calibration", "config", "targets")}
        return cls(targets=tuple(entries), calibration=dict(d.get("calibration") or {}),
                   base=dict(d.get("config") or {}), model=d.get("model"), source=source, extra=extra)


def usable_knobs(knobs: dict) -> dict:
    """The knobs of ``knobs`` that today's ``OccamConfig`` has, with a value of its default's type
    (alpha / beta / method excluded: they are set per target)."""
    out = {}
    for f in dataclasses.fields(OccamConfig):
        if f.name in ("alpha", "beta", "method") or f.name not in knobs:
            continue
        v, default = knobs[f.name], f.default
        if default is None or v is None or type(v) is type(default) or (
                isinstance(default, float) and isinstance(v, int) and not isinstance(v, bool)):
            out[f.name] = v
    try:
        OccamConfig(**out)
    except (TypeError, ValueError):
        return {}
    return out


def read(path: str | os.PathLike) -> Recommended:
    """Read an ``occam_thresholds.json`` file (ValueError naming the file when it is unusable)."""
    path = Path(path)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        return Recommended.from_dict(d, source=str(path))
    except (OSError, json.JSONDecodeError, TypeError, ValueError) as e:
        raise ValueError(f"Cannot read recommended thresholds from {path}: {e}") from None


def write(rec: Recommended, path: str | os.PathLike) -> Path:
    """Write ``rec`` as JSON (a folder gets ``occam_thresholds.json`` inside it)."""
    path = Path(path)
    if path.is_dir():
        path = path / FILENAME
    path.write_text(json.dumps(rec.to_dict(), indent=1) + "\n", encoding="utf-8")
    return path


def model_folder(vlm_or_folder: Any) -> Path | None:
    """The local folder a model was loaded from, when there is one."""
    if isinstance(vlm_or_folder, (str, os.PathLike)):
        name = str(vlm_or_folder)
        if name == "toy":
            from .loading import toy_path
            return Path(toy_path())
        if os.path.isdir(name):
            return Path(name)
        if os.path.isfile(name) and Path(name).name == FILENAME:
            return Path(name).parent
        return _hub_cache_folder(name)
    vlm = vlm_or_folder
    names = [getattr(vlm, "name", None)]
    model = getattr(vlm, "model", None)
    names.append(getattr(model, "name_or_path", None))
    names.append(getattr(getattr(model, "config", None), "_name_or_path", None))
    for name in names:
        if isinstance(name, str) and name:
            folder = model_folder(name)
            if folder is not None:
                return folder
    return None


def _hub_cache_folder(repo_id: str) -> Path | None:
    """A hub model's snapshot folder in the local cache holding the thresholds file (no download)."""
    if repo_id.count("/") != 1:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
        hit = try_to_load_from_cache(repo_id, FILENAME)
    except Exception:
        return None
    return Path(hit).parent if isinstance(hit, str) else None


def for_model(vlm_or_folder: Any) -> Recommended | None:
    """The recommended thresholds beside a model (a loaded VLM, "toy", a folder or a file), or None.

    None when the model has no ``occam_thresholds.json``; a file that exists but cannot be read
    raises ValueError (a broken file is never silently ignored).
    """
    folder = model_folder(vlm_or_folder)
    if folder is None or not (folder / FILENAME).is_file():
        return None
    return read(folder / FILENAME)
