"""The per-file lists of an audit, spooled as packed rows instead of held as objects.

A bootstrap's audit names every file three times over: a ``files`` entry, and its path in
its section's ``local_only`` or ``remote_only`` list. Held as dicts and strings that is a
few hundred bytes a file until the document is written at the end of the command (issue
"Scale: a million files per dataset in bounded memory"). Here each item is one line of
compact JSON in a :class:`Spool` (in memory up to :data:`SPILL_BYTES`, then in an
anonymous temporary file), and a :class:`SpooledList` reads it back one item at a time,
as often as it is read: ``dump_audit`` writes the items as they come, the text summary
counts them, a pull's post-checkout check walks them. JSON round-trips every value an
entry holds (str, int, None) exactly, so the document's bytes do not change.

May import nothing of usr's.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from typing import IO, Any, overload

#: Bytes of rows kept in memory before a spool moves them to a temporary file.
SPILL_BYTES = 1 << 18
#: Bytes read from a spilled spool at a time.
_READ = 1 << 18
_encode = json.JSONEncoder(separators=(",", ":")).encode
_decode = json.JSONDecoder().decode


class Spool:
    """An append-only list of JSON values stored as encoded lines.

    Appends end with :meth:`freeze` (later appends are refused: the readers hold offsets).
    Every :meth:`__iter__` reads the rows afresh with ``os.pread``, so readers do not
    share a file position and may interleave."""

    def __init__(self) -> None:
        self._mem = bytearray()
        self._file: IO[bytes] | None = None
        self._size = 0  # bytes in the file
        self.count = 0
        self._frozen = False

    def append(self, value: Any) -> None:
        if self._frozen:
            raise RuntimeError("the spool is frozen: its readers hold offsets")
        self._mem += _encode(value).encode()
        self._mem += b"\n"
        self.count += 1
        if len(self._mem) >= SPILL_BYTES:
            self._spill()

    def _spill(self) -> None:
        if self._file is None:
            # Anonymous, so nothing is left behind; closed when the spool is collected.
            self._file = tempfile.TemporaryFile(prefix="usr-audit-")  # noqa: SIM115
        self._file.write(self._mem)
        self._size += len(self._mem)
        self._mem = bytearray()

    def freeze(self) -> None:
        """No more appends; the spilled rows are flushed for the readers."""
        self._frozen = True
        if self._file is not None:
            self._file.flush()

    def __iter__(self) -> Iterator[Any]:
        if not self._frozen:
            self.freeze()
        if self._file is not None:
            yield from _lines(self._file.fileno(), self._size)
        mem = bytes(self._mem)
        for line in mem.split(b"\n")[:-1]:
            yield _decode(line.decode())

    def spilled(self) -> bool:
        """Whether the rows live in a temporary file (tests: memory stays bounded)."""
        return self._file is not None


def _lines(fd: int, size: int) -> Iterator[Any]:
    """The decoded lines of the first ``size`` bytes of ``fd``, a block at a time."""
    offset = 0
    rest = b""
    while offset < size:
        block = os.pread(fd, min(_READ, size - offset), offset)
        if not block:
            raise OSError(f"audit spool truncated at {offset} of {size} bytes")
        offset += len(block)
        *whole, rest = (rest + block).split(b"\n")
        for line in whole:
            yield _decode(line.decode())
    if rest:
        raise OSError("audit spool ends inside a row")


class SpooledList(Sequence[Any]):
    """A read-only list over a :class:`Spool`: each row given through ``view`` as it is
    read. It compares equal to a list of the same items, and slicing gives a list; the
    JSON writer (:func:`usr.sync.auditfile.dump_audit`) streams it, item by item. Made
    over a spool, it freezes it."""

    def __init__(self, spool: Spool, view: Callable[[Any], Any] | None = None) -> None:
        spool.freeze()
        self.spool = spool
        self._view = view

    def __len__(self) -> int:
        return self.spool.count

    def __iter__(self) -> Iterator[Any]:
        if self._view is None:
            return iter(self.spool)
        return map(self._view, self.spool)

    @overload
    def __getitem__(self, index: int) -> Any: ...
    @overload
    def __getitem__(self, index: slice) -> list[Any]: ...
    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step <= 0:
                return list(self)[index]
            return list(islice(self, start, stop, step))
        n = len(self)
        i = index + n if index < 0 else index
        if not 0 <= i < n:
            raise IndexError("audit list index out of range")
        return next(islice(self, i, None))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, str | bytes):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # a list is unhashable; so is this

    def __repr__(self) -> str:
        return repr(list(self))


def spooled(items: Iterable[Any]) -> SpooledList:
    """A frozen :class:`SpooledList` of ``items`` (tests, and lists built whole)."""
    spool = Spool()
    for item in items:
        spool.append(item)
    return SpooledList(spool)
