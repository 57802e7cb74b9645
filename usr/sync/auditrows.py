"""The per-file lists of an audit, spooled as packed rows instead of held as objects.

A bootstrap's audit names every file three times over: a ``files`` entry, and its path in
its section's ``local_only`` or ``remote_only`` list. Held as dicts and strings that is a
few hundred bytes a file until the document is written at the end of the command (issue
"Scale: a million files per dataset in bounded memory"). Here each item is one frame in a
:class:`Spool` (in memory up to :data:`SPILL_BYTES`, then in an anonymous temporary
file), and a :class:`SpooledList` reads it back one item at a time, as often as it is
read: ``dump_audit`` writes the items as they come, the text summary counts them, a pull's
post-checkout check walks them.

A frame is the item's length (4 bytes, little-endian) and its ``marshal`` bytes. An item
comes back as JSON would give it back (a tuple as a list), so the document's bytes do not
change: a str, or a flat tuple or list of str, int, bool and None, is marshalled as it is
(the rows a comparison makes), anything else as its JSON round trip. JSON lines cost
4.9 µs a row to write and read back, marshal 0.9; a bootstrap writes three rows a file and
reads them back more than once.

May import nothing of usr's.
"""

from __future__ import annotations

import json
import marshal
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from typing import IO, Any, overload

#: Bytes of rows kept in memory before a spool moves them to a temporary file.
SPILL_BYTES = 1 << 18
#: Bytes read from a spilled spool at a time.
_READ = 1 << 18
_FLAT = (str, int, bool, type(None))  # bool is an int: listed for the reader


def _frame(value: Any) -> bytes:
    """``value`` as one frame (see the module docstring)."""
    kind = type(value)
    if kind is tuple or kind is list:
        if all(type(v) in _FLAT for v in value):
            value = list(value)
        else:
            value = json.loads(json.dumps(value))
    elif kind is not str:
        value = json.loads(json.dumps(value))
    data = marshal.dumps(value)
    return len(data).to_bytes(4, "little") + data


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
        self._mem += _frame(value)
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
            yield from _rows(self._file.fileno(), self._size)
        mem = bytes(self._mem)
        rest = yield from _whole_frames(memoryview(mem))
        if rest:
            raise OSError("audit spool ends inside a row")

    def spilled(self) -> bool:
        """Whether the rows live in a temporary file (tests: memory stays bounded)."""
        return self._file is not None


def _rows(fd: int, size: int) -> Iterator[Any]:
    """The items of the first ``size`` bytes of ``fd``, read a block at a time."""
    offset = 0
    rest = b""
    while offset < size:
        block = os.pread(fd, min(_READ, size - offset), offset)
        if not block:
            raise OSError(f"audit spool truncated at {offset} of {size} bytes")
        offset += len(block)
        rest = yield from _whole_frames(memoryview(rest + block))
    if rest:
        raise OSError("audit spool ends inside a row")


def _whole_frames(buf: memoryview) -> Iterator[Any]:
    """The items of the whole frames at the start of ``buf``; returns the bytes of the
    partial frame after them (empty when ``buf`` ends on a frame)."""
    at, end = 0, len(buf)
    while at + 4 <= end:
        n = int.from_bytes(buf[at : at + 4], "little")
        if at + 4 + n > end:
            break
        yield marshal.loads(buf[at + 4 : at + 4 + n])
        at += 4 + n
    return bytes(buf[at:])


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
