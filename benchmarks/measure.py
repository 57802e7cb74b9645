"""Running one measured command: wall time, exit status, peak RSS, probe and wire counters.

Commands run as real child processes. Peak RSS comes from ``wait4`` of that child (so it
covers exactly that process tree) and, for usr itself, from the probe's own log line on
each side; wire bytes come from the counting proxy's counters before and after.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PROBE = REPO / "benchmarks" / "probe.py"


@dataclass
class Run:
    """One finished command."""

    seconds: float
    exit: int
    stdout: str
    stderr: str
    maxrss_mib: float
    cpu_seconds: float = 0.0
    wire_up: int = 0
    wire_down: int = 0
    connections: int = 0
    client: dict[str, Any] = field(default_factory=dict)
    server: list[dict[str, Any]] = field(default_factory=list)
    #: The program is not installed here: no figure, reported as missing.
    missing: bool = False

    @classmethod
    def absent(cls) -> Run:
        """A baseline that could not run because its program is missing."""
        return cls(0.0, 0, "", "", 0.0, missing=True)

    @property
    def wire_bytes(self) -> int:
        return self.wire_up + self.wire_down

    def check(self, what: str) -> Run:
        if self.exit != 0:
            raise RuntimeError(f"{what} failed (exit {self.exit}): {self.stderr.strip()[-800:]}")
        return self

    def server_rss_mib(self) -> float:
        return max((s["maxrss_kib"] for s in self.server), default=0) / 1024

    def client_rss_mib(self) -> float:
        return self.client.get("maxrss_kib", 0) / 1024 or self.maxrss_mib

    def server_cpu_seconds(self) -> float:
        return sum(s.get("cpu_seconds", 0.0) for s in self.server)

    def round_trips_after_handshake(self) -> int:
        """Client turns that waited for a reply, minus one ``hello`` per session."""
        return int(self.client.get("turns", 0)) - int(self.client.get("sessions", 0))


def warm_memory(limit_bytes: int) -> dict[str, float]:
    """Touch up to ``limit_bytes`` of the machine's free memory once, unmeasured.

    On a freshly booted VM the first write to each page of guest memory traps to the
    hypervisor: measured here, writing 512 MiB to the page cache took 1.7 s on a new VM and
    0.14 s once its memory had been touched (touching 18 GiB took 68 s, 54 s of it system
    time). usr writes its data twice on the receiving side (pack, then working copy) where
    ``cat`` writes it once, so that one-off cost would fall twice as hard on usr. Any
    machine that has been up a while has paid it already; so does this run, before
    measuring. Leaves 2 GiB free.
    """
    import mmap

    available = 0
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    size = max(0, min(limit_bytes, available - (2 << 30)))
    size -= size % (64 << 20)
    start = time.perf_counter()
    if size:
        block = b"\1" * (64 << 20)
        area = mmap.mmap(-1, size)
        for offset in range(0, size, len(block)):
            area[offset : offset + len(block)] = block
        area.close()
    return {"bytes": size, "seconds": round(time.perf_counter() - start, 1)}


def clean_env() -> dict[str, str]:
    """The caller's environment without any ``USR_*`` setting, with this checkout first.

    ``PYTHONDONTWRITEBYTECODE`` is dropped: with it set (as in some sandboxes) every client
    start recompiles asyncssh and usr from source — measured 0.62 s for ``import asyncssh``
    against 0.17 s from cached bytecode — which no installed usr pays. The remote side,
    started by sshd with a fresh environment, caches bytecode either way.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("USR_")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPATH"] = str(REPO)
    return env


def run(
    argv: list[str] | str,
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    proxy: Any = None,
) -> Run:
    """Run ``argv`` (a shell line when a str), wait with ``wait4`` for its rusage."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        before = proxy.counters() if proxy is not None else (0, 0, 0)
        start = time.perf_counter()
        proc = subprocess.Popen(
            argv,
            shell=isinstance(argv, str),
            executable="/bin/bash" if isinstance(argv, str) else None,
            cwd=cwd,
            env=env or clean_env(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        after = proxy.counters() if proxy is not None else (0, 0, 0)
        if proxy is not None:  # let the relay count the last in-flight bytes
            time.sleep(0.05)
            after = proxy.counters()
        out.seek(0)
        err.seek(0)
        return Run(
            seconds=seconds,
            exit=proc.returncode,
            stdout=out.read().decode("utf-8", "replace"),
            stderr=err.read().decode("utf-8", "replace"),
            maxrss_mib=usage.ru_maxrss / 1024,
            cpu_seconds=usage.ru_utime + usage.ru_stime,
            wire_up=after[0] - before[0],
            wire_down=after[1] - before[1],
            connections=after[2] - before[2],
        )


class UsrRunner:
    """Runs ``usr`` through the probe and attaches the client's and server's log lines."""

    def __init__(self, root: Path, remotes: Path, server_log: Path, workdir: Path) -> None:
        self.root = root
        self.remotes = remotes
        self.server_log = server_log
        self.workdir = workdir
        self.count = 0

    def __call__(self, *args: str, proxy: Any = None, root: Path | None = None) -> Run:
        self.count += 1
        client_log = self.workdir / f"probe-client-{self.count:04d}.jsonl"
        offset = self.server_log.stat().st_size if self.server_log.exists() else 0
        argv = [sys.executable, str(PROBE), "--log", str(client_log), "--"]
        argv += ["--root", str(root or self.root), *args]
        if args and args[0] in ("push", "pull", "diff"):
            argv += ["--remotes-config", str(self.remotes)]
        result = run(argv, proxy=proxy)
        if client_log.exists():
            lines = client_log.read_text().splitlines()
            result.client = json.loads(lines[-1]) if lines else {}
        # The server logs when it exits, just after the client hangs up: wait for one line
        # per session the client opened.
        want = int(result.client.get("sessions", 0))
        deadline = time.monotonic() + 10
        while True:
            result.server = self._server_lines(offset)
            if len(result.server) >= want or time.monotonic() > deadline:
                return result
            time.sleep(0.02)

    def _server_lines(self, offset: int) -> list[dict[str, Any]]:
        if not self.server_log.exists():
            return []
        with open(self.server_log, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
        # Only whole lines: a server may be writing its line right now.
        return [json.loads(x) for x in data.split(b"\n")[:-1] if x.strip()]
