"""Public mode: the app as an anonymous visitor of a public Space reaches it.

On when the app runs on a Hugging Face Space (``SPACE_ID`` is set) or with ``OCCAM_APP_PUBLIC=1``;
off for a local ``python app.py`` (``OCCAM_APP_PUBLIC=0`` turns it off on a Space too). Every cap that
only a public demo needs asks this module:

* the models a visitor may pick (``allowed_models``: ``OCCAM_APP_MODELS``, default the served model,
  the toy and the tiny families), one message for every refused name (app/backend.py's model cache);
* the work one request may ask for (``Work``: generations x new tokens x prompt tokens, against
  ``OCCAM_APP_WORK_BUDGET``);
* the share of the queue one client may hold (``FairShare``, an ASGI middleware);
* ZeroGPU: ``zerogpu()`` and ``gpu(...)``, ``@spaces.GPU`` with a duration computed from the request.
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from typing import Any, Callable

log = logging.getLogger("occam.app")
OFF_WORDS = ("0", "false", "no", "off")
ON_WORDS = ("1", "true", "yes", "on")


def public_mode() -> bool:
    """Whether the app serves anonymous visitors (a Space, or ``OCCAM_APP_PUBLIC=1``)."""
    flag = os.environ.get("OCCAM_APP_PUBLIC", "").strip().lower()
    if flag in OFF_WORDS:
        return False
    return bool(os.environ.get("SPACE_ID", "").strip()) or flag in ON_WORDS


def zerogpu() -> bool:
    """Whether the app runs on a ZeroGPU Space (``SPACES_ZERO_GPU``, set by Hugging Face): each GPU call
    runs in a fresh process, so nothing captured on the GPU (CUDA graphs) outlives a call."""
    return os.environ.get("SPACES_ZERO_GPU", "").strip().lower() in ("1", "t", "true")


# ---------------------------------------------------------------------------------------------
# the models a visitor may pick
# ---------------------------------------------------------------------------------------------
def served_model() -> str:
    """The model the app starts with and always keeps: $OCCAM_APP_MODEL, else the offline toy model."""
    return os.environ.get("OCCAM_APP_MODEL", "").strip() or "toy"


def allowed_models() -> tuple[str, ...]:
    """Public mode's allow-list: $OCCAM_APP_MODELS (comma-separated), else the served model, the toy and the
    tiny families (random weights, small: they show every family's code path)."""
    from occam.archs import TINY_ARCH_NAMES
    listed = [m.strip() for m in os.environ.get("OCCAM_APP_MODELS", "").split(",") if m.strip()]
    return tuple(dict.fromkeys([served_model(), *(listed or ["toy", *TINY_ARCH_NAMES])]))


def refused_model(name: Any) -> str:
    """The one message for every name outside the allow-list: it says nothing about the name itself (whether
    it is a folder, a file, a hub id or nothing), so it maps nothing of the server."""
    return ("This public demo serves only the models in its list: " + ", ".join(allowed_models())
            + ". Run the app yourself (python app.py) for any other model.")


# ---------------------------------------------------------------------------------------------
# the work one request may ask for
# ---------------------------------------------------------------------------------------------
DEFAULT_WORK_BUDGET = 2_000_000   # token-steps: the default compare on LLaVA-1.5 (8 x 24 x ~600) is 0.12 M
CALIBRATION_PREFILLS = 51         # a calibration's worst case: 3 traced passes + 2 x 24 bisection fallbacks


@dataclass(frozen=True)
class Work:
    """What one request asks of the model: ``generations`` runs of up to ``new_tokens`` tokens each and
    ``prefills`` prompt-only runs (calibration), over prompts of ``prompt_tokens`` tokens."""

    generations: int
    new_tokens: int
    prefills: int = 0
    prompt_tokens: int = 1

    @property
    def steps(self) -> int:
        """Token-steps: each generated token (and each prompt-only run) counted once per prompt token."""
        return (self.generations * self.new_tokens + self.prefills) * self.prompt_tokens

    def describe(self) -> str:
        calib = f" + {self.prefills} prompt-only runs (calibration)" if self.prefills else ""
        return (f"{self.generations} generations x {self.new_tokens} new tokens{calib}, "
                f"x {self.prompt_tokens:,} prompt tokens = {self.steps / 1e6:.2f} M token-steps")


def work_budget() -> int | None:
    """Token-steps one request may take: $OCCAM_APP_WORK_BUDGET, else ``DEFAULT_WORK_BUDGET`` in public mode,
    unbounded locally."""
    raw = os.environ.get("OCCAM_APP_WORK_BUDGET", "").strip()
    if raw:
        try:
            return max(1, int(float(raw)))
        except ValueError:
            log.warning("OCCAM_APP_WORK_BUDGET=%r is not a number: using the default", raw)
    return DEFAULT_WORK_BUDGET if public_mode() else None


def check_work(work: Work) -> None:
    """ValueError, before any run, when ``work`` exceeds the budget; says what to lower."""
    budget = work_budget()
    if budget is not None and work.steps > budget:
        raise ValueError(f"This request asks for too much work for this demo: {work.describe()}; the limit is "
                         f"{budget / 1e6:.2f} M. Lower repeats, max new tokens, the number of sweep values or the "
                         "question's length.")


# ---------------------------------------------------------------------------------------------
# ZeroGPU: a GPU borrowed per call, for a duration said up front
# ---------------------------------------------------------------------------------------------
# Estimates, not measurements (no ZeroGPU run here): a 7B decoder step in bfloat16 with Python overhead,
# and one prompt's vision tower + prefill + scoring, on a ZeroGPU slice of an H200.
GPU_S_PER_TOKEN = 0.04
GPU_S_PER_RUN = 0.4
GPU_S_START = 5.0
GPU_S_MIN, GPU_S_MAX = 10, 120


def gpu_seconds(work: Work) -> int:
    """The duration asked of ZeroGPU for ``work`` (an estimate: see GPU_S_PER_TOKEN), in [10, 120] s."""
    s = (GPU_S_START + (work.generations + work.prefills) * GPU_S_PER_RUN
         + work.generations * work.new_tokens * GPU_S_PER_TOKEN)
    return int(min(GPU_S_MAX, max(GPU_S_MIN, math.ceil(s))))


def _spaces():
    """The ``spaces`` package of Hugging Face Spaces, or None where it is absent."""
    try:
        import spaces  # type: ignore
        return spaces
    except Exception:
        return None


def gpu(work_of: Callable[..., Work | int]):
    """``@spaces.GPU`` with a duration from ``work_of(*args, **kwargs)`` (the handler's own arguments): its
    ``Work``, or seconds. A request whose settings are invalid asks for the minimum (the handler then says
    what is wrong). The function itself where ``spaces`` is absent."""
    def decorate(fn):
        spaces = _spaces()
        if spaces is None:
            return fn

        def duration(*args, **kwargs) -> int:
            try:
                w = work_of(*args, **kwargs)
                return gpu_seconds(w) if isinstance(w, Work) else int(min(GPU_S_MAX, max(GPU_S_MIN, w)))
            except Exception:
                return GPU_S_MIN
        return spaces.GPU(duration=duration)(fn)
    return decorate


# ---------------------------------------------------------------------------------------------
# one client's share of the queue
# ---------------------------------------------------------------------------------------------
def client_share(queue_size: int) -> int:
    """Requests one client may have waiting or running at once: $OCCAM_APP_CLIENT_SHARE, else a sixteenth
    of the queue (at least 2)."""
    raw = os.environ.get("OCCAM_APP_CLIENT_SHARE", "").strip()
    if raw.isdigit() and int(raw) > 0:
        return int(raw)
    return max(2, queue_size // 16)


def client_of(headers: Any, client: Any) -> str:
    """Who sent a request: on a Space the address the Space's proxy saw (the last X-Forwarded-For entry,
    which a client cannot forge), elsewhere the socket's peer."""
    fwd = headers.get("x-forwarded-for", "") if headers is not None else ""
    if fwd and os.environ.get("SPACE_ID", "").strip():
        return fwd.split(",")[-1].strip()
    return getattr(client, "host", None) or "?"


def _event_client(event: Any) -> str | None:
    req = getattr(event, "request", None)
    return None if req is None else client_of(getattr(req, "headers", None), getattr(req, "client", None))


def queued_by(queue: Any, who: str) -> int:
    """Events of client ``who`` waiting in or running from a Gradio queue (read-only on gradio.queueing.Queue:
    ``event_queue_per_concurrency_id`` and ``active_jobs``; tests/test_app_public.py pins them)."""
    n = 0
    for eq in list(getattr(queue, "event_queue_per_concurrency_id", {}).values()):
        n += sum(1 for ev in list(eq.queue) if _event_client(ev) == who)
    for job in list(getattr(queue, "active_jobs", []) or []):
        n += sum(1 for ev in (job or []) if _event_client(ev) == who)
    return n


class FairShare:
    """ASGI middleware: in public mode, a ``queue/join`` from a client that already holds its share of the
    queue (``client_share``) is answered 429 with a message, so that one client cannot fill the queue."""

    def __init__(self, app, blocks: Any, share: int):
        self.app, self.blocks, self.share = app, blocks, share
        self.joining: dict[str, int] = {}     # joins of each client not yet in the queue (checked, then pushed)

    async def __call__(self, scope, receive, send):
        if (scope.get("type") == "http" and scope.get("method") == "POST"
                and scope.get("path", "").endswith("/queue/join") and public_mode()):
            from starlette.requests import Request
            req = Request(scope)
            who = client_of(req.headers, req.client)
            queue = getattr(self.blocks, "_queue", None)
            held = self.joining.get(who, 0) + (0 if queue is None else queued_by(queue, who))
            if held >= self.share:
                body = json.dumps({"detail": f"You already have {self.share} requests waiting or running on this "
                                             "demo: wait for them to finish, then try again."}).encode()
                await send({"type": "http.response.start", "status": 429,
                            "headers": [(b"content-type", b"application/json"), (b"retry-after", b"10")]})
                await send({"type": "http.response.body", "body": body})
                return
            self.joining[who] = self.joining.get(who, 0) + 1     # the check and this count: one event-loop step
            try:
                return await self.app(scope, receive, send)
            finally:
                self.joining[who] -= 1
                if not self.joining[who]:
                    del self.joining[who]
        await self.app(scope, receive, send)


def page_note() -> str:
    """The line the page shows in public mode (empty otherwise)."""
    if not public_mode():
        return ""
    budget = work_budget()
    cap = f"; work per request is capped at {budget / 1e6:.1f} M token-steps" if budget else ""
    return (f"**Public demo**: models limited to {', '.join(allowed_models())}{cap}; a visitor's requests "
            "share the queue fairly. Run the app yourself for any model or setting.")
