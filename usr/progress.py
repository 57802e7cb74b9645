"""Progress of a long transfer on stderr: bytes so far, rate and ETA, only on a terminal.

A push or pull of a large dataset can run for minutes; an operator at a terminal wants to
see it move, while scripts, CI logs and ``--format json`` consumers want nothing on stderr
but warnings and errors. So a :class:`Progress` draws one line, redrawn in place at most
every :data:`INTERVAL` seconds, only when its stream is a terminal, and clears it at the end.

    meter = Progress("push bu-scc", total=bytes_to_send)
    meter.update(bytes_sent_so_far)   # cheap: called once per frame
    meter.close()

``USR_PROGRESS=0`` silences it on a terminal too; ``USR_PROGRESS=1`` forces it on any
stream (for testing the rendering).
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

#: Seconds between redraws (and before the first one, so quick transfers print nothing).
INTERVAL = 0.5


def _enabled(stream: TextIO) -> bool:
    forced = os.environ.get("USR_PROGRESS")
    if forced in ("0", "1"):
        return forced == "1"
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def human_seconds(s: float) -> str:
    s = int(s + 0.5)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    """One transfer's meter. ``total`` may be None (then no percentage or ETA)."""

    def __init__(
        self,
        label: str,
        total: int | None = None,
        stream: TextIO | None = None,
        enabled: bool | None = None,
    ) -> None:
        self.label = label
        self.total = total
        self.stream = stream or sys.stderr
        self.enabled = _enabled(self.stream) if enabled is None else enabled
        self.done = 0
        self.start = time.monotonic()
        self._next = self.start + INTERVAL
        self._drawn = False

    def update(self, done: int) -> None:
        """Set the bytes moved so far; redraws when the interval has passed."""
        self.done = done
        if not self.enabled:
            return
        now = time.monotonic()
        if now >= self._next:
            self._next = now + INTERVAL
            self._draw(now)

    def add(self, n: int) -> None:
        self.update(self.done + n)

    def line(self, now: float | None = None) -> str:
        """The text of the meter (without the carriage return)."""
        elapsed = max((now or time.monotonic()) - self.start, 1e-9)
        rate = self.done / elapsed
        parts = [f"{self.label}: {human_bytes(self.done)}"]
        if self.total:
            pct = min(100.0, 100.0 * self.done / self.total)
            parts[0] += f" of {human_bytes(self.total)} ({pct:.0f}%)"
        parts.append(f"{human_bytes(rate)}/s")
        if self.total and rate > 0 and self.done < self.total:
            parts.append(f"ETA {human_seconds((self.total - self.done) / rate)}")
        return ", ".join(parts)

    def _draw(self, now: float) -> None:
        try:
            self.stream.write("\r" + self.line(now) + "\x1b[K")
            self.stream.flush()
            self._drawn = True
        except (OSError, ValueError):
            self.enabled = False

    def close(self) -> None:
        """Erase the meter line (the command prints its own summary afterwards)."""
        if self._drawn:
            try:
                self.stream.write("\r\x1b[K")
                self.stream.flush()
            except (OSError, ValueError):
                pass
            self._drawn = False
        self.enabled = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Waiting:
    """One line saying what a command waits for (``connecting to bu-scc``, ``importing
    rows.csv``), drawn on a terminal only when the wait outlasts :data:`INTERVAL` (or at
    once with ``USR_PROGRESS=1``), and cleared when the wait ends: a login or a long read
    is otherwise seconds of silence.

        with Waiting("connecting to bu-scc"):
            session = open_session(...)
    """

    def __init__(self, label: str, stream: TextIO | None = None) -> None:
        import threading

        self.label = label
        self.stream = stream or sys.stderr
        self.shown = False
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        if _enabled(self.stream):
            delay = 0.0 if os.environ.get("USR_PROGRESS") == "1" else INTERVAL
            self._timer = threading.Timer(delay, self._show)
            self._timer.daemon = True

    def _show(self) -> None:
        with self._lock:
            if self._timer is not None:
                self.stream.write(f"\rusr: {self.label} ...")
                self.stream.flush()
                self.shown = True

    def __enter__(self) -> Waiting:
        if self._timer is not None:
            self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        timer, self._timer = self._timer, None
        if timer is None:
            return
        timer.cancel()
        with self._lock:
            if self.shown:
                self.stream.write("\r\x1b[K")
                self.stream.flush()
