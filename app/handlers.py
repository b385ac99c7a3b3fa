"""What every event handler of the app shares (the image, video and runs tabs): failures reach the user
as a ``gr.Error`` carrying the library's message, and progress reports that never fail a run."""
from __future__ import annotations

import functools
import logging
from typing import Callable

import gradio as gr

from .backend import ModelLoadError

log = logging.getLogger("occam.app")
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, ModelLoadError)   # bad input or settings: said as is


def user_errors(fn):
    """Every failure of a handler reaches the user as a gr.Error with its message; the app goes on."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except USER_ERRORS as e:
            raise gr.Error(str(e), print_exception=False) from None
        except Exception as e:  # a bug or resource problem: still a message, never a crash
            log.exception("handler %s failed", fn.__name__)
            raise gr.Error(f"Unexpected error ({type(e).__name__}): {e}") from None

    return wrapper


def reporter(progress) -> Callable[[float, str], None]:
    """``progress`` (a gr.Progress, or None) as the backend's ``(fraction, description)`` callback."""
    def report(fraction: float, desc: str = "") -> None:
        if progress is not None:
            try:
                progress(fraction, desc=desc)
            except Exception:  # progress outside a request (tests, scripts): ignore
                pass
    return report
