"""Public mode: the app as an anonymous visitor of a public Space reaches it.

On when the app runs on a Hugging Face Space (``SPACE_ID`` is set) or with ``OCCAM_APP_PUBLIC=1``;
off for a local ``python app.py``. Every cap that only a public demo needs asks this one function.
"""
from __future__ import annotations

import os


def public_mode() -> bool:
    """Whether the app serves anonymous visitors (a Space, or ``OCCAM_APP_PUBLIC=1``)."""
    flag = os.environ.get("OCCAM_APP_PUBLIC", "").strip().lower()
    if flag in ("0", "false", "no", "off"):
        return False
    return bool(os.environ.get("SPACE_ID", "").strip()) or flag in ("1", "true", "yes", "on")
