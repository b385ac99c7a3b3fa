"""Request batching: runs of the same model that arrive within a short window are answered together by
one ``vlm.generate_batch`` call, each under its own ``OccamConfig`` (docs/load.md says why here and not
with Gradio's batched events).

One ``Batcher`` per loaded model (``for_model``) owns a bounded queue of pending runs and one worker
thread. A run is (image, question, config, max_new_tokens); the worker takes the oldest pending run,
waits until ``window_ms`` after it arrived (or until ``max_batch`` runs with the same
``max_new_tokens`` are pending), and answers them with one ``generate_batch`` call. The batched engine
gives every request exactly what it gets alone (tests/test_batch.py); the config stays the only
validator. When a batch fails (``generate_batch`` checks every input first and refuses the whole batch
for one bad request; a run-time failure stops the whole call), each of its runs is run again ALONE, so
a bad request fails with the message it gets alone and the others are answered.

``BatchedVLM`` wraps a loaded model so that its ``generate`` / ``generate_batch`` / ``calibrate`` go
through the model's batcher; every other attribute is the model's own. The backend uses it for every
run of every endpoint, so the full runs, pruned runs, calibrations, method comparisons and sweeps of
many visitors share batches.

Settings (environment, read when a batcher is made): ``OCCAM_APP_BATCH_WINDOW_MS`` (how long the oldest
pending run waits for company), ``OCCAM_APP_MAX_BATCH`` (runs per ``generate_batch`` call; 1 = no
batching: every run calls ``vlm.generate`` in the caller's thread, as before batching),
``OCCAM_APP_BATCH_QUEUE`` (pending runs before a submitter waits; it waits at most
``OCCAM_APP_BATCH_WAIT_S`` seconds for room, then gets ``Busy``). State: per batcher only (its queue,
its thread, its counters); the registry of batchers is keyed weakly by model, so an evicted model
takes its batcher with it, and an idle worker thread exits by itself.
"""
from __future__ import annotations

import functools
import logging
import os
import threading
import time
import weakref
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("occam.app")

# Defaults sized in docs/load.md (python -m app.sizing, toy model, 2-core CPU).
DEFAULT_WINDOW_MS = 10.0
DEFAULT_MAX_BATCH = 32
DEFAULT_QUEUE = 1024
DEFAULT_WAIT_S = 120.0
IDLE_EXIT_S = 30.0


class Busy(RuntimeError):
    """The model's queue of pending runs stayed full for the whole wait."""


def _env_number(name: str, default: float, kind=float, low: float = 0.0) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        v = kind(raw)
    except ValueError:
        raise ValueError(f"${name}={raw!r} is invalid: accepted a number >= {low:g}.") from None
    if not v >= low:
        raise ValueError(f"${name}={raw!r} is invalid: accepted a number >= {low:g}.")
    return v


def batching_on() -> bool:
    """Whether the environment asks for batching ($OCCAM_APP_MAX_BATCH > 1, the default)."""
    return int(_env_number("OCCAM_APP_MAX_BATCH", DEFAULT_MAX_BATCH, int, 1)) > 1


@dataclass
class Run:
    """One pending run: the model, its inputs, and the future its caller waits on."""

    vlm: Any
    image: Any
    question: Any
    config: Any
    max_new_tokens: int
    request: Any = None                  # the backend request it belongs to (``request``), if any
    future: Future = field(default_factory=Future)
    arrived: float = field(default_factory=time.monotonic)


class Batcher:
    """Pending runs of one model, answered in batches by one worker thread (see the module text)."""

    def __init__(self, window_ms: float | None = None, max_batch: int | None = None, max_queue: int | None = None,
                 wait_s: float | None = None, idle_s: float = IDLE_EXIT_S):
        self.window_s = (_env_number("OCCAM_APP_BATCH_WINDOW_MS", DEFAULT_WINDOW_MS)
                         if window_ms is None else float(window_ms)) / 1000.0
        self.max_batch = int(_env_number("OCCAM_APP_MAX_BATCH", DEFAULT_MAX_BATCH, int, 1)
                             if max_batch is None else max_batch)
        self.max_queue = int(_env_number("OCCAM_APP_BATCH_QUEUE", DEFAULT_QUEUE, int, 1)
                             if max_queue is None else max_queue)
        self.wait_s = _env_number("OCCAM_APP_BATCH_WAIT_S", DEFAULT_WAIT_S) if wait_s is None else float(wait_s)
        if self.window_s < 0 or self.max_batch < 1 or self.max_queue < 1 or self.wait_s < 0:
            raise ValueError(f"Batcher settings are invalid (window {self.window_s * 1000:g} ms, max batch "
                             f"{self.max_batch}, queue {self.max_queue}, wait {self.wait_s:g} s): accepted a window "
                             ">= 0, a max batch >= 1, a queue >= 1 and a wait >= 0.")
        self.idle_s = idle_s
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._cond = threading.Condition()
        self._pending: deque[Run] = deque()
        self._thread: threading.Thread | None = None
        self._sizes: list[int] = []        # size of every generate_batch call (for sizing; bounded below)
        self._fallbacks = 0
        self._active: set = set()          # backend requests now running that use this model

    @property
    def enabled(self) -> bool:
        return self.max_batch > 1

    # -- callers -----------------------------------------------------------------------------
    def submit(self, vlm: Any, image: Any, question: Any, config: Any = None, max_new_tokens: int = 64) -> Future:
        """Queue one run; its future holds the ``Result`` or the exception the run raised."""
        run = Run(vlm, image, question, config, max_new_tokens, getattr(_local, "request", None))
        if not self.enabled:                 # no batching: the caller's own thread, exactly as before
            _settle(run, lambda: vlm.generate(image, question, config=config, max_new_tokens=max_new_tokens))
            return run.future
        if os.getpid() != self._pid:         # a forked worker (e.g. ZeroGPU): the parent's thread is not here
            self._reset()
        with self._cond:
            deadline = time.monotonic() + self.wait_s
            while len(self._pending) >= self.max_queue:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Busy(f"The server is busy: {len(self._pending)} runs of this model are waiting (the limit "
                               f"is {self.max_queue}). Try again in a moment.")
                self._cond.wait(left)
            run.arrived = time.monotonic()
            if run.request is not None and run.request not in self._active:
                self._active.add(run.request)
                run.request.batchers.append(self)
            self._pending.append(run)
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="occam-batcher", daemon=True)
                self._thread.start()
            self._cond.notify_all()
        return run.future

    def generate(self, vlm: Any, image: Any, question: Any, config: Any = None, max_new_tokens: int = 64):
        """One run through the batcher: what ``vlm.generate`` returns for it alone (or raises)."""
        return self.submit(vlm, image, question, config, max_new_tokens).result()

    def generate_many(self, vlm: Any, images: list, questions: list, configs: list, max_new_tokens: int = 64) -> list:
        """Several runs submitted at once (they can share one batch); results in order. The first failure
        (in order) is raised, after every run has finished."""
        futures = [self.submit(vlm, im, q, c, max_new_tokens) for im, q, c in zip(images, questions, configs)]
        errors = [f.exception() for f in futures]
        for e in errors:
            if e is not None:
                raise e
        return [f.result() for f in futures]

    def _leave(self, request: "_Request") -> None:
        with self._cond:
            self._active.discard(request)
            self._cond.notify_all()

    def stats(self) -> dict:
        """Batches run so far (sizes of the last 10,000 generate_batch calls) and runs retried alone."""
        with self._cond:
            sizes = list(self._sizes)
            pending = len(self._pending)
        return {"batches": len(sizes), "runs": sum(sizes), "largest": max(sizes, default=0),
                "mean": sum(sizes) / len(sizes) if sizes else None, "pending": pending,
                "retried_alone": self._fallbacks, "window_ms": self.window_s * 1000, "max_batch": self.max_batch,
                "max_queue": self.max_queue}

    # -- the worker --------------------------------------------------------------------------
    def _take(self) -> list[Run] | None:
        """The next batch: the oldest pending run and up to max_batch - 1 later ones with the same
        max_new_tokens, once the window after the oldest one's arrival has passed, the batch is full, or
        every backend request now using this model has a run pending (no one else can add one: a lone
        visitor never waits for the window). None when nothing arrived for idle_s (the thread exits)."""
        with self._cond:
            idle_until = time.monotonic() + self.idle_s
            while not self._pending:
                left = idle_until - time.monotonic()
                if left <= 0:
                    self._thread = None
                    return None
                self._cond.wait(left)
            while True:
                first = self._pending[0]
                same = [r for r in self._pending if r.max_new_tokens == first.max_new_tokens]
                left = first.arrived + self.window_s - time.monotonic()
                if len(same) >= self.max_batch or left <= 0:
                    break
                if self._active and self._active <= {r.request for r in self._pending}:
                    break
                self._cond.wait(left)
            batch = same[: self.max_batch]
            taken = set(map(id, batch))
            self._pending = deque(r for r in self._pending if id(r) not in taken)
            self._sizes.append(len(batch))
            del self._sizes[:-10000]
            self._cond.notify_all()          # room in the queue for waiting submitters
            return batch

    def _work(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            try:
                self._run(batch)
            except BaseException as e:  # pragma: no cover - never leave a caller waiting
                for r in batch:
                    if not r.future.done():
                        r.future.set_exception(e)
                if not isinstance(e, Exception):
                    raise

    def _run(self, batch: list[Run]) -> None:
        vlm = batch[0].vlm
        gen_batch = getattr(vlm, "generate_batch", None)
        if len(batch) == 1 or gen_batch is None:
            for r in batch:
                _settle(r, lambda r=r: r.vlm.generate(r.image, r.question, config=r.config,
                                                      max_new_tokens=r.max_new_tokens))
            return
        groups: dict[int, list[Run]] = {}
        for r in batch:                      # one batch holds runs of one model; by identity, to be sure
            groups.setdefault(id(r.vlm), []).append(r)
        for runs in groups.values():
            m = runs[0].vlm
            try:
                results = m.generate_batch([r.image for r in runs], [r.question for r in runs],
                                           [r.config for r in runs], max_new_tokens=runs[0].max_new_tokens)
            except Exception as e:
                # one bad request refuses the whole batch (inputs are checked first) or stops it: each run
                # again alone, so that each fails (or not) with exactly what it gets alone
                log.info("a batch of %d failed (%s); running its requests one by one", len(runs), e)
                self._fallbacks += len(runs)
                for r in runs:
                    _settle(r, lambda r=r: r.vlm.generate(r.image, r.question, config=r.config,
                                                          max_new_tokens=r.max_new_tokens))
                continue
            for r, res in zip(runs, results):
                r.future.set_result(res)


def _settle(run: Run, fn) -> None:
    try:
        run.future.set_result(fn())
    except Exception as e:
        run.future.set_exception(e)


# ---------------------------------------------------------------------------------------------
# backend requests: which runs belong together (a thread-local mark, one per running request)
# ---------------------------------------------------------------------------------------------
_local = threading.local()


class _Request:
    """A backend request in progress; the batchers it used, so that it leaves them when it ends."""

    __slots__ = ("batchers", "__weakref__")

    def __init__(self):
        self.batchers: list[Batcher] = []


def request(fn):
    """Marks a backend entry point (run_compare, run_methods, run_sweep): while it runs, the batchers
    know one more request may submit a run soon, and stop waiting for it once it ends. Nested calls
    belong to the outer request."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if getattr(_local, "request", None) is not None:
            return fn(*args, **kwargs)
        req = _local.request = _Request()
        try:
            return fn(*args, **kwargs)
        finally:
            _local.request = None
            for b in req.batchers:
                b._leave(req)

    return wrapper


# ---------------------------------------------------------------------------------------------
# one batcher per loaded model
# ---------------------------------------------------------------------------------------------
_REGISTRY: "weakref.WeakKeyDictionary[Any, Batcher]" = weakref.WeakKeyDictionary()
_REGISTRY_LOCK = threading.Lock()


def for_model(vlm: Any) -> Batcher:
    """The batcher of a loaded model (made on first use, with the environment's settings)."""
    with _REGISTRY_LOCK:
        b = _REGISTRY.get(vlm)
        if b is None:
            b = _REGISTRY[vlm] = Batcher()
        return b


class BatchedVLM:
    """A loaded model whose runs go through a batcher; every other attribute is the model's own."""

    def __init__(self, vlm: Any, batcher: Batcher | None = None):
        self._vlm = vlm
        self._batcher = batcher or for_model(vlm)

    @property
    def unwrapped(self) -> Any:
        return self._vlm

    @property
    def batcher(self) -> Batcher:
        return self._batcher

    def __getattr__(self, name: str) -> Any:
        return getattr(self._vlm, name)

    def generate(self, image: Any, question: Any, config: Any = None, max_new_tokens: int = 64):
        return self._batcher.generate(self._vlm, image, question, config, max_new_tokens)

    def generate_batch(self, images: list, questions: list, configs: Any = None, max_new_tokens: int = 64) -> list:
        if configs is None or not isinstance(configs, (list, tuple)):
            configs = [configs] * len(images)
        if len(configs) != len(images) or len(questions) != len(images):
            raise ValueError(f"images, questions and configs differ in length ({len(images)}, {len(questions)}, "
                             f"{len(configs)}): accepted one of each per request.")
        return self._batcher.generate_many(self._vlm, list(images), list(questions), list(configs), max_new_tokens)

    def calibrate(self, samples, target: float, config: Any = None, tol: float = 0.005, iters: int = 24):
        """``vlm.calibrate``, its runs through the batcher (the same runs, so the same alpha / beta)."""
        from occam.calibration import calibrate
        return calibrate(self, samples, target, config, tol, iters)


def together(vlm: Any, runs: list[tuple[Any, Any, Any]], max_new_tokens: int) -> list:
    """Several (image, question, config) runs submitted at once, so that they can share a batch; each
    result (and each failure) exactly what the run gets alone. Without a batcher: one after another."""
    if isinstance(vlm, BatchedVLM):
        return vlm.batcher.generate_many(vlm.unwrapped, *map(list, zip(*runs)), max_new_tokens)
    return [vlm.generate(im, q, config=c, max_new_tokens=max_new_tokens) for im, q, c in runs]


def batched(vlm: Any) -> Any:
    """``vlm`` with its runs batched (already wrapped, or batching off: the model itself)."""
    if isinstance(vlm, BatchedVLM):
        return vlm
    b = for_model(vlm)
    return BatchedVLM(vlm, b) if b.enabled else vlm
