"""The id-keys cache: what a table that passed the unique-ids check is known to hold, so
that the check of the same table with rows appended decodes only the new row groups.

The gate (:mod:`usr.sync.gate`) refuses a ``records.parquet`` holding an id twice, on both
sides of every sync that carries a changed table. Done whole, that decodes, keys and sorts
every id: for a 1% append of a 5M-row table it cost more than the transfer. But
:func:`usr.records.write_records` leaves every earlier full row group byte for byte the
same after an append, so the earlier groups' ids are the ones that already passed.

After a table passes, one cache entry is kept for it: per row group a fingerprint of the
id column chunk (blake3 of its bytes as stored, and of everything that decides how they
decode) with the group's row count, and the table's sorted 64-bit id keys
(:func:`usr.unique_ids.core_keys`). The next check fingerprints the table's groups; if an
entry's groups are a prefix of them, only the later groups are decoded and their keys
checked among themselves and against the entry's (``searchsorted``). A key met twice may be
two different ids sharing a key, so any hit falls back to the full check, which confirms on
the ids; as does anything unusual (a null or a non-core id, a table of more than
:data:`usr.unique_ids.PER_PASS` rows, an entry that fails its checksum). So an entry can
save work but never decide a refusal, and never let a duplicate pass: a lost, damaged or
stale cache costs only time.

Only core ids are cached: their keys are the same in every process, whereas the
``hash()`` of other ids changes with ``PYTHONHASHSEED``; such ids are refused by ``usr
validate`` anyway, so tables holding them simply take the full check every time.

Where: ``<dataset>/.usr/idkeys/``, one file per entry, named by the blake3 of its group
table, replaced whole by atomic rename; at most :data:`KEEP` entries (the most recently
written or used), so the cache is bounded at ``KEEP * (8 bytes a row + 40 bytes a row
group)``: about 120 MiB for 5M rows, at most ~190 MiB at ``PER_PASS``. The format is in
docs/format.md ("The id-keys cache"). May import numpy, pyarrow, blake3, :mod:`usr.atomic`,
:mod:`usr.layout` and :mod:`usr.unique_ids`.
"""

from __future__ import annotations

import contextlib
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import blake3

from usr.atomic import TMP_PREFIX, atomic_writer
from usr.layout import STORE_DIR
from usr.unique_ids import PER_PASS, core_keys, first_duplicate, id_chunks

CACHE_DIR = "idkeys"
SUFFIX = ".idkeys"
MAGIC = b"USRIDKEY"
#: Format of an entry file; a file of another version is ignored.
VERSION = 1
#: How keys are made: 1 = the first 16 hex digits of a core id as a big-endian uint64.
DERIVATION = 1
#: Entries kept per dataset (the most recently written or used).
KEEP = 3
#: magic, version, derivation, row groups, keys, blake3 of the body (all after the header).
HEADER = struct.Struct("<8sIIQQ32s")
#: One row group: its rows, the fingerprint of its id column chunk.
GROUP = struct.Struct("<Q32s")
#: Prefix of every fingerprint's input, naming what it is a fingerprint of.
FINGERPRINT_TAG = b"usr-idkeys-group-v1\0"
#: Tables written by Arrow's C++ writer (``write_records``) are fingerprinted; others are
#: always checked whole.
WRITER = "parquet-cpp"
#: A temporary file left by a crashed write is removed once it is this old.
STALE_TMP_S = 3600


@dataclass(frozen=True)
class Outcome:
    """What a check found, and how: ``duplicate`` as :func:`usr.unique_ids.first_duplicate`
    answers; ``reused`` row groups were known from a cache entry, ``decoded`` were read."""

    duplicate: str | None
    reused: int
    decoded: int


def cache_of(dataset_dir: Path) -> Path | None:
    """The id-keys cache of a dataset, or None if it has no store (nothing is created)."""
    store = Path(dataset_dir) / STORE_DIR
    return store / CACHE_DIR if store.is_dir() else None


def check(pf: Any, source: BinaryIO, cache: Path | None) -> Outcome:
    """Whether ``pf`` (a ``ParquetFile`` over ``source``) holds an id twice, exactly as
    :func:`usr.unique_ids.first_duplicate` answers, helped by the entries in ``cache``
    (None: no cache). Errors reading the table propagate; errors of the cache do not."""
    groups = pf.num_row_groups
    if cache is None or pf.metadata.num_rows > PER_PASS:
        return Outcome(first_duplicate(pf), 0, groups)
    table = fingerprints(pf, source)
    if table is None:
        return Outcome(first_duplicate(pf), 0, groups)
    known, keys, entry = _best_entry(cache, table)
    if entry is not None:
        with contextlib.suppress(OSError):
            os.utime(entry)  # used: among the most recent again
    if known == groups:
        return Outcome(None, known, 0)
    merged = _extend(pf, known, keys)
    if merged is None:
        return Outcome(first_duplicate(pf), 0, groups)
    if groups - 1 > known:
        # Every group but the last: an append rewrites the last (partial) group, so an
        # entry holding it would never be a prefix of the grown table.
        _save(cache, table[: (groups - 1) * GROUP.size], merged)
    return Outcome(None, known, groups - known)


def fingerprints(pf: Any, source: BinaryIO) -> bytes | None:
    """The group table of ``pf``: per row group :data:`GROUP` (rows, fingerprint of the id
    column chunk), or None when a chunk cannot be fingerprinted: stored in another file,
    a byte range outside the file, or a writer other than Arrow's C++ one (for old
    parquet-mr files Arrow reads past a chunk's stated end, bytes no fingerprint holds)."""
    meta = pf.metadata
    if not (meta.created_by or "").startswith(WRITER):
        return None
    schema = pf.schema
    index = next((i for i in range(len(schema)) if schema.column(i).path == "id"), None)
    if index is None:
        return None
    col = schema.column(index)
    context = (
        f"{col.physical_type}|{col.logical_type}|{col.max_definition_level}|"
        f"{col.max_repetition_level}"
    )
    out = bytearray()
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        chunk = group.column(index)
        if chunk.file_path:
            return None
        start = chunk.data_page_offset
        if chunk.has_dictionary_page and 0 < chunk.dictionary_page_offset < start:
            start = chunk.dictionary_page_offset
        length = chunk.total_compressed_size
        if start < 0 or length <= 0:
            return None
        source.seek(start)
        data = source.read(length)
        if len(data) != length:
            return None
        what = f"{context}|{chunk.compression}|{chunk.num_values}|{group.num_rows}|{length}"
        digest = blake3.blake3(FINGERPRINT_TAG + what.encode() + b"\0")
        digest.update(data)
        out += GROUP.pack(group.num_rows, digest.digest())
    return bytes(out)


def _extend(pf: Any, known: int, keys: Any) -> Any:
    """The sorted keys of every row group but the last, given the sorted ``keys`` of the
    first ``known`` (ids known unique), decoding only the groups after them; None when they
    cannot tell the answer (a null or non-core id, or a key met twice: the full check
    decides). The last group's keys are checked too, but not kept."""
    import numpy as np

    new = []
    for chunk in id_chunks(pf, "id", known):
        k = core_keys(chunk)
        if k is None:
            return None
        new.append(k)
    added = np.concatenate(new) if new else np.empty(0, np.uint64)
    del new
    cut = len(added) - pf.metadata.row_group(pf.num_row_groups - 1).num_rows
    body = _merged(keys, np.sort(added[:cut]))
    if body is None or _clash(body, np.sort(added[cut:])):
        return None
    return body


def _merged(keys: Any, added: Any) -> Any:
    """Sorted ``keys`` (None: none) with sorted ``added`` inserted, or None if any key would
    be there twice."""
    import numpy as np

    if _clash(keys, added):
        return None
    if keys is None or not len(keys):
        return added
    return np.insert(keys, np.searchsorted(keys, added), added)


def _clash(keys: Any, added: Any) -> bool:
    """Whether sorted ``added`` holds a key twice or one of sorted ``keys`` (None: none)."""
    import numpy as np

    if len(added) > 1 and (added[1:] == added[:-1]).any():
        return True
    if keys is None or not len(keys) or not len(added):
        return False
    at = np.searchsorted(keys, added)
    inside = at < len(keys)
    return bool((keys[at[inside]] == added[inside]).any())


def _best_entry(cache: Path, table: bytes) -> tuple[int, Any, Path | None]:
    """The whole entry whose row groups are the longest prefix of ``table`` (at least one
    group): ``(groups, its sorted keys, its path)``, or ``(0, None, None)``."""
    ranked = sorted(((_prefix_groups(p, table), p) for p in _entries(cache)), reverse=True)
    for groups, path in ranked:
        if not groups:
            break
        keys = _read_keys(path, table)
        if keys is not None:
            return groups, keys, path
    return 0, None, None


def _prefix_groups(path: Path, table: bytes) -> int:
    """How many row groups the entry at ``path`` holds, if they are a prefix of ``table``
    (a first look: :func:`_read_keys` checks the whole file before any key is used)."""
    try:
        with path.open("rb") as fh:
            head = _header(fh.read(HEADER.size))
            if head is None or head[0] * GROUP.size > len(table):
                return 0
            mine = fh.read(head[0] * GROUP.size)
    except OSError:
        return 0
    return head[0] if len(mine) == head[0] * GROUP.size and table.startswith(mine) else 0


def _read_keys(path: Path, table: bytes) -> Any:
    """The sorted keys of the entry at ``path``, or None unless the file is whole (exact
    size, its body's blake3), its row groups are a prefix of ``table``, and its keys are
    as many as its rows and strictly increasing."""
    import numpy as np

    try:
        with path.open("rb") as fh:
            head = _header(fh.read(HEADER.size))
            if head is None:
                return None
            groups, count, digest = head
            size = HEADER.size + GROUP.size * groups + 8 * count
            if os.fstat(fh.fileno()).st_size != size or count > PER_PASS:
                return None
            mine = fh.read(GROUP.size * groups)
            keys = np.empty(count, "<u8")
            if fh.readinto(memoryview(keys).cast("B")) != 8 * count:
                return None
    except OSError:
        return None
    hasher = blake3.blake3(mine)
    hasher.update(memoryview(keys).cast("B"))
    if hasher.digest() != digest or not groups or not table.startswith(mine):
        return None
    rows = sum(GROUP.unpack_from(mine, i * GROUP.size)[0] for i in range(groups))
    if rows != count or (count > 1 and not (keys[1:] > keys[:-1]).all()):
        return None
    return keys.astype(np.uint64, copy=False)


def _header(data: bytes) -> tuple[int, int, bytes] | None:
    if len(data) != HEADER.size:
        return None
    magic, version, derivation, groups, count, digest = HEADER.unpack(data)
    if magic != MAGIC or version != VERSION or derivation != DERIVATION:
        return None
    return groups, count, digest


def _save(cache: Path, table: bytes, keys: Any) -> None:
    """Write the entry for ``table`` (replacing one for the same groups), then prune to
    :data:`KEEP`. Best effort: a cache that cannot be written only costs time."""
    data = memoryview(keys.astype("<u8", copy=False)).cast("B")
    hasher = blake3.blake3(table)
    hasher.update(data)
    header = HEADER.pack(MAGIC, VERSION, DERIVATION, len(table) // GROUP.size, len(keys), b"")
    header = header[:-32] + hasher.digest()
    name = blake3.blake3(table).hexdigest()[:32] + SUFFIX
    try:
        with atomic_writer(cache / name) as fh:
            fh.write(header)
            fh.write(table)
            fh.write(data)
        _prune(cache, keep=name)
    except OSError:
        pass


def _entries(cache: Path) -> list[Path]:
    try:
        return [p for p in cache.iterdir() if p.name.endswith(SUFFIX)]
    except OSError:
        return []


def _prune(cache: Path, keep: str) -> None:
    """Keep the :data:`KEEP` most recent entries (``keep``, just written, always), and
    remove temporary files a crashed write left long ago."""

    def age(p: Path) -> float:
        try:
            return p.stat().st_mtime
        except OSError:
            return 0.0

    ranked = sorted(_entries(cache), key=lambda p: (p.name == keep, age(p)), reverse=True)
    for path in ranked[KEEP:]:
        with contextlib.suppress(OSError):
            path.unlink()
    now = time.time()
    for path in cache.iterdir():
        if path.name.startswith(TMP_PREFIX) and now - age(path) > STALE_TMP_S:
            with contextlib.suppress(OSError):
                path.unlink()
