"""OccamToken as an lmms-eval model: ``lmms-eval --model occam --model_args pretrained=...,method=...``.

lmms-eval finds it through the entry point group ``lmms_eval.models`` (pyproject.toml), which names
:func:`manifest`; the model class is :class:`occam.lmms.model.OccamLMM` (needs the ``eval`` extra).
``occam.lmms.args`` and ``occam.lmms.toy_task`` import without lmms-eval.
"""
from __future__ import annotations


def metric_key(name: str, task: str) -> str:
    """The ``log_metrics`` key of a per-task trace mean; the results JSON reports it as ``avg_`` + key."""
    return f"occam_{name}@{task}"


def manifest():
    """The lmms-eval registration of ``--model occam`` (imported only by lmms-eval's registry)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="occam", simple_class_path="occam.lmms.model.OccamLMM")
