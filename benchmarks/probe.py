"""Run one ``usr`` command in this process and log what it cost, for the benchmark.

Usage (the benchmark builds these lines; not for people)::

    python benchmarks/probe.py --log FILE -- push bench/ds bench -y
    python benchmarks/probe.py --log FILE -- plumbing serve --root DIR   # as remote_usr

It counts, without changing usr's code:

* bytes through every protocol channel (what ``FrameIO`` reads and writes: the usr
  protocol's own payload and framing, not SSH's);
* round trips: each time this end wrote and then had to wait for a reply (a write
  followed by a read). The first one of a session is the ``hello`` handshake;
* peak RSS of the process (``VmHWM``, which covers the interpreter, imports, asyncssh
  and everything else a user pays for) and ``rchar`` from ``/proc/self/io``.

One JSON line per process is appended to ``FILE`` at exit (``O_APPEND``: client and server
processes may share a file). Nothing is written on stdout, which carries the protocol when
this runs as the remote ``usr``.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

STATS: dict[str, int] = {"sessions": 0, "bytes_in": 0, "bytes_out": 0, "turns": 0}


class CountingChannel:
    """Wraps a protocol byte channel; counts bytes and write-then-read turns."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.wrote = False

    def read(self, n: int) -> bytes:
        if self.wrote:
            STATS["turns"] += 1
            self.wrote = False
        data = self.inner.read(n)
        STATS["bytes_in"] += len(data)
        return data

    def write(self, data: bytes) -> None:
        STATS["bytes_out"] += len(data)
        self.wrote = True
        self.inner.write(data)

    def flush(self) -> None:
        self.inner.flush()


def _instrument() -> None:
    from usr.sync import protocol

    original = protocol.FrameIO.__init__

    def counting_init(self: Any, channel: Any, *args: Any, **kwargs: Any) -> None:
        STATS["sessions"] += 1
        original(self, CountingChannel(channel), *args, **kwargs)

    protocol.FrameIO.__init__ = counting_init  # type: ignore[method-assign]


def _proc_io() -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            key, _, value = line.partition(":")
            out[key.strip()] = int(value)
    except OSError:
        pass
    return out


def _peak_rss_kib() -> int:
    """Peak RSS of this process image (``VmHWM``). Not ``ru_maxrss``: Linux carries that
    over from before ``exec``, so a child forked from a big benchmark process would report
    the benchmark's size instead of its own."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main(argv: list[str]) -> int:
    log = argv[argv.index("--log") + 1]
    args = argv[argv.index("--") + 1 :]
    start = time.perf_counter()
    code = 0
    try:
        _instrument()
        from porcelain.entry import main as usr_main

        usr_main(args)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        io = _proc_io()
        me = resource.getrusage(resource.RUSAGE_SELF)
        line = {
            "pid": os.getpid(),
            "args": args[:3],
            "exit": code,
            "seconds": time.perf_counter() - start,
            "maxrss_kib": _peak_rss_kib(),
            "cpu_seconds": round(me.ru_utime + me.ru_stime, 3),
            "children_maxrss_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
            "rchar": io.get("rchar", 0),
            "read_bytes": io.get("read_bytes", 0),
            **STATS,
        }
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (json.dumps(line) + "\n").encode())
        finally:
            os.close(fd)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
