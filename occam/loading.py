"""Loading the four supported VLM families (offline-friendly, PIL image processors only).

``load_model_and_processor(name_or_path, *, dtype=None, device=None) -> (model, processor)``, where
``name_or_path`` is

* ``"toy"``: the small model shipped with the repository in ``<repo>/assets/toy``;
* a name from :data:`occam.archs.ARCH_NAMES` (random weights, built offline, on ``device``);
* a local folder written by ``save_pretrained`` (model + processor files);
* a Hugging Face Hub id (downloaded through the usual cache when a network exists).

The supported families are listed once, in :data:`occam.models.FAMILIES`; their processors are
built by :mod:`occam.models.processors`.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from . import archs
from .models import model_class_for
from .models.processors import QwenVLProcessor, load_processor

__all__ = ["QwenVLProcessor", "load_model_and_processor", "load_processor", "model_class_for", "toy_path"]

REPO_ROOT = Path(__file__).resolve().parents[1]


def toy_path() -> Path:
    """Folder of the repository's shipped toy model (may not exist yet)."""
    return REPO_ROOT / "assets" / "toy"


def _looks_like_local_path(name: str) -> bool:
    return (
        os.path.isabs(name)
        or name.startswith((".", "~"))
        or name.count("/") > 1
        or (os.sep != "/" and os.sep in name)
    )


def load_model_and_processor(name_or_path: str | os.PathLike, *, dtype=None, device=None):
    """Load ``(model, processor)`` for one of the four supported VLM families.

    dtype: ``torch.dtype`` or its name; ``None`` keeps float32 for the built-in architectures and
    the checkpoint's own dtype (``"auto"``) for folders / hub ids.
    device: where the model lives (``None``: the CPU). Weights are created or loaded there directly,
    not on the CPU first (a real-shape 7B builds on a GPU in about a second).
    """
    if isinstance(dtype, str) and dtype != "auto":
        dtype = getattr(torch, dtype)
    name = os.fspath(name_or_path)

    if name == "toy":
        folder = toy_path()
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"The toy model is not available: expected a saved model (config.json, weights, processor files) "
                f"in {folder}. It ships with the source checkout (assets/toy), not with the installed package: "
                f"pass that folder instead of 'toy' (e.g. occam.load('<checkout>/assets/toy')), or retrain it "
                f"with `python -m occam.toy.train --out <folder>`."
            )
        model, processor = _load_from_pretrained(str(folder), dtype=dtype, device=device)
    elif name in archs.ARCH_NAMES:
        model, processor = archs.build(name, dtype=torch.float32 if dtype in (None, "auto") else dtype, device=device)
    else:
        expanded = os.path.expanduser(name)
        if os.path.isdir(expanded):
            model, processor = _load_from_pretrained(expanded, dtype=dtype, device=device)
        elif os.path.exists(expanded):
            raise NotADirectoryError(f"{name!r} is a file; expected a model folder written by save_pretrained.")
        elif _looks_like_local_path(name):
            raise FileNotFoundError(f"No model folder at {name!r} (the path does not exist).")
        else:
            model, processor = _load_from_pretrained(name, dtype=dtype, device=device)
    model.eval()
    return model, processor


def _hub_endpoint() -> str:
    try:
        from huggingface_hub import constants

        return constants.ENDPOINT
    except Exception:  # pragma: no cover
        return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def _hub_offline() -> bool:
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return True
    return False


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Quick TCP probe of the hub endpoint (assumed reachable when a proxy is configured)."""
    import socket
    from urllib.parse import urlparse

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlparse(_hub_endpoint())
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _load_from_pretrained(name: str, *, dtype=None, device=None):
    from transformers import AutoConfig

    def not_found(err: BaseException | None, why: str) -> OSError:
        msg = (
            f"Could not find {name!r}: it is not a local folder, not 'toy', not one of the built-in "
            f"architectures ({', '.join(archs.ARCH_NAMES)}), and it could not be fetched from the Hugging Face Hub "
            f"({why}); nothing can be downloaded here."
        )
        return OSError(msg + (f" Original error: {err}" if err is not None else ""))

    if os.path.isdir(name):
        try:
            config = AutoConfig.from_pretrained(name)
        except (OSError, ValueError) as err:
            raise OSError(f"Could not read a model config from folder {name!r}: {err}") from err
    else:
        try:  # already in the local HF cache? (no network involved)
            config = AutoConfig.from_pretrained(name, local_files_only=True)
        except (OSError, ValueError):
            config = None
        if config is None:
            if _hub_offline():
                raise not_found(None, "offline mode is on: HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE")
            if not _hub_reachable():
                # fail fast instead of huggingface_hub's ~30 s of retries
                raise not_found(None, f"{_hub_endpoint()} is unreachable from this machine")
            try:
                config = AutoConfig.from_pretrained(name)
            except (OSError, ValueError) as err:
                raise not_found(err, "no network, or no such repository / no access") from err
    model_type = getattr(config, "model_type", None)
    cls = model_class_for(model_type)  # TypeError for unsupported families
    placement = {} if device is None else {"device_map": str(device)}  # loaded straight onto the device
    model = cls.from_pretrained(name, config=config, dtype="auto" if dtype is None else dtype, **placement)
    processor = load_processor(name, model_type=model_type)
    return model, processor
