"""Per-call costs behind the scale figures (docs/performance.md, sixteenth round).

    uv run python benchmarks/percall.py lstat DIR [--dirs 300]  # a scale tree's _artifacts/many
    uv run python benchmarks/percall.py spin                    # one core, or two at once?
    uv run python benchmarks/percall.py presence                # a miss on an empty store
    uv run python benchmarks/percall.py relpath                 # the path check

``lstat``: the first ``--dirs`` directories of DIR (each of files only), twice, each way:
``listdir`` and sort alone; plus one ``os.lstat(name, dir_fd=fd)`` per file (str names,
then bytes names); plus ``fstatat`` through ``ctypes`` into one buffer unpacked by
``struct`` (Linux x86-64's ``struct stat``). Wall and CPU, the process's own.
``spin``: a bare Python loop alone, then two copies at once: how much two busy processes
slow each other on this machine. ``presence``: :class:`usr.store.presence.Backends` asked
about 100,000 absent ids on a fresh store, alone and beside a thread creating files.
``relpath``: :func:`usr.layout.check_relpath` of a scale tree's path.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import os
import struct
import subprocess
import sys
import tempfile
import threading
import time
import timeit
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

_STAT_SIZE = 144  # struct stat on Linux x86-64
_NOFOLLOW = 0x100  # AT_SYMLINK_NOFOLLOW
_SPIN = (
    "import time\nt = time.perf_counter()\ns = 0\n"
    "for i in range(20_000_000): s += i\nprint(round(time.perf_counter() - t, 2))"
)


def _timed(label: str, dirs: list[str], fn: Callable[[str], int]) -> None:
    start, cpu = time.perf_counter(), os.times()
    files = sum(fn(d) for d in dirs)
    end = os.times()
    wall = time.perf_counter() - start
    print(
        f"{label:26s} {wall:.3f} s (user {end.user - cpu.user:.2f}, system "
        f"{end.system - cpu.system:.2f}) for {files} files: {wall / files * 1e6:.2f} µs a file"
    )


def _listdir(path: str) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    names = os.listdir(fd)
    names.sort()
    os.close(fd)
    return len(names)


def _lstat(path: str | bytes) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    names = os.listdir(path)
    names.sort()
    sts = [os.lstat(name, dir_fd=fd) for name in names]
    os.close(fd)
    return len(sts)


def _ctypes_stat() -> Callable[[str], int]:
    fstatat = ctypes.CDLL(None, use_errno=True).fstatat
    fstatat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int]
    fstatat.restype = ctypes.c_int
    buf = ctypes.create_string_buffer(_STAT_SIZE * 100_000)
    base = ctypes.addressof(buf)
    row = struct.Struct("<QQQIIII8xqqq16x16x16x24x")

    def run(path: str) -> int:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        names = os.listdir(path.encode())
        names.sort()
        for i, name in enumerate(names):
            fstatat(fd, name, base + i * _STAT_SIZE, _NOFOLLOW)
        os.close(fd)
        return len(list(row.iter_unpack(buf.raw[: _STAT_SIZE * len(names)])))

    return run


def lstat(top: Path, count: int) -> None:
    dirs = [str(top / name) for name in sorted(os.listdir(top))[:count]]
    for _ in range(2):
        _timed("listdir and sort", dirs, _listdir)
        _timed("+ os.lstat, str names", dirs, _lstat)
        _timed("+ os.lstat, bytes names", dirs, lambda d: _lstat(d.encode()))
        _timed("+ fstatat through ctypes", dirs, _ctypes_stat())


def spin() -> None:
    alone = subprocess.run([sys.executable, "-c", _SPIN], capture_output=True, text=True)
    print(f"alone: {alone.stdout.strip()} s")
    both = [
        subprocess.Popen([sys.executable, "-c", _SPIN], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    print(f"two at once: {', '.join(p.communicate()[0].strip() for p in both)} s")


def presence() -> None:
    import pygit2

    from usr.store.presence import Backends

    with tempfile.TemporaryDirectory() as tmp:
        repo = pygit2.init_repository(f"{tmp}/store", bare=True)
        oids = [hashlib.sha1(str(i).encode()).hexdigest() for i in range(100_000)]
        stop = threading.Event()

        def create_files() -> None:
            i = 0
            while not stop.is_set():
                fd = os.open(f"{tmp}/f{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                os.write(fd, b"x" * 1000)
                os.close(fd)
                i += 1

        for beside in (False, True):
            stop.clear()
            thread = threading.Thread(target=create_files) if beside else None
            if thread is not None:
                thread.start()
            backends = Backends(repo)
            start = time.perf_counter()
            found = sum(1 for oid in oids if backends.has(oid))
            took = time.perf_counter() - start
            stop.set()
            if thread is not None:
                thread.join()
            where = "beside a thread creating files" if beside else "alone"
            print(f"{where}: {took / len(oids) * 1e6:.2f} µs a miss ({found} found)")


def relpath() -> None:
    from usr.layout import check_relpath

    path = "_artifacts/many/d001/f0000001"
    n, took = timeit.Timer(lambda: check_relpath(path)).autorange()
    print(f"check_relpath({path!r}): {took / n * 1e6:.3f} µs")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    one = sub.add_parser("lstat")
    one.add_argument("top", type=Path, help="a directory of directories of files")
    one.add_argument("--dirs", type=int, default=300)
    for name in ("spin", "presence", "relpath"):
        sub.add_parser(name)
    args = ap.parse_args()
    if args.what == "lstat":
        lstat(args.top, args.dirs)
    else:
        {"spin": spin, "presence": presence, "relpath": relpath}[args.what]()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
