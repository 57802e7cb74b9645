"""Dataset locks: ``fcntl`` locks taken by usr itself, with a bounded wait and a named holder.

No external ``flock`` binary is needed on the remote. A lock file holds one JSON line naming
the holder (host, pid, since, what) so a waiter that times out can say who holds it. Locks
are held only for short critical sections; callers must never stream objects under one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from usr.errors import LockTimeout

DEFAULT_TIMEOUT = 30.0
_POLL = 0.05


def _describe_holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return "unknown holder"
    if not info:
        return "unknown holder"
    return (
        f"held by {info.get('what', 'usr')} on {info.get('host', '?')} "
        f"pid {info.get('pid', '?')} since {info.get('since', '?')}"
    )


@contextlib.contextmanager
def hold(path: Path, what: str = "usr", timeout: float | None = None) -> Iterator[None]:
    """Hold an exclusive ``fcntl`` lock on ``path`` for the ``with`` block.

    Waits at most ``timeout`` seconds (default ``$USR_LOCK_TIMEOUT`` or 30), then raises
    :class:`LockTimeout` naming the holder. The lock dies with the process, so a crash never
    leaves a stale lock behind.
    """
    if timeout is None:
        timeout = float(os.environ.get("USR_LOCK_TIMEOUT", DEFAULT_TIMEOUT))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockTimeout(
                        f"lock {path} not taken within {timeout:g}s: {_describe_holder(path)}",
                        "wait for it to finish, or raise --lock-timeout / $USR_LOCK_TIMEOUT",
                    ) from None
                time.sleep(_POLL)
        stamp = {
            "what": what,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(stamp) + "\n").encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def dataset_lock(dataset_dir: Path, what: str = "usr", timeout: float | None = None):
    """The dataset lock (``<dataset>/.usr.lock``): recording states, ref CAS with checkout."""
    return hold(dataset_dir / ".usr.lock", what=what, timeout=timeout)


def events_lock(dataset_dir: Path, timeout: float | None = None, what: str = "events append"):
    """The events lock (``<dataset>/.events.lock``) that every ``.events.log`` append takes.

    A checkout that may replace ``.events.log`` holds it too (after the dataset lock), so a
    line appended meanwhile waits and lands after promotion instead of being overwritten.
    """
    return hold(dataset_dir / ".events.lock", what=what, timeout=timeout)
