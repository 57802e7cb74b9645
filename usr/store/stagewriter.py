"""The thread that creates streamed files, so that their system calls overlap the receive.

Creating a small file takes three system calls (open, write, close), and the kernel's
share of them is about a third of a receiver's time for a 10 KB file. Made on the
receive's own thread, they ran in turn with the reading, hashing and packing of the next
objects. Made here, they release the interpreter lock and run on another core meanwhile.

Files are handed over in batches, and at most :data:`IN_FLIGHT` batches wait (about
8 MiB of bytes), so a slow disk holds the stream back instead of filling memory. Each file
written is reported as its stat claim (:func:`usr.store.checkout.stat_claim`), which the
owner collects on its own thread: a claim is made only once the file is whole. The first
failed write stops every later one; the checkout then stages what was not claimed, as it
did when the write was made in line. A kill at any point leaves files that no claim names,
which the next checkout re-verifies by hash or removes, as before. The crash point of a
staged file is reached on the receiving thread, once the file is written
(:meth:`StageWriter.put`), so a crash test kills at the same step every run.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections import deque

from usr import faults
from usr.store.checkout import make_dirs, stat_claim
from usr.store.worktree import MODE_EXEC

FAULT_STREAMED = faults.register(
    "checkout.streamed-file", "receiver: a verified blob written to the staging dir mid-stream"
)

#: A batch is handed over at this many files or bytes, whichever comes first.
BATCH_FILES = 256
BATCH_BYTES = 1 << 20
#: Batches handed over and not yet written, at most.
IN_FLIGHT = 8

_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

Batch = list[tuple[str, int, bytes]]


class StageWriter:
    """Writes ``(path, mode, bytes)`` under ``top`` on its own thread: :meth:`put` hands a
    file over, :meth:`close` waits for all of them, :attr:`claims` says which were made.

    ``exact``: the umask keeps every permission bit asked of ``os.open`` (no ``fchmod``)."""

    def __init__(self, top: str, exact: bool) -> None:
        self.top = top
        self.exact = exact
        #: Claims of the files written, oldest first; the owner pops them.
        self.claims: deque[bytes] = deque()
        #: The first error of a write; no file is written after it.
        self.error: BaseException | None = None
        self._made = {""}
        self._batch: Batch = []
        self._bytes = 0
        self._queue: queue.SimpleQueue[Batch | None] = queue.SimpleQueue()
        self._slots = threading.Semaphore(IN_FLIGHT)
        self._abandoned = False
        self._thread: threading.Thread | None = None

    def put(self, rel: str, mode: int, data: bytes) -> None:
        """Hand ``data`` over to be staged at ``rel`` (``mode``: its tree entry's mode).

        With the crash point ``checkout.streamed-file`` armed (a test), the file is
        written before this returns and the point is reached here, on the receiving
        thread: a kill then leaves exactly the files handed over so far, at the same step
        of the stream every run, as when the files were written in line."""
        self._batch.append((rel, mode, data))
        self._bytes += len(data)
        if len(self._batch) >= BATCH_FILES or self._bytes >= BATCH_BYTES:
            self._hand_over()
        if faults.armed(FAULT_STREAMED):
            self.drain()
            faults.point(FAULT_STREAMED)

    def drain(self) -> None:
        """Return once every file handed over so far is written (the writer goes on
        taking files after)."""
        self._hand_over()
        for _ in range(IN_FLIGHT):  # every slot back: no batch waits or is being written
            self._slots.acquire()
        for _ in range(IN_FLIGHT):
            self._slots.release()

    def close(self, abandon: bool = False) -> None:
        """Return once every file handed over is written, or, with ``abandon``, once the
        file being written is (the rest are dropped)."""
        if abandon:
            self._abandoned = True
            self._batch = []
        else:
            self._hand_over()
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def _hand_over(self) -> None:
        if not self._batch:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="usr-stage-writer", daemon=True)
            self._thread.start()
        self._slots.acquire()  # blocks while IN_FLIGHT batches wait: the disk sets the pace
        self._queue.put(self._batch)
        self._batch, self._bytes = [], 0

    def _run(self) -> None:
        while (batch := self._queue.get()) is not None:
            try:
                for rel, mode, data in batch:
                    if self._abandoned or self.error is not None:
                        break
                    self._write(rel, mode, data)
            except BaseException as exc:  # noqa: BLE001 - handed to the owner's thread
                self.error = exc
            finally:
                self._slots.release()

    def _write(self, rel: str, mode: int, data: bytes) -> None:
        """Create the staged file (exclusively, not through a symlink) with its exact mode
        and bytes; one left there by an earlier process is kept for the checkout to
        re-verify."""
        parent = rel.rpartition("/")[0]
        if parent not in self._made:
            make_dirs(self.top, parent, self._made, clear=False)
        dest = f"{self.top}/{rel}"
        perm = 0o755 if mode == MODE_EXEC else 0o644
        try:
            fd = os.open(dest, _OPEN_FLAGS, perm)
        except FileExistsError:
            return
        try:
            if not self.exact:
                os.fchmod(fd, perm)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            self.claims.append(stat_claim(rel, os.fstat(fd)))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(dest)
            raise
        finally:
            os.close(fd)
