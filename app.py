"""Entry point: ``python app.py`` launches the OccamToken web app (Hugging Face Spaces runs this file).

Environment: GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (where to listen; default 127.0.0.1:7860),
OCCAM_APP_MODEL (model served first, default "toy"), OCCAM_APP_CONCURRENCY (requests in progress at
once, default 32; 2 with batching off), OCCAM_APP_QUEUE (waiting requests before "queue full", default 256),
OCCAM_APP_BATCH_WINDOW_MS / OCCAM_APP_MAX_BATCH (runs of concurrent requests answered together: how long
the oldest waits for company, how many at most; OCCAM_APP_MAX_BATCH=1 turns batching off; app/batcher.py;
sizing in docs/load.md),
OCCAM_APP_PRELOAD=0 (do not load the default model at start), OCCAM_APP_CACHE_EXAMPLES (lazy|eager|0).
Public mode (on a Space, or OCCAM_APP_PUBLIC=1; app/public.py): OCCAM_APP_MODELS (the allow-list),
OCCAM_APP_WORK_BUDGET (token-steps per request), OCCAM_APP_CLIENT_SHARE (requests one client may queue).
"""
from __future__ import annotations

import atexit
import logging
import os
import shutil
import signal
import sys
import tempfile
import warnings

from app import public

if public.zerogpu():   # ZeroGPU: `spaces` patches CUDA when imported, so before torch (imported by the backend)
    import spaces  # noqa: F401

from app import backend  # noqa: E402
from app.ui import build_demo, launch_options  # noqa: E402


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # transformers' deprecation notice for the decoder layers' keyword, raised by every run: not the user's concern
    warnings.filterwarnings("ignore", message=r".*past_key_values.* is deprecated", category=FutureWarning)
    # cached example outputs live with this process (never stale after a model change, nothing in the repo)
    if "GRADIO_EXAMPLES_CACHE" not in os.environ:
        cache = tempfile.mkdtemp(prefix="occam_examples_")
        os.environ["GRADIO_EXAMPLES_CACHE"] = cache
        atexit.register(shutil.rmtree, cache, True)  # removed when the server stops
    if os.environ.get("OCCAM_APP_PRELOAD", "1") != "0":
        try:  # load once at start; a failure is logged (by the cache), the app still starts and says why on use
            backend.MODELS.get(backend.default_model())
        except backend.ModelLoadError:
            pass
    # a stop by SIGTERM (process managers, containers) exits like Ctrl+C, so the atexit clean-ups run
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    demo = build_demo()
    # server name / port from GRADIO_SERVER_NAME / GRADIO_SERVER_PORT; limits and middleware: ui.launch_options
    demo.launch(**launch_options(demo))


if __name__ == "__main__":
    main()
