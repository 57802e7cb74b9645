"""Whether a records table holds an id twice, in memory that does not grow with the table.

Every id is reduced to a 64-bit key: the first 16 hex digits of a core id (``sha1`` hex),
decoded at once for a whole column chunk with numpy, or Python's string hash for any other
id. Keys are sorted and neighbours compared; a key seen twice is confirmed on the ids
themselves (two different ids may share a key), so the answer is exact. A table of more
than ``per_pass`` rows is done in several passes, each keeping only the keys of one
partition (key modulo the number of passes): about 8 bytes a row of one pass, 64 MiB at
the default, whatever the table's size. May import numpy and pyarrow only.
"""

from __future__ import annotations

import functools
from typing import Any

#: Rows whose keys one pass holds at most (8 bytes each).
PER_PASS = 8_000_000
_HEX_WIDTH = 40  # a core id: sha1 in hex


def first_duplicate(pf: Any, column: str = "id", per_pass: int = PER_PASS) -> str | None:
    """An id that ``pf`` (a ``pyarrow.parquet.ParquetFile``) holds twice, ``"null"`` for a
    missing id, or None when every id is there once."""
    import numpy as np

    rows = pf.metadata.num_rows
    passes = max(1, -(-rows // per_pass))
    # A pass's share of the keys, with room for an uneven partition (grown if need be).
    room = -(-rows // passes) + (rows // passes // 32 if passes > 1 else 0)
    for part in range(passes):
        every = gather(_pass_keys(pf, column, passes, part), room)
        if every is None:
            return "null"
        every.sort()
        twice = every[1:][every[1:] == every[:-1]]
        del every
        if len(twice):
            found = _confirm(pf, column, np.unique(twice))
            if found is not None:
                return found
    return None


def _pass_keys(pf: Any, column: str, passes: int, part: int):
    """The keys of one pass (those equal to ``part`` modulo ``passes``), a chunk at a time;
    None for a chunk holding a null."""
    import numpy as np

    for chunk in id_chunks(pf, column):
        if chunk.null_count:
            yield None
            return
        k = _keys(chunk)
        yield k if passes == 1 else k[k % np.uint64(passes) == part]


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


def id_chunks(pf: Any, column: str = "id", start: int = 0):
    """The decoded chunks of ``column``, of the row groups from ``start`` on, read a few
    row groups at a time (:data:`READ_ROWS`)."""
    groups: list[int] = []
    rows = 0
    meta = pf.metadata
    for i in range(start, pf.num_row_groups):
        groups.append(i)
        rows += meta.row_group(i).num_rows
        if rows >= READ_ROWS or i == pf.num_row_groups - 1:
            table = pf.read_row_groups(groups, columns=[column], use_threads=True)
            yield from table.column(0).chunks
            groups, rows = [], 0


def _confirm(pf: Any, column: str, suspects: Any) -> str | None:
    """A second pass over only the ids whose key was seen twice: compare the ids."""
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
    import numpy as np

    keys = core_keys(chunk)
    if keys is not None:
        return keys
    # Not core ids (the id rule is usr validate's): hash each one.
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
