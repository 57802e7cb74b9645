"""The id-keys cache: what a table that passed the unique-ids check is known to hold, so
that the check of the same table with rows appended decodes only the new row groups.

The gate (:mod:`usr.sync.gate`) refuses a ``records.parquet`` holding an id twice, on both
sides of every sync that carries a changed table. Done whole, that decodes, keys and sorts
every id: for a 1% append of a 5M-row table it cost more than the transfer. But
:func:`usr.records.write_records` leaves every earlier full row group byte for byte the
same after an append, so the earlier groups' ids are the ones that already passed.

After a table passes, its check leaves a cache entry: per row group a fingerprint of the
id column chunk (blake3 of its bytes as stored, and of everything that decides how they
decode) with the group's row count, and the sorted 64-bit id keys
(:func:`usr.unique_ids.core_keys`). An entry holds only the row groups the check decoded
and names its parent, the entry of the groups before them, by the blake3 of their group
rows; the keys of a chain of entries are all different. So the check of an append reads
the chain (the table's first groups), decodes only the later groups, looks their keys up
in each entry (``searchsorted``), and writes only the new groups' keys: O(new rows)
written, not the whole table's keys again. The last entries of a chain are folded into
the new one while they are small beside it (:data:`FOLD`), so a chain stays a few entries
long. A key met twice may be two different ids sharing a key, so any hit falls back to
the full check, which confirms on the ids; as does anything unusual (a null or a non-core
id, more than :data:`usr.unique_ids.PER_PASS` new rows, an entry or parent that is
missing or fails its checksum). The full check decodes the ids once, and when it passes
writes the chain's root entry from the keys it sorted (spooled by key range above
``PER_PASS`` rows); entries are read and searched a block at a time, so tables of any
size are cached in bounded memory. So an entry can save work but never decide a refusal, and
never let a duplicate pass: a lost, damaged or stale cache costs only time.

Only core ids are cached: their keys are the same in every process, whereas the
``hash()`` of other ids changes with ``PYTHONHASHSEED``; such ids are refused by ``usr
validate`` anyway, so tables holding them simply take the full check every time.

Where: ``<dataset>/.usr/idkeys/``, one file per entry, named by the blake3 of the group
rows of its table up to its last group, written whole by atomic rename; the entries of at
most :data:`KEEP` chains are kept (the most recently written or used), so the cache is
bounded at about ``KEEP * (8 bytes a row + 40 bytes a row group)`` and is usually one chain
of ~8 bytes a row. The format is in docs/format.md ("The id-keys cache"). May import numpy,
pyarrow, blake3, :mod:`usr.atomic`, :mod:`usr.layout` and :mod:`usr.unique_ids`.
"""

from __future__ import annotations

import contextlib
import os
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import blake3

from usr.atomic import TMP_PREFIX, atomic_writer
from usr.layout import STORE_DIR
from usr.unique_ids import (
    PER_PASS,
    confirm,
    core_keys,
    first_duplicate,
    gather,
    id_chunks,
    repeated,
    sort_keys,
    twin_pays,
)

CACHE_DIR = "idkeys"
SUFFIX = ".idkeys"
MAGIC = b"USRIDKEY"
#: Format of an entry file; a file of another version is ignored.
VERSION = 2
#: How keys are made: 1 = the first 16 hex digits of a core id as a big-endian uint64.
DERIVATION = 1
#: Chains of entries kept per dataset (the most recently written or used).
KEEP = 3
#: An entry is folded into the one written after it (on its chain) while it holds at most
#: this many times the new one's keys.
FOLD = 2
#: magic, version, derivation, first row group, row groups, keys, parent (the blake3 of the
#: group rows before the first), blake3 of the rest of the file (signed: the header before
#: it, and everything after the header).
HEADER = struct.Struct("<8sIIQQQ32s32s")
_SIGNED = HEADER.size - 32
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


def check(
    pf: Any, source: BinaryIO, cache: Path | None, twin: Callable[[], BinaryIO] | None = None
) -> Outcome:
    """Whether ``pf`` (a ``ParquetFile`` over ``source``) holds an id twice, exactly as
    :func:`usr.unique_ids.first_duplicate` answers, helped by the entries in ``cache``
    (None: no cache). ``twin`` opens the same bytes again, only if the whole table is to be
    decoded: a second reader, to decode on two threads (:func:`usr.unique_ids.id_keys`).
    Errors reading the table propagate; errors of the cache do not."""
    groups = pf.num_row_groups
    if cache is None:
        return Outcome(first_duplicate(pf, twin=_reader(twin, pf)), 0, groups)
    table = fingerprints(pf, source, cache)
    if table is None:
        return Outcome(first_duplicate(pf, twin=_reader(twin, pf)), 0, groups)
    chain = _chain(cache, table)
    known = chain[-1].end if chain else 0
    if chain:
        with contextlib.suppress(OSError):
            os.utime(chain[-1].path)  # used: among the most recent again
    if known == groups:
        return Outcome(None, known, 0)
    if known:
        new = _new_keys(pf, known)
        if new is not None and not _refuted(chain, *new):
            if groups - 1 > known:
                # Every group but the last: an append rewrites the last (partial) group, so
                # an entry holding it would never be a prefix of the grown table.
                _save(cache, table, chain, known, groups - 1, new[0])
            return Outcome(None, known, groups - known)
    return _full(pf, cache, table, _reader(twin, pf))


def _reader(opener: Callable[[], BinaryIO] | None, pf: Any) -> Any:
    """A second ``ParquetFile`` over what ``opener`` opens, when one pays for ``pf``
    (:func:`usr.unique_ids.twin_pays`); else None."""
    if opener is None or not twin_pays(pf):
        return None
    import pyarrow.parquet as pq

    return pq.ParquetFile(opener())


def _full(pf: Any, cache: Path, table: bytes, twin: Any = None) -> Outcome:
    """The whole table's check (the id column decoded once), and, when it finds no key
    twice, the root entry of every row group but the last, written from its sorted keys."""
    groups = pf.num_row_groups
    keys = sort_keys(pf, twin=twin)
    if keys is None:
        return Outcome("null", 0, groups)
    with keys:
        suspects = repeated(keys)
        if len(suspects):  # a duplicate, or two ids sharing a key: no entry can hold them
            return Outcome(confirm(pf, "id", suspects), 0, groups)
        if not keys.core or groups < 2:
            return Outcome(None, 0, groups)
        last = gather((core_keys(c) for c in id_chunks(pf, "id", groups - 1)), 0)
        last.sort()
        count = keys.rows - len(last)
        _write(cache, table, 0, groups - 1, count, _without(keys.runs(), last))
        _prune(cache, keep=_name(table, groups - 1))
    return Outcome(None, 0, groups)


def _without(runs: Iterable[Any], drop: Any) -> Iterator[Any]:
    """The sorted ``runs`` without the keys of sorted ``drop``, :data:`DROP_KEYS` at a
    time (the temporaries of a small block, not of a run: 17 bytes a key)."""
    import numpy as np

    for run in runs:
        for i in range(0, len(run), DROP_KEYS):
            block = run[i : i + DROP_KEYS]
            if len(drop):
                at = np.searchsorted(drop, block)
                np.minimum(at, len(drop) - 1, out=at)
                block = block[drop[at] != block]
            yield block
        run = block = None  # not held while the next run is read


def fingerprints(pf: Any, source: BinaryIO, cache: Path | None = None) -> bytes | None:
    """The group table of ``pf``: per row group :data:`GROUP` (rows, fingerprint of the id
    column chunk), or None when a chunk cannot be fingerprinted: stored in another file,
    a byte range outside the file, or a writer other than Arrow's C++ one (for old
    parquet-mr files Arrow reads past a chunk's stated end, bytes no fingerprint holds).
    A store entry (``source`` names the chunks of a range: ``chunks_covering``) looks each
    group up in ``cache``'s fingerprint memo (:mod:`usr.idmemo`) before reading it, and
    leaves this table's memo there."""
    from usr import idmemo

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
    covering = getattr(source, "chunks_covering", None) if cache is not None else None
    memo = idmemo.load(cache) if covering is not None and cache is not None else {}
    mine: dict[bytes, bytes] = {}
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
        what = f"{context}|{chunk.compression}|{chunk.num_values}|{group.num_rows}|{length}"
        spans = covering(start, start + length) if covering is not None else None
        name = idmemo.key(what.encode(), spans, start, length) if spans else None
        fingerprint = memo.get(name) if name is not None else None
        if fingerprint is None:
            source.seek(start)
            data = source.read(length)
            if len(data) != length:
                return None
            digest = blake3.blake3(FINGERPRINT_TAG + what.encode() + b"\0")
            digest.update(data)
            fingerprint = digest.digest()
        if name is not None:
            mine[name] = fingerprint
        out += GROUP.pack(group.num_rows, fingerprint)
    if mine and cache is not None and any(k not in memo for k in mine):
        idmemo.save(cache, _prefix_id(bytes(out), meta.num_row_groups).hex(), mine)
    return bytes(out)


def _new_keys(pf: Any, known: int) -> tuple[Any, Any] | None:
    """The keys of the row groups from ``known`` on: those of every group but the last
    (sorted: what the next entry keeps) and the last group's, or None on a null or
    non-core id, or more than :data:`usr.unique_ids.PER_PASS` new rows (the full check
    decides, in bounded memory). One array of 8 bytes a key, sorted in place."""
    meta = pf.metadata
    rows = sum(meta.row_group(g).num_rows for g in range(known, pf.num_row_groups))
    if rows > PER_PASS:
        return None
    added = gather((core_keys(c) for c in id_chunks(pf, "id", known)), rows)
    if added is None:
        return None
    kept = added[: len(added) - meta.row_group(pf.num_row_groups - 1).num_rows]
    kept.sort()
    return kept, added[len(kept) :]


def _refuted(chain: list[Segment], kept: Any, last: Any) -> bool:
    """Whether the new keys (``kept``, sorted, and the last group's) cannot be shown all
    different from each other and from every entry of ``chain``: a key met twice may be
    two ids sharing a key, so the full check decides."""
    import numpy as np

    added = np.sort(np.concatenate([kept, last]))
    if len(added) > 1 and (added[1:] == added[:-1]).any():
        return True
    return any(_meets(s.blocks(), added) for s in chain)


def _meets(blocks: Iterable[Any], added: Any) -> bool:
    """Whether sorted ``added`` holds a key of the sorted ``blocks`` (read one at a time)."""
    import numpy as np

    for block in blocks:
        if not len(block) or not len(added):
            continue
        lo = int(np.searchsorted(added, block[0], "left"))
        hi = int(np.searchsorted(added, block[-1], "right"))
        if lo < hi:
            inside = added[lo:hi]
            if (block[np.searchsorted(block, inside)] == inside).any():
                return True
    return False


#: Keys written to an entry at once when the last row group's are left out.
DROP_KEYS = 1 << 16
#: Keys read from an entry file at once (8 MiB): entries are verified and searched a block
#: at a time, so the check's memory does not grow with the chain.
BLOCK_KEYS = 1 << 20


@dataclass(frozen=True)
class Segment:
    """One entry file: row groups ``first`` .. ``end - 1`` of a table and their ``count``
    sorted keys, which start at byte ``at`` of the file (read by :meth:`blocks`)."""

    path: Path
    first: int
    end: int
    count: int = 0
    at: int = 0

    def blocks(self) -> Iterator[Any]:
        """The keys in order, :data:`BLOCK_KEYS` at a time (nothing if the file went)."""
        import numpy as np

        try:
            with self.path.open("rb") as fh:
                fh.seek(self.at)
                for block in _key_blocks(fh, self.count):
                    yield block.astype(np.uint64, copy=False)
        except OSError:
            return

    def keys(self) -> Any:
        """Every key of the entry in one array."""
        import numpy as np

        return np.concatenate([np.empty(0, np.uint64), *self.blocks()])


def _key_blocks(fh: BinaryIO, count: int) -> Iterator[Any]:
    """Up to ``count`` little-endian keys from ``fh``'s position, :data:`BLOCK_KEYS` at a
    time; fewer if the file ends first."""
    import numpy as np

    left = count
    while left:
        block = np.fromfile(fh, "<u8", min(left, BLOCK_KEYS))
        if not len(block):
            return
        left -= len(block)
        yield block


def _prefix_id(table: bytes, groups: int) -> bytes:
    """Names the first ``groups`` row groups of a table: the blake3 of their group rows
    (zeros for none)."""
    return blake3.blake3(table[: groups * GROUP.size]).digest() if groups else bytes(32)


def _name(table: bytes, end: int) -> str:
    return _prefix_id(table, end).hex()[:32] + SUFFIX


def _chain(cache: Path, table: bytes) -> list[Segment]:
    """The longest chain of whole entries that covers a prefix of ``table`` (at least one
    row group): root first, each the parent of the next; or ``[]``."""
    heads = (_read(path, table, keys=False) for path in _entries(cache))
    for tip in sorted((h for h in heads if h is not None), key=lambda h: h.end, reverse=True):
        chain: list[Segment] = []
        segment = _read(tip.path, table, keys=True)
        while segment is not None:
            chain.append(segment)
            if segment.first == 0:
                return chain[::-1]
            parent = _read(cache / _name(table, segment.first), table, keys=True)
            segment = parent if parent is not None and parent.end == segment.first else None
    return []


def _read(path: Path, table: bytes, keys: bool) -> Segment | None:
    """The entry at ``path`` if its row groups and its parent's are those of ``table``;
    with ``keys``, also only if the file is whole (exact size, blake3) and its keys are
    as many as its rows and strictly increasing (read a block at a time). None otherwise
    (never raises)."""

    try:
        with path.open("rb") as fh:
            raw = fh.read(HEADER.size)
            if len(raw) != HEADER.size:
                return None
            magic, version, derivation, first, groups, count, parent, digest = HEADER.unpack(raw)
            end = first + groups
            if (magic, version, derivation) != (MAGIC, VERSION, DERIVATION) or not groups:
                return None
            if end * GROUP.size > len(table) or parent != _prefix_id(table, first):
                return None
            mine = fh.read(GROUP.size * groups)
            if mine != table[first * GROUP.size : end * GROUP.size]:
                return None
            at = HEADER.size + GROUP.size * groups
            if not keys:
                return Segment(path, first, end)
            if os.fstat(fh.fileno()).st_size != at + 8 * count:
                return None
            hasher = blake3.blake3(raw[:_SIGNED])
            hasher.update(mine)
            previous, read = None, 0
            for block in _key_blocks(fh, count):
                hasher.update(memoryview(block).cast("B"))
                if previous is not None and not block[0] > previous:
                    return None
                if len(block) > 1 and not (block[1:] > block[:-1]).all():
                    return None
                previous, read = block[-1], read + len(block)
            if read != count:
                return None
    except (OSError, ValueError):
        return None
    if hasher.digest() != digest:
        return None
    rows = sum(GROUP.unpack_from(mine, i * GROUP.size)[0] for i in range(groups))
    if rows != count:
        return None
    return Segment(path, first, end, count, at)


def _save(cache: Path, table: bytes, chain: list[Segment], first: int, end: int, keys: Any) -> None:
    """Write the entry of row groups ``first`` .. ``end - 1`` (sorted ``keys``, all
    different from each other and from the ``chain`` below them). The last entries of the
    chain are folded into it while each holds at most :data:`FOLD` times its keys (and the
    whole stays within one pass of keys), so a chain stays logarithmically short and each
    key is rewritten a logarithmic number of times. Then prune to :data:`KEEP` chains."""
    import numpy as np

    below = list(chain)
    while below and below[-1].count <= FOLD * len(keys) and below[-1].count + len(keys) <= PER_PASS:
        folded = below.pop()
        keys = np.concatenate([folded.keys(), keys])
        keys.sort(kind="stable")  # in place: two sorted runs merged
        first = folded.first
    _write(cache, table, first, end, len(keys), [keys])
    _prune(cache, keep=_name(table, end))


def _write(
    cache: Path, table: bytes, first: int, end: int, count: int, runs: Iterable[Any]
) -> None:
    """Write the entry of row groups ``first`` .. ``end - 1`` holding ``count`` keys, the
    sorted ``runs`` one after another; its checksum, which the header holds, is filled in
    last. Best effort: a cache that cannot be written (or keys that do not add up to
    ``count``) only costs time; the file is then not kept."""
    import numpy as np

    rows = table[first * GROUP.size : end * GROUP.size]
    head = HEADER.pack(
        MAGIC, VERSION, DERIVATION, first, end - first, count, _prefix_id(table, first), b""
    )
    hasher = blake3.blake3(head[:_SIGNED])
    hasher.update(rows)
    written = 0
    try:
        with atomic_writer(cache / _name(table, end)) as fh:
            fh.write(head)
            fh.write(rows)
            for run in runs:
                data = memoryview(np.ascontiguousarray(run, "<u8")).cast("B")
                hasher.update(data)
                fh.write(data)
                written += len(run)
            if written != count:
                raise OSError(f"{written} keys written, {count} expected")
            fh.seek(0)
            fh.write(head[:_SIGNED] + hasher.digest())
    except OSError:
        pass


def _entries(cache: Path) -> list[Path]:
    try:
        return [p for p in cache.iterdir() if p.name.endswith(SUFFIX)]
    except OSError:
        return []


def _parent_name(path: Path) -> str | None:
    """The file name an entry's parent would have (from its header alone), or None for a
    root entry or an unreadable file."""
    try:
        with path.open("rb") as fh:
            raw = fh.read(HEADER.size)
    except OSError:
        return None
    if len(raw) != HEADER.size:
        return None
    first, parent = HEADER.unpack(raw)[3], HEADER.unpack(raw)[6]
    return parent.hex()[:32] + SUFFIX if first else None


def _prune(cache: Path, keep: str) -> None:
    """Keep the entries of the :data:`KEEP` most recent chains (the one ending in ``keep``,
    just written, first; then by the mtime of each chain's newest entry), remove every
    other entry, and remove temporary files a crashed write left long ago."""

    def age(p: Path) -> float:
        try:
            return p.stat().st_mtime
        except OSError:
            return 0.0

    entries = {p.name: p for p in _entries(cache)}
    ranked = sorted(entries.values(), key=lambda p: (p.name == keep, age(p)), reverse=True)
    kept: set[str] = set()
    chains = 0
    for path in ranked:
        if path.name in kept:
            continue
        if chains == KEEP:
            with contextlib.suppress(OSError):
                path.unlink()
            continue
        chains += 1
        name: str | None = path.name
        while name is not None and name in entries and name not in kept:
            kept.add(name)
            name = _parent_name(entries[name])
    now = time.time()
    for path in cache.iterdir():
        if path.name.startswith(TMP_PREFIX) and now - age(path) > STALE_TMP_S:
            with contextlib.suppress(OSError):
                path.unlink()
