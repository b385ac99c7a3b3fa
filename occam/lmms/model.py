"""The lmms-eval model ``occam``: a supported VLM under any OccamConfig, one image per question, greedy.

Per sample it writes a trace summary (kept tokens per stage, retention, prefill FLOPs) to
``<trace_dir>/<run>_<task>.jsonl`` and reports per-task means through lmms-eval's ``log_metrics``, so that
they land in the ``throughput`` block of the results JSON as ``avg_occam_<name>@<task>``.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import random
from pathlib import Path

import torch
from lmms_eval.api.instance import GenerationResult, Instance, TokenCounts
from lmms_eval.api.model import lmms
from lmms_eval.models.model_utils.gen_metrics import log_metrics
from loguru import logger
from tqdm import tqdm

import occam

from . import metric_key
from .args import split_args

FIXED_BUDGET = ("topk", "fastv", "visionzip", "random")
DTYPES = ("float32", "bfloat16", "float16")
SUMMARISED = ("retention", "final", "flops_ratio", "prefill_flops")  # per-task means in the results' throughput


def trace_summary(res: occam.Result) -> dict:
    """What a results table needs from one run's trace: token counts per stage, retention, prefill FLOPs."""
    flops = res.trace.flops
    return {**res.trace.counts, "prefill_flops": flops["prefill"], "prefill_flops_full": flops["prefill_full"],
            "flops_ratio": flops["prefill"] / flops["prefill_full"], "new_tokens": len(res.token_ids)}


def cut(text: str, until: list[str]) -> str:
    """``text`` up to the first stop string."""
    for stop in until:
        if stop:
            text = text.split(stop)[0]
    return text


class OccamLMM(lmms):
    """``--model occam``: model args are the OccamConfig fields plus pretrained, dtype, device, target_retention,
    calib_task / calib_split / calib_n / calib_seed / calib_include_path, trace_dir, label, on_unsupported.
    Documents run one at a time (lmms-eval's batch_size is accepted and not used)."""

    is_simple = True

    def __init__(self, pretrained: str = "toy", dtype: str = "auto", device: str | None = None,
                 target_retention: float | None = None, calib_task: str | None = None, calib_split: str | None = None,
                 calib_n: int = 64, calib_seed: int = 0, calib_include_path: str | None = None,
                 trace_dir: str = "occam_traces", label: str | None = None, on_unsupported: str = "error",
                 batch_size=1, max_batch_size=None, **knobs) -> None:
        super().__init__()
        if on_unsupported not in ("error", "skip"):
            raise ValueError(f"on_unsupported={on_unsupported!r} is invalid: accepted 'error' or 'skip'.")
        self.on_unsupported = on_unsupported
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise NotImplementedError("--model occam runs in one process: launch lmms-eval without accelerate / "
                                      "torchrun (or one process per shard of the tasks).")
        knobs, _ = split_args(knobs)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if dtype == "auto":
            dtype = "bfloat16" if str(device).startswith("cuda") else "float32"
        if dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r} is invalid: accepted auto, {', '.join(DTYPES)}.")
        self.vlm = occam.load(str(pretrained), dtype=getattr(torch, dtype), device=device)
        self.config, self.calibration = self._config(knobs, target_retention, calib_task, calib_split, int(calib_n),
                                                     int(calib_seed), calib_include_path)
        self.run = datetime.datetime.now().strftime("%Y%m%d_%H%M%S")
        self.trace_dir = Path(trace_dir)
        self.trace_dir.mkdir(parents=True, exist_ok=True)
        self.info = {"run": self.run, "pretrained": str(pretrained), "family": self.vlm.family, "dtype": dtype,
                     "device": str(device), "label": label, "target_retention": target_retention,
                     "on_unsupported": on_unsupported,
                     "config": self.config.to_dict(), "calibration": self.calibration}
        (self.trace_dir / f"{self.run}_run.json").write_text(json.dumps(self.info, indent=1))
        logger.info(f"occam: {pretrained} ({self.vlm.family}) under {self.config}; traces in {self.trace_dir}")
        self._warned_sampling = False

    # -- configuration -------------------------------------------------------------------------------
    def _config(self, knobs: dict, target, calib_task, calib_split, calib_n, calib_seed, include_path):
        """The run's OccamConfig and, when calibrated, a record of how."""
        cfg = occam.OccamConfig(**knobs)
        if calib_task and target is None:
            raise ValueError("calib_task is given without target_retention: add target_retention=<0..1>.")
        if target is None:
            return cfg, None
        target = float(target)
        if cfg.method == "none":
            raise ValueError("method=none keeps every token: drop target_retention.")
        if cfg.method in FIXED_BUDGET:
            if "retention" in knobs or calib_task:
                raise ValueError(f"method={cfg.method} has a fixed budget: give target_retention (or retention) "
                                 f"alone, without retention or calib_task.")
            return cfg.replace(retention=target), None
        if not calib_task:
            raise ValueError("method=occam with target_retention needs calib_task=<lmms-eval task> (and optionally "
                             "calib_split, calib_n) to calibrate alpha / beta at start-up; or give alpha / beta.")
        samples, split = calibration_samples(calib_task, calib_split, calib_n, calib_seed, include_path)
        logger.info(f"occam: calibrating to average retention {target} on {len(samples)} samples of "
                    f"{calib_task}/{split}")
        cfg = self.vlm.calibrate(samples, target, cfg)
        achieved = sum(self.vlm.generate(img, q, cfg, max_new_tokens=0).trace.counts["retention"]
                       for img, q in samples) / len(samples)
        return cfg, {"task": calib_task, "split": split, "n": len(samples), "seed": calib_seed, "target": target,
                     "achieved": achieved, "alpha": cfg.alpha, "beta": cfg.beta}

    # -- lmms-eval interface -------------------------------------------------------------------------
    def generate_until(self, requests: list[Instance]) -> list[GenerationResult]:
        out, files = [], {}
        with contextlib.ExitStack() as stack:
            for req in tqdm(requests, disable=self.rank != 0, desc="occam"):
                context, gen_kwargs, doc_to_visual, doc_id, task, split = req.args
                if task not in files:
                    files[task] = stack.enter_context(open(self.trace_dir / f"{self.run}_{task}.jsonl", "a"))
                row, text = self._answer(context, gen_kwargs, doc_to_visual(self.task_dict[task][split][doc_id]),
                                         task, doc_id)
                files[task].write(json.dumps({"task": task, "split": split, "doc_id": doc_id, "text": text,
                                              **row}) + "\n")
                out.append(GenerationResult(text=text, token_counts=TokenCounts(output_tokens=row.get("new_tokens"))))
        return out

    def _answer(self, context: str, gen_kwargs: dict, visuals, task: str, doc_id) -> tuple[dict, str]:
        """(trace summary, answer) of one document; ``{"skipped": why}`` and "" when occam cannot run it."""
        image, reason = single_image(visuals)
        if reason:
            if self.on_unsupported == "error":
                raise NotImplementedError(f"--model occam runs one image per question; {task} doc {doc_id} has "
                                          f"{reason}. Pass on_unsupported=skip to answer such documents with an "
                                          f"empty string (listed as skipped in the traces).")
            log_metrics(0.0, 0, 0.0, additional_metrics={metric_key("skipped", task): 1})
            return {"skipped": reason}, ""
        self._check_sampling(gen_kwargs)
        res = self.vlm.generate(image, context.replace("<image>", "").strip(), self.config,
                                max_new_tokens=int(gen_kwargs.get("max_new_tokens", 16)))
        until = gen_kwargs.get("until") or []
        text = cut(res.text, [until] if isinstance(until, str) else until)
        row = trace_summary(res)
        seconds = res.timings["total_s"]
        log_metrics(total_elapsed_time=seconds, total_gen_tokens=len(res.token_ids),
                    avg_speed=len(res.token_ids) / max(seconds, 1e-9),
                    additional_metrics={metric_key("skipped", task): 0,
                                        **{metric_key(k, task): row[k] for k in SUMMARISED}})
        return row, text

    def loglikelihood(self, requests: list[Instance]):
        tasks = sorted({r.task_name for r in requests})
        raise NotImplementedError(f"--model occam answers by generation only; task(s) {', '.join(tasks)} score by "
                                  f"log-likelihood (multiple_choice / loglikelihood). Use a generation variant "
                                  f"of the benchmark (e.g. seedbench, not seedbench_ppl).")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("--model occam answers one question per image (no multi-round tasks).")

    def _check_sampling(self, gen_kwargs: dict) -> None:
        sampling = gen_kwargs.get("do_sample") or float(gen_kwargs.get("temperature") or 0) > 0 \
            or int(gen_kwargs.get("num_beams") or 1) > 1
        if sampling and not self._warned_sampling:
            logger.warning(f"occam decodes greedily; ignoring sampling / beam settings {gen_kwargs}.")
            self._warned_sampling = True


def single_image(visuals) -> tuple[object | None, str | None]:
    """(a document's one PIL image, None), or (None, why occam cannot answer it: it needs exactly one image)."""
    visuals = [v for v in (visuals or []) if v is not None]
    if len(visuals) == 1 and hasattr(visuals[0], "convert"):
        return visuals[0], None
    return None, f"{len(visuals)} visual(s) ({', '.join(type(v).__name__ for v in visuals) or 'none'})"


def calibration_samples(task_name: str, split: str | None, n: int, seed: int,
                        include_path: str | None) -> tuple[list, str]:
    """``n`` seeded (image, question) pairs of an lmms-eval task's split (default: its training split, else
    validation, else test); documents without exactly one image are passed over."""
    from lmms_eval.tasks import TaskManager, get_task_dict

    task = get_task_dict([task_name], TaskManager(include_path=include_path, model_name="occam")).get(task_name)
    if task is None or isinstance(task, (dict, tuple)):
        raise ValueError(f"calib_task={task_name!r} is not a single lmms-eval task (a group?): name one of its tasks.")
    cfg = task.config
    split = split or cfg.training_split or cfg.validation_split or cfg.test_split
    if split not in task.dataset:
        raise ValueError(f"calib_split={split!r} is not a split of {task_name}: accepted {', '.join(task.dataset)}.")
    docs = task.dataset[split]
    order = random.Random(seed).sample(range(len(docs)), len(docs))
    samples = []
    for i in order:                                     # documents with one image, in a seeded order
        image, reason = single_image(task.doc_to_visual(docs[i]))
        if reason is None:
            samples.append((image, task.doc_to_text(docs[i]).replace("<image>", "").strip()))
        if len(samples) == n:
            break
    if not samples:
        raise ValueError(f"calib_task={task_name!r} split {split!r} has no document with exactly one image.")
    return samples, split
