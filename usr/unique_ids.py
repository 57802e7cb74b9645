"""Whether a records table holds an id twice, in memory that does not grow with the table.

Every id is reduced to a 64-bit key: the first 16 hex digits of a core id (``sha1`` hex),
decoded at once for a whole column chunk with numpy, or Python's string hash for any other
id. Keys are sorted and neighbours compared; a key seen twice is confirmed on the ids
themselves (two different ids may share a key), so the answer is exact. The id column is
decoded once: a table of more than ``per_pass`` rows has its keys spooled to temporary
files by range of their top bits, one partition each, sorted one at a time: about 8 bytes
a row of one partition, 64 MiB at the default, whatever the table's size (keys crowded in
one range, as ids sharing their first digits, make that partition bigger, at most the
table's 8 bytes a row). The partitions' sorted runs follow each other in key order, so
:mod:`usr.idkeys` writes them as one sorted entry. May import numpy and pyarrow only.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

#: Rows whose keys one pass holds at most (8 bytes each).
PER_PASS = 8_000_000
_HEX_WIDTH = 40  # a core id: sha1 in hex


def first_duplicate(
    pf: Any, column: str = "id", per_pass: int | None = None, twin: Any = None
) -> str | None:
    """An id that ``pf`` (a ``pyarrow.parquet.ParquetFile``) holds twice, ``"null"`` for a
    missing id, or None when every id is there once (``twin``: see :func:`id_keys`)."""
    keys = sort_keys(pf, column, per_pass, twin=twin)
    if keys is None:
        return "null"
    with keys:
        return duplicate_of(pf, column, keys)


def duplicate_of(pf: Any, column: str, keys: SortedKeys) -> str | None:
    """The duplicate id of ``pf`` (None: none), given the sorted keys of all its ids."""
    suspects = repeated(keys)
    return confirm(pf, column, suspects) if len(suspects) else None


def repeated(keys: SortedKeys) -> Any:
    """The keys seen more than once, each once, sorted (usually none)."""
    import numpy as np

    twice = []
    for run in keys.runs():
        twice.append(run[1:][run[1:] == run[:-1]])
        del run  # not held while the next run is read
    return np.unique(np.concatenate(twice)) if twice else np.empty(0, np.uint64)


class SortedKeys:
    """The keys of a table's ids, sorted, as runs over ascending, disjoint key ranges: one
    array in memory, or, above ``per_pass`` rows, one spooled partition a run (a range of
    the keys' top bits), so that at most one partition is held at a time. ``core``: every
    id was a core id (:func:`core_keys`). Close it (or use it as a context manager) to
    drop the spool."""

    def __init__(self, parts: list[Any], counts: list[int], core: bool) -> None:
        self._parts = parts  # sorted arrays, or spool files of unsorted keys
        self._counts = counts
        self._sorted = [not hasattr(p, "seek") for p in parts]
        self.core = core

    def runs(self) -> Iterator[Any]:
        """Each run in key order, a sorted ``uint64`` array; a spooled run is read back (and
        sorted once: the sorted keys are written back for the next reading)."""
        import numpy as np

        for i, part in enumerate(self._parts):
            if not hasattr(part, "seek"):
                yield part
                continue
            with _spooling():
                part.seek(0)
                run = np.fromfile(part, np.uint64, self._counts[i])
                if len(run) != self._counts[i]:
                    raise OSError(f"{len(run)} keys read back of {self._counts[i]}")
                if not self._sorted[i]:
                    run.sort()
                    part.seek(0)
                    run.tofile(part)
                    self._sorted[i] = True
            yield run
            del run

    def add_spool(self, spool: Any) -> None:
        """One more (empty) spool file, for the next partition."""
        self._parts.append(spool)
        self._sorted.append(False)

    def spool_into(self, p: int, keys: Any) -> None:
        """Append ``keys`` to partition ``p``'s spool."""
        with _spooling():
            keys.tofile(self._parts[p])
        self._counts[p] += len(keys)

    @property
    def rows(self) -> int:
        """Keys held, every run together."""
        return sum(self._counts)

    def close(self) -> None:
        for part in self._parts:
            if hasattr(part, "close"):
                part.close()
        self._parts = []

    def __enter__(self) -> SortedKeys:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SpoolError(OSError):
    """The keys of a table over one pass could not be spooled to a temporary file (the
    temporary directory full, missing or not writable): not a fault of the table."""


@contextlib.contextmanager
def _spooling() -> Iterator[None]:
    """Any OSError of the spool as a :class:`SpoolError` naming the temporary directory."""
    import tempfile

    try:
        yield
    except SpoolError:
        raise
    except OSError as exc:
        where = tempfile.gettempdir() if tempfile.tempdir is None else tempfile.tempdir
        why = exc.strerror or str(exc)
        raise SpoolError(f"spooling the id keys in {where}: {why}") from exc


def sort_keys(
    pf: Any,
    column: str = "id",
    per_pass: int | None = None,
    start: int = 0,
    stop: int | None = None,
    twin: Any = None,
) -> SortedKeys | None:
    """The sorted keys of the ids of row groups ``start`` .. ``stop - 1`` (all by default),
    decoded once; None on a null id. Up to ``per_pass`` rows the keys are one array
    (8 bytes a row); a bigger table's keys are spooled to unnamed temporary files, one per
    partition of the key range, each at most about ``per_pass`` (:data:`PER_PASS`) keys.
    ``twin``: a second reader of the same bytes, to decode on two threads (:func:`id_keys`)."""
    import tempfile

    import numpy as np

    meta = pf.metadata
    stop = pf.num_row_groups if stop is None else stop
    rows = sum(meta.row_group(g).num_rows for g in range(start, stop))
    passes = max(1, -(-rows // (per_pass or PER_PASS)))
    core = True

    def keyed() -> Iterator[Any]:
        nonlocal core
        for keys, is_core in id_keys(pf, column, start, stop, twin):
            if keys is None:
                yield None
                return
            core = core and is_core
            yield keys

    if passes == 1:
        every = gather(keyed(), rows)
        if every is None:
            return None
        every.sort()
        return SortedKeys([every], [len(every)], core)
    spooled = SortedKeys([], [0] * passes, core)
    try:
        with _spooling():
            for _ in range(passes):
                spooled.add_spool(tempfile.TemporaryFile(prefix="usr-idkeys-"))  # noqa: SIM115
        for keys in keyed():
            if keys is None:
                spooled.close()
                return None
            # The partition of a key is its top 32 bits scaled to ``passes``: monotonic in
            # the key, so the partitions' sorted runs follow each other in key order.
            part = ((keys >> np.uint64(32)) * np.uint64(passes)) >> np.uint64(32)
            for p in range(passes):
                spooled.spool_into(p, keys[part == p])
    except BaseException:
        spooled.close()
        raise
    spooled.core = core
    return spooled


def gather(parts: Any, room: int) -> Any:
    """The key arrays of ``parts`` one after another in one ``uint64`` array of about
    ``room`` keys, filled in place: 8 bytes a key, where a list of pieces and their
    concatenated copy held 16. None as soon as a part is None."""
    import numpy as np

    out = np.empty(room, np.uint64)
    n = 0
    for part in parts:
        if part is None:
            return None
        if n + len(part) > len(out):
            grown = np.empty(max(2 * len(out), n + len(part)), np.uint64)
            grown[:n] = out[:n]
            out = grown
        out[n : n + len(part)] = part
        n += len(part)
    return out[:n]


#: Rows of the id column read at once: row groups are read together (decoded on every
#: core by pyarrow's thread pool) until about this many rows (~3 MiB of core ids). Not
#: more: reads of 1,000,000 rows (40 MiB, ~70 MiB of temporaries keying them, and what
#: the allocators kept of both) cost no less CPU and left a 14,000,000-row check at
#: 600 MiB of RSS; 131,072 rows 255 MiB, 65,536 rows 220 MiB (docs/performance.md).
READ_ROWS = 65_536


def id_chunks(pf: Any, column: str = "id", start: int = 0, stop: int | None = None):
    """The decoded chunks of ``column``, of row groups ``start`` .. ``stop - 1`` (to the
    last by default), read a few row groups at a time (:data:`READ_ROWS`)."""
    for groups in _batches(pf, start, stop):
        yield from pf.read_row_groups(groups, columns=[column], use_threads=True).column(0).chunks


#: Reads (of :data:`READ_ROWS`) a table must take before a second reader is worth opening.
TWIN_BATCHES = 4


def twin_pays(pf: Any) -> bool:
    """Whether decoding all of ``pf`` on two readers (:func:`id_keys`) is worth opening the
    second: a table of at least :data:`TWIN_BATCHES` reads."""
    return len(_batches(pf, 0, None)) >= TWIN_BATCHES


def _batches(pf: Any, start: int, stop: int | None) -> list[list[int]]:
    """Row groups ``start`` .. ``stop - 1`` in runs of about :data:`READ_ROWS` rows."""
    out: list[list[int]] = []
    groups: list[int] = []
    rows = 0
    meta = pf.metadata
    stop = pf.num_row_groups if stop is None else stop
    for i in range(start, stop):
        groups.append(i)
        rows += meta.row_group(i).num_rows
        if rows >= READ_ROWS or i == stop - 1:
            out.append(groups)
            groups, rows = [], 0
    return out


def _batch_keys(pf: Any, groups: list[int], column: str) -> list[tuple[Any, bool]]:
    """``(keys, core)`` of each decoded chunk of ``groups`` (keys None for a chunk holding
    a null id; ``core``: its ids are core ids)."""
    out = []
    table = pf.read_row_groups(groups, columns=[column], use_threads=False)
    for chunk in table.column(0).chunks:
        if chunk.null_count:
            out.append((None, True))
            break
        keys = core_keys(chunk)
        out.append((keys, True) if keys is not None else (_hashed(chunk), False))
    return out


def id_keys(
    pf: Any, column: str, start: int, stop: int | None, twin: Any = None
) -> Iterator[tuple[Any, bool]]:
    """``(keys, core)`` per decoded chunk of row groups ``start`` .. ``stop - 1``, in order
    (see :func:`_batch_keys`). ``twin``: a second ``ParquetFile`` over the same bytes (one
    reader is not safe on two threads): then the batches alternate between the two readers
    on two worker threads, two at most in flight, so that on two cores one batch is decoded
    and keyed (pyarrow and most of numpy without the GIL) while the other is."""
    batches = _batches(pf, start, stop)
    if twin is None or len(batches) < TWIN_BATCHES:
        for groups in batches:
            yield from _batch_keys(pf, groups, column)
        return
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    readers = (pf, twin)
    with ThreadPoolExecutor(2, thread_name_prefix="usr-ids") as pool:
        pending: deque[Any] = deque()
        try:
            for i, groups in enumerate(batches):
                if len(pending) == 2:  # the oldest read used the reader this one will use
                    yield from pending.popleft().result()
                pending.append(pool.submit(_batch_keys, readers[i % 2], groups, column))
            while pending:
                yield from pending.popleft().result()
        finally:
            for left in pending:
                left.cancel()


def confirm(pf: Any, column: str, suspects: Any) -> str | None:
    """The first id of ``suspects`` (keys seen twice) that ``pf`` holds twice, from a second
    pass over only the ids with those keys, compared as ids; None if none is."""
    import numpy as np
    import pyarrow as pa

    seen: set[str] = set()
    for chunk in id_chunks(pf, column):
        mask = np.isin(_keys(chunk), suspects)
        if mask.any():
            for value in chunk.filter(pa.array(mask)).to_pylist():
                if value in seen:
                    return value
                seen.add(value)
    return None


def _keys(chunk: Any) -> Any:
    """One 64-bit key per id of a string column chunk."""

    keys = core_keys(chunk)
    return keys if keys is not None else _hashed(chunk)


def _hashed(chunk: Any) -> Any:
    """Keys of ids that are not core ids (the id rule is usr validate's): each one hashed."""
    import numpy as np

    n = len(chunk)
    return np.fromiter((hash(v) & 0xFFFFFFFFFFFFFFFF for v in chunk.to_pylist()), np.uint64, n)


def core_keys(chunk: Any) -> Any:
    """The 64-bit keys of a chunk of core ids (the first 16 hex digits, read as one
    big-endian integer), or None if any id is null, not 40 bytes long, or does not start
    with 16 lowercase hex digits. Unlike the ``hash()`` of other ids these keys are the
    same in every process, so they may be kept on disk (:mod:`usr.idkeys`)."""
    import numpy as np

    n = len(chunk)
    if n == 0:
        return np.empty(0, np.uint64)
    if chunk.null_count:
        return None
    offsets = np.frombuffer(chunk.buffers()[1], dtype=np.int32)[chunk.offset : chunk.offset + n + 1]
    if not (np.diff(offsets) == _HEX_WIDTH).all():
        return None
    data = np.frombuffer(chunk.buffers()[2], dtype=np.uint8)
    rows = data[offsets[0] : offsets[0] + n * _HEX_WIDTH].reshape(n, _HEX_WIDTH)[:, :16]
    nibbles = _hex_table()[rows]
    if not (nibbles != 255).all():
        return None
    # Pairs of digits into bytes, eight bytes read as one big-endian integer: the first
    # digit is the most significant, as if the 16 digits were parsed.
    packed = (nibbles[:, 0::2] << np.uint8(4)) | nibbles[:, 1::2]
    return np.ascontiguousarray(packed).view(">u8").ravel().astype(np.uint64)


@functools.cache
def _hex_table() -> Any:
    """Byte -> its hex digit's value (255 for anything but 0-9a-f)."""
    import numpy as np

    table = np.full(256, 255, np.uint8)
    for i, ch in enumerate(b"0123456789abcdef"):
        table[ch] = i
    return table
