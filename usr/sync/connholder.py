"""The warm-auth connection holder (filled in below); commands work without it."""

from __future__ import annotations

from typing import Any


def try_session(profile: Any, label: str, lock_timeout: float | None) -> Any | None:
    """A session through a live holder for ``profile``, or None when there is none."""
    return None
