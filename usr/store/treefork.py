"""The second core's share of a :class:`usr.store.treescan.TreeScan`: a forked child that
checks the last part of the tree (in walk order) against the stat cache while the parent
walks the first part.

A Python walk of a million files is bound by one thread's ``lstat`` calls and the GIL
(threads cost more CPU than they save: docs/performance.md). A child made by ``fork``
after the cache is loaded shares it copy-on-write and has its own interpreter. It walks
whole subtrees in check-only mode and certifies each one that hits entirely (every file's
stat, mode and name, none added or gone, not racy, every directory's cached tree reused),
sending back only the cursor positions and the next cache's copy operations. The parent,
on reaching a certified subtree, takes that in place of walking it; anything else it
walks itself exactly as without the child (errors, refusals, hashing, progress and their
order are the parent's own). A child that dies or says nothing costs only the time: the
parent walks what it was not told about, so a status is never clean on the child's word
unless the child checked it all.

Not forked: small trees (a fork costs milliseconds), a process with other threads
(``fork`` copies only the calling one: locks held by the others stay held), anything but
Linux (``/proc/self/task`` says how many threads there are).
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import marshal
import os
import signal
import struct
from typing import Any

from usr import faults

#: Trees with fewer files (by the cache) are walked by one process.
FORK_MIN = 50_000
#: Overrides :data:`FORK_MIN` (tests force the forked walk on small trees; 0 turns it off).
FORK_ENV = "USR_SCAN_FORK_MIN"
FAULT_CHILD = faults.register(
    "scan.lister-child", "the forked lister is about to report a subtree it checked"
)
#: Descend at most this many levels looking for where to split the tree.
_DEPTH = 8
#: The child's subtrees hold at most this fraction of the files each, where they can.
_GRAIN = 64
_LEN = struct.Struct("<I")
_PIPE_BYTES = 1 << 20  # Linux's default most for an unprivileged pipe


def fork_min() -> int:
    value = os.environ.get(FORK_ENV, "")
    return int(value) if value.isdigit() else FORK_MIN


def _single_threaded() -> bool:
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False  # not Linux: thread count unknown, do not fork


def split(dirs: Any, share: float = 0.5) -> list[bytes]:
    """The directories (cache-tree paths, walk order) whose subtrees together hold about
    ``share`` of the cached files and come last in walk order: the child's part. Going
    from the root's last subdirectory backwards, whole subtrees are taken while they fit;
    the first that does not is descended into. A subtree with more than 1/:data:`_GRAIN`
    of the files is given as its subdirectories (its own files stay the parent's), so a
    change costs the parent one small subtree's walk. Empty when the tree does not split
    (all files in one directory)."""
    if not len(dirs) or dirs.path_at(0)[0] != b"":
        return []
    counts = [row[0] for row in dirs.row.iter_unpack(dirs.raw)]
    paths = dirs.names.split(b"\0")[: len(counts)]
    kids: dict[bytes, list[tuple[bytes, int]]] = {}
    for path, count in zip(paths[1:], counts[1:], strict=True):
        kids.setdefault(path[: path.rfind(b"/", 0, -1) + 1], []).append((path, count))
    total = counts[0]
    need = int(total * share)
    node, taken = b"", []
    for _ in range(_DEPTH):
        over = None
        for path, count in reversed(kids.get(node, [])):
            if count > need:
                over = path
                break
            taken.append((path, count))
            need -= count
        if over is None or need < total // 20:
            break
        node = over
    out = []
    while taken:  # no recursion: nesting can be deeper than Python's limit
        path, count = taken.pop()
        if count * _GRAIN > total and path in kids:
            taken.extend(kids[path])
        else:
            out.append(path)
    return sorted(out)


class Recorder:
    """Stands in for the parent's ``CacheWriter`` in the child: records the calls, for the
    parent to replay (old row indices and paths are the same in both processes)."""

    def __init__(self) -> None:
        self.ops: list[tuple] = []
        self.slots = 0

    def reset(self) -> None:
        """Start recording one subtree (its first directory is slot 0)."""
        self.ops, self.slots = [], 0

    def copy(self, start: int, stop: int, pstart: int, pstop: int) -> None:
        self.ops.append((0, start, stop, pstart, pstop))

    def open_tree(self, path: bytes) -> int:
        self.ops.append((1, path))
        self.slots += 1
        return self.slots - 1

    def set_tree(self, slot: int, count: int, oid: bytes) -> None:
        self.ops.append((2, slot, count, oid))


def replay(ops: list[tuple], out: Any) -> None:
    """The child's recorded writer calls, on the parent's writer."""
    slots: list[int] = []
    for op in ops:
        if op[0] == 0:
            out.copy(*op[1:])
        elif op[0] == 1:
            slots.append(out.open_tree(op[1]))
        else:
            out.set_tree(slots[op[1]], op[2], op[3])


def _seek(table: Any, c: int, p: int, prefix: bytes) -> tuple[int, int] | None:
    """The first row at or after cursor ``(c, p)`` whose path starts with ``prefix``."""
    names = table.names
    if not names.startswith(prefix, p):
        i = names.find(b"\0" + prefix, p)
        if i < 0:
            return None
        c, p = c + names.count(b"\0", p, i + 1), i + 1
    return c, p


class Lister:
    """The parent's end: the child's pid and pipe, and its answers read in order."""

    def __init__(self, pid: int, fd: int, prefixes: list[bytes]) -> None:
        self.pid = pid
        self.pipe = os.fdopen(fd, "rb")
        self.wanted = set(prefixes)
        self.answers: dict[bytes, Any] = {}
        self.done = False

    def answer(self, prefix: str) -> tuple | None:
        """What the child found for ``prefix``: ``(c0, p0, t0, c1, p1, t1, tp1, files,
        oid, ops)`` when the whole subtree hit, else None (not asked, not clean, or the
        child is gone)."""
        key = prefix.encode()
        if key not in self.wanted:
            return None
        while key not in self.answers and not self.done:
            got = self._read()
            if got is None:
                self.done = True  # the child finished or died: walk the rest here
                break
            self.answers[got[0]] = got[1]
        return self.answers.pop(key, None)

    def _read(self) -> tuple | None:
        """The child's next report, or None at its end (cut short if it was killed)."""
        try:
            head = self.pipe.read(_LEN.size)
            if len(head) < _LEN.size:
                return None
            size = _LEN.unpack(head)[0]
            body = self.pipe.read(size)
            return marshal.loads(body) if len(body) == size else None
        except (OSError, ValueError, EOFError, TypeError):
            return None

    def close(self) -> None:
        """Stop and reap the child (it may still be walking when the parent failed)."""
        self.pipe.close()
        try:
            if os.waitpid(self.pid, os.WNOHANG)[0] == 0:  # still running: ours to kill
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass  # reaped already (a SIGCHLD handler): its pid is not ours to signal


def start(scan: Any) -> Lister | None:
    """Fork the child for ``scan``'s last part, or None when a single walk is the better
    (or the only safe) choice."""
    least = fork_min()
    dirs = scan.dirs
    if not least or not scan.use_trees or not len(dirs) or dirs.at(0)[0] < least:
        return None
    prefixes = split(dirs)
    if not prefixes or not _single_threaded():
        return None
    try:
        rfd, wfd = os.pipe()
    except OSError:
        return None  # out of descriptors: one walk still works
    with contextlib.suppress(OSError, AttributeError):
        # Room for every report (about 150 bytes a subtree): a child that fills the pipe
        # before the parent reads waits, and its part is then walked after the parent's.
        fcntl.fcntl(wfd, fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
    try:
        pid = os.fork()
    except OSError:
        os.close(rfd)
        os.close(wfd)
        return None  # out of processes or memory: likewise
    if pid == 0:  # the child: never returns
        code = 1
        try:
            os.close(rfd)
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)  # none of the parent's handlers here
            gc.disable()  # nothing to collect in a short walk; pages stay shared
            _child(scan, prefixes, wfd)
            code = 0
        finally:
            os._exit(code)
    os.close(wfd)
    return Lister(pid, rfd, prefixes)


def _child(parent: Any, prefixes: list[bytes], fd: int) -> None:
    """Check each subtree in ``prefixes`` and report it: clean (positions and the writer
    calls) or not (None)."""
    rec = Recorder()
    scan = type(parent)(parent.root, parent.cache, parent.trust, out=rec)
    c = p = t = tp = 0
    for prefix in prefixes:
        found = None
        at, tree = _seek(scan.files, c, p, prefix), _seek(scan.dirs, t, tp, prefix)
        if at is not None and tree is not None:
            rec.reset()
            scan.c, scan.p = at
            scan.t, scan.tp = tree
            name = prefix.decode()
            try:
                oid, files, clean = scan.walk(name, f"{scan.root}/{name[:-1]}", None)
            except Exception:  # anything but a clean hit: the parent walks it itself
                oid = None
            if oid is not None and clean:
                c, p, t, tp = scan.c, scan.p, scan.t, scan.tp
                found = (*at, tree[0], c, p, t, tp, files, oid, rec.ops)
        faults.point(FAULT_CHILD)
        body = marshal.dumps((prefix, found))
        data = memoryview(_LEN.pack(len(body)) + body)
        while data:
            data = data[os.write(fd, data) :]
