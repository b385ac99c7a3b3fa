"""The lmms-eval model ``occam``: a supported VLM under any OccamConfig, one image per question, greedy.

Requests are answered ``batch_size`` at a time through ``vlm.generate_batch`` (grouped by generation kwargs
with lmms-eval's ``Collator``, request order kept), and under ``accelerate launch`` each process answers its
share on its own device (``cuda:<local index>``, or the CPU); rank 0 calibrates and shares the result.
Per sample it writes a trace summary (kept tokens per stage, retention, prefill FLOPs) to
``<trace_dir>/<run>_<task>.jsonl`` and reports per-task means through lmms-eval's ``log_metrics``, so that
they land in the ``throughput`` block of the results JSON as ``avg_occam_<name>@<task>``. With several
processes each writes ``<run>_<task>.rank<r>.jsonl`` as it goes; at the end (``clean``, which lmms-eval
calls on every rank) rank 0 gathers the rows and metrics of all ranks into the one file and the results.
"""
from __future__ import annotations

import collections
import datetime
import json
import os
import random
from pathlib import Path

import torch
from lmms_eval.api.instance import GenerationResult, Instance, TokenCounts
from lmms_eval.api.model import lmms
from lmms_eval.models.model_utils.gen_metrics import log_metrics
from lmms_eval.utils import Collator
from loguru import logger
from tqdm import tqdm

import occam
from occam import budget

from . import metric_key
from .args import split_args

DTYPES = ("float32", "bfloat16", "float16")
SUMMARISED = ("retention", "final", "flops_ratio", "prefill_flops")  # per-task means in the results' throughput
PADDING = "__padding_only__"  # lmms-eval's mark on requests that only even out the ranks' shares


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


def batch_size_of(value) -> int:
    """lmms-eval's ``--batch_size`` (a string from its CLI) as a positive int; ValueError otherwise."""
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit() or int(text) < 1:
        raise ValueError(f"batch_size={value!r} is invalid for --model occam: accepted a positive integer (the "
                         "requests answered per generate_batch call); 'auto' is not supported.")
    return int(text)


class OccamLMM(lmms):
    """``--model occam``: model args are the OccamConfig fields plus pretrained, dtype, device, target_retention,
    calib_task / calib_split / calib_n / calib_seed / calib_include_path, trace_dir, label, on_unsupported;
    lmms-eval's ``--batch_size`` is the number of requests per ``generate_batch`` call."""

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
        self.batch_size_per_gpu = batch_size_of(batch_size)
        knobs, _ = split_args(knobs)
        # the launcher's variables, which lmms-eval's evaluator also shards the requests by
        self._rank, self._world_size, local_rank = (int(os.environ.get(k, v)) for k, v in
                                                    (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)))
        if self._world_size > 1 and not torch.distributed.is_initialized():
            raise RuntimeError(f"WORLD_SIZE={self._world_size} but torch.distributed is not initialized: run "
                               "lmms-eval's CLI under `accelerate launch` or `torchrun`.")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if self._world_size > 1 and str(device).startswith("cuda"):
            device = f"cuda:{local_rank}"   # one GPU per process, as lmms-eval's own models take theirs
        if dtype == "auto":
            dtype = "bfloat16" if str(device).startswith("cuda") else "float32"
        if dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r} is invalid: accepted auto, {', '.join(DTYPES)}.")
        self._device = torch.device(device)
        self.vlm = occam.load(str(pretrained), dtype=getattr(torch, dtype), device=device)
        self.run, self.config, self.calibration = self._on_rank0(lambda: (
            datetime.datetime.now().strftime("%Y%m%d_%H%M%S"),
            *self._config(knobs, target_retention, calib_task, calib_split, int(calib_n), int(calib_seed),
                          calib_include_path)))
        self.trace_dir = Path(trace_dir)
        self.trace_dir.mkdir(parents=True, exist_ok=True)
        self.info = {"run": self.run, "pretrained": str(pretrained), "family": self.vlm.family, "dtype": dtype,
                     "device": str(device), "world_size": self._world_size, "batch_size": self.batch_size_per_gpu,
                     "label": label, "target_retention": target_retention, "on_unsupported": on_unsupported,
                     "config": self.config.to_dict(), "calibration": self.calibration}
        if self._rank == 0:
            (self.trace_dir / f"{self.run}_run.json").write_text(json.dumps(self.info, indent=1))
        logger.info(f"occam: {pretrained} ({self.vlm.family}) on {device} (rank {self._rank} of "
                    f"{self._world_size}) under {self.config}; traces in {self.trace_dir}")
        self._warned_sampling = False
        self._pending = []              # (trace row, metrics) of this rank, for rank 0 to gather (several processes)

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def device(self) -> torch.device:
        return self._device

    def _on_rank0(self, compute):
        """``compute()`` run on rank 0 alone, its value (or the exception it raised) on every rank."""
        if self._world_size == 1:
            return compute()
        box = [None]
        if self._rank == 0:
            try:
                box = [(compute(), None)]
            except Exception as e:      # every rank raises it, none waits for a value that never comes
                box = [(None, e)]
        torch.distributed.broadcast_object_list(box, src=0)
        value, error = box[0]
        if error is not None:
            raise error
        return value

    # -- configuration -------------------------------------------------------------------------------
    def _config(self, knobs: dict, target, calib_task, calib_split, calib_n, calib_seed, include_path):
        """The run's OccamConfig and, when calibrated, a record of how."""
        cfg = occam.OccamConfig(**knobs)
        if calib_task and target is None:
            raise ValueError("calib_task is given without target_retention: add target_retention=<0..1>.")
        if target is None:
            return cfg, None
        target = float(target)
        spec = cfg.spec
        if not (spec.fixed_budget or spec.thresholded):
            raise ValueError(f"method={cfg.method} keeps every token: drop target_retention.")
        if spec.fixed_budget:
            if "retention" in knobs or calib_task:
                raise ValueError(f"method={cfg.method} has a fixed budget: give target_retention (or retention) "
                                 f"alone, without retention or calib_task.")
            return budget.for_target(self.vlm, cfg, target).config, None
        if not calib_task:
            raise ValueError("method=occam with target_retention needs calib_task=<lmms-eval task> (and optionally "
                             "calib_split, calib_n) to calibrate alpha / beta at start-up; or give alpha / beta.")
        samples, split = calibration_samples(calib_task, calib_split, calib_n, calib_seed, include_path)
        logger.info(f"occam: calibrating to average retention {target} on {len(samples)} samples of "
                    f"{calib_task}/{split}")
        cfg = budget.for_target(self.vlm, cfg, target, "calibrated", samples).config
        runs = self.vlm.generate_batch([img for img, _ in samples], [q for _, q in samples], cfg, max_new_tokens=0)
        achieved = sum(r.trace.counts["retention"] for r in runs) / len(samples)
        return cfg, {"task": calib_task, "split": split, "n": len(samples), "seed": calib_seed, "target": target,
                     "achieved": achieved, "alpha": cfg.alpha, "beta": cfg.beta}

    # -- lmms-eval interface -------------------------------------------------------------------------
    def generate_until(self, requests: list[Instance]) -> list[GenerationResult]:
        # one group per generation kwargs (one max_new_tokens per generate_batch call); request order kept
        collator = Collator(requests, lambda req: 0, group_fn=lambda req: req.args[1], grouping=True)
        out = []
        with tqdm(total=len(requests), disable=self.rank != 0, desc="occam") as bar:
            for chunk in collator.get_batched(n=self.batch_size):
                out.extend(self._answer_batch(chunk))
                bar.update(len(chunk))
        return collator.get_original(out)

    def _answer_batch(self, chunk: list[Instance]) -> list[GenerationResult]:
        """The answers to requests that share their generation kwargs, with one ``generate_batch`` call."""
        gen_kwargs = chunk[0].args[1]
        self._check_sampling(gen_kwargs)
        until = gen_kwargs.get("until") or []
        until = [until] if isinstance(until, str) else until
        out, todo = [None] * len(chunk), []
        for i, req in enumerate(chunk):
            context, _, doc_to_visual, doc_id, task, split = req.args
            if req.metadata.get(PADDING):   # lmms-eval drops its answer: nothing to run or trace
                out[i] = GenerationResult(text="")
                continue
            image, reason = single_image(doc_to_visual(self.task_dict[task][split][doc_id]))
            if reason:
                out[i] = self._unanswered(req, reason, NotImplementedError(
                    f"--model occam runs one image per question; {task} doc {doc_id} has {reason}. Pass "
                    f"on_unsupported=skip to answer such documents with an empty string (listed as skipped in "
                    f"the traces)."))
            else:
                todo.append((i, req, image, context.replace("<image>", "").strip()))
        results = self._generate([t[2:] for t in todo], int(gen_kwargs.get("max_new_tokens", 16)))
        for (i, req, *_), res in zip(todo, results):
            out[i] = self._unanswered(req, str(res), ValueError(
                f"--model occam cannot answer {req.args[4]} doc {req.args[3]}: {res} Pass on_unsupported=skip to "
                f"answer such documents with an empty string (listed as skipped in the traces).")) \
                if isinstance(res, Exception) else self._answered(req, res, until)
        return out

    def _generate(self, inputs: list[tuple], max_new_tokens: int) -> list:
        """A Result per (image, question), or the ValueError that request alone raised (bad input): when the
        batch fails, its requests run one by one so that a bad one fails alone and the others are answered."""
        if len(inputs) > 1:
            try:
                return self.vlm.generate_batch(*map(list, zip(*inputs)), self.config, max_new_tokens)
            except Exception as e:
                logger.warning(f"occam: a batch of {len(inputs)} failed ({type(e).__name__}: {e}); answering its "
                               f"requests one at a time")
        out = []
        for image, question in inputs:
            try:
                out.append(self.vlm.generate(image, question, self.config, max_new_tokens=max_new_tokens))
            except ValueError as e:
                out.append(e)
        return out

    def _answered(self, req: Instance, res: occam.Result, until: list[str]) -> GenerationResult:
        text = cut(res.text, until)
        row = trace_summary(res)
        seconds = res.timings["total_s"]
        self._record(req, {"text": text, **row}, {
            "total_elapsed_time": seconds, "total_gen_tokens": len(res.token_ids),
            "avg_speed": len(res.token_ids) / max(seconds, 1e-9),
            "additional_metrics": {metric_key("skipped", req.args[4]): 0,
                                   **{metric_key(k, req.args[4]): row[k] for k in SUMMARISED}}})
        return GenerationResult(text=text, token_counts=TokenCounts(output_tokens=row["new_tokens"]))

    def _unanswered(self, req: Instance, reason: str, error: Exception) -> GenerationResult:
        """``error`` raised, or (``on_unsupported=skip``) the empty answer with ``reason`` in the traces."""
        if self.on_unsupported == "error":
            raise error
        self._record(req, {"text": "", "skipped": reason}, {
            "total_elapsed_time": 0.0, "total_gen_tokens": 0, "avg_speed": 0.0,
            "additional_metrics": {metric_key("skipped", req.args[4]): 1}})
        return GenerationResult(text="")

    def _record(self, req: Instance, row: dict, metrics: dict) -> None:
        """One trace row to this process's file; its metrics to lmms-eval (or kept for rank 0 to gather)."""
        _, _, _, doc_id, task, split = req.args
        row = {"task": task, "split": split, "doc_id": doc_id, **row}
        with open(self._trace_file(task, self._rank if self._world_size > 1 else None), "a") as f:
            f.write(json.dumps(row) + "\n")
        if self._world_size > 1:
            self._pending.append((row, metrics))
        else:
            log_metrics(**metrics)

    def _trace_file(self, task: str, rank: int | None = None) -> Path:
        return self.trace_dir / (f"{self.run}_{task}.jsonl" if rank is None else f"{self.run}_{task}.rank{rank}.jsonl")

    def clean(self):
        """lmms-eval calls it on every rank once the requests are answered: rank 0 gathers the ranks' trace rows
        (into ``<run>_<task>.jsonl``, by doc_id, as one process writes them) and metrics; the rank files go."""
        if self._world_size > 1:
            parts = [None] * self._world_size if self._rank == 0 else None
            torch.distributed.gather_object(self._pending, parts, dst=0)
            tasks = {row["task"] for row, _ in self._pending}
            self._pending = []
            if self._rank == 0:
                rows = collections.defaultdict(list)
                for row, metrics in (record for part in parts for record in part):
                    log_metrics(**metrics)
                    rows[row["task"]].append(row)
                for task, task_rows in rows.items():
                    with open(self._trace_file(task), "a") as f:
                        f.writelines(json.dumps(r) + "\n" for r in sorted(task_rows, key=lambda r: r["doc_id"]))
            torch.distributed.barrier()
            for task in tasks:
                self._trace_file(task, self._rank).unlink(missing_ok=True)
        super().clean()

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
