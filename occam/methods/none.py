"""None: the unmodified model (every visual token, no cut); the reference every method is compared to."""
from __future__ import annotations

from .base import Method


class Full(Method):
    """``Method``'s defaults are exactly "do nothing"; this names it."""
