"""Entry point: ``python app.py`` launches the OccamToken web app (Hugging Face Spaces runs this file).

Environment: GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (where to listen; default 127.0.0.1:7860),
OCCAM_APP_MODEL (model served first, default "toy"), OCCAM_APP_CONCURRENCY (requests in progress at
once, default 32; 2 with batching off), OCCAM_APP_QUEUE (waiting requests before "queue full", default 256),
OCCAM_APP_BATCH_WINDOW_MS / OCCAM_APP_MAX_BATCH (runs of concurrent requests answered together: how long
the oldest waits for company, how many at most; OCCAM_APP_MAX_BATCH=1 turns batching off; app/batcher.py;
sizing in docs/load.md),
OCCAM_APP_PRELOAD=0 (do not load the default model at start), OCCAM_APP_CACHE_EXAMPLES (lazy|eager|0).
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

from app import backend, spec
from app.ui import build_demo


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
    # server name / port from GRADIO_SERVER_NAME / GRADIO_SERVER_PORT; the method spec is the one file served as is
    demo.launch(max_file_size="64mb", allowed_paths=[str(spec.METHOD_DOC)])


if __name__ == "__main__":
    main()
