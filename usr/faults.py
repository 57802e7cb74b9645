"""Deterministic crash points for tests: ``USR_FAULT_POINT=name`` kills the process there.

Crash-safety tests must stop a real process at an exact step, not after a guessed delay.
Code that has a step worth crashing at calls :func:`point` with a stable name; when the
environment names that point, the process sends itself SIGKILL (no cleanup, no ``finally``,
no flush — exactly what a kill -9 or a power cut leaves behind).

``USR_FAULT_POINT`` may list several names separated by commas; ``name:N`` fires on the
N-th time that point is reached (1-based), so a test can stop in the middle of a loop.
Every point name is listed in :data:`KNOWN_POINTS` by the module that owns it (documented
in docs/format.md), so tests can sweep them.

Concurrency tests need the opposite: hold a process at a point while another one runs, then
let it go. ``USR_PAUSE_POINT=name:FIFO`` (several separated by commas) makes the first arrival
at ``name`` open the named pipe ``FIFO`` for reading, which blocks until the test opens it for
writing (so the test knows the process is there), and then read it to EOF, which returns
when the test closes it (the release). Each point pauses once per process. A pause instead
of a sleep makes the overlap of two processes exact rather than likely.
"""

from __future__ import annotations

import os
import signal
import threading

ENV = "USR_FAULT_POINT"
PAUSE_ENV = "USR_PAUSE_POINT"

#: name -> what has happened when the point is reached. Modules register their points here.
KNOWN_POINTS: dict[str, str] = {}

_hits: dict[str, int] = {}
_paused: set[str] = set()

# The bytes-keyed dict ``os.environ`` writes through (POSIX): a point is reached several
# times per received file, and ``name in os.environ`` costs ~0.8 us (it encodes the key and
# raises KeyError on a miss) against ~20 ns here. Still live: setenv in-process is seen.
_ENV_DATA = getattr(os.environ, "_data", os.environ)
_FAULT_KEY = os.environ.encodekey(ENV) if _ENV_DATA is not os.environ else ENV
_PAUSE_KEY = os.environ.encodekey(PAUSE_ENV) if _ENV_DATA is not os.environ else PAUSE_ENV


def register(name: str, description: str) -> str:
    """Declare a crash point (at import time) and return its name, for use with point()."""
    KNOWN_POINTS[name] = description
    return name


def _wanted() -> dict[str, int]:
    spec = os.environ.get(ENV, "")
    wanted: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, nth = item.partition(":")
        wanted[name] = int(nth) if nth.isdigit() else 1
    return wanted


def _pauses() -> dict[str, str]:
    """The points ``$USR_PAUSE_POINT`` names (``name:fifo``, comma-separated), each with
    its fifo (the first one given)."""
    pauses: dict[str, str] = {}
    for item in os.environ.get(PAUSE_ENV, "").split(","):
        name, _, fifo = item.strip().partition(":")
        if fifo:
            pauses.setdefault(name, fifo)
    return pauses


def _pause(name: str) -> None:
    """Block at ``name`` until the test releases it, if ``$USR_PAUSE_POINT`` names it."""
    fifo = _pauses().get(name)
    if fifo is not None and name not in _paused:
        _paused.add(name)
        with open(fifo, "rb") as pipe:  # blocks until the test opens the write end
            while pipe.read(4096):  # returns at EOF: the test closed it
                pass


def armed(name: str) -> bool:
    """Whether ``$USR_FAULT_POINT`` or ``$USR_PAUSE_POINT`` names ``name``: work that
    another thread would do later is done first, so the point stops the process at the
    same step of its work every run (cheap when neither is set)."""
    if _FAULT_KEY in _ENV_DATA and name in _wanted():
        return True
    return _PAUSE_KEY in _ENV_DATA and name in _pauses()


_counting = threading.Lock()


def point(name: str) -> None:
    """Kill this process with SIGKILL if ``$USR_FAULT_POINT`` names ``name``, or pause it
    if ``$USR_PAUSE_POINT`` does (cheap when neither is set)."""
    if _PAUSE_KEY in _ENV_DATA:
        _pause(name)
    if _FAULT_KEY not in _ENV_DATA:
        return
    wanted = _wanted()
    if name not in wanted:
        return
    with _counting:  # points may be reached from upload threads at once
        _hits[name] = _hits.get(name, 0) + 1
        hit = _hits[name] == wanted[name]
    if hit:
        os.kill(os.getpid(), signal.SIGKILL)
