"""Objects read straight from the store's packs, for sending: located in batches, checked
with one SHA-1 each.

libgit2 checks every object it reads against its id with a collision-detecting SHA-1
(strict hash verification), which took 30 of the 38 µs a 10 KB object cost to read here;
OpenSSL's SHA-1 of the same bytes takes 7. A sender reads every object it sends, one after
another, on the core its receiver needs. So :class:`PackedObjects` maps the packs and
their idx files (docs/format.md §3) once, looks a batch of ids up in every idx at once
(numpy's binary search over each idx's sorted ids, in place in the mapped file), and
takes each object's bytes from its pack entry: a stored zlib block (usr's packs) is cut
out, any other zlib stream inflated. Each object is hashed once and compared with its id;
one that differs is refused as corrupt, as libgit2 refuses it.

What is not found in a pack listed at creation (a loose object, a delta of a git tool's
pack, a pack written later) is read through libgit2 as before (:meth:`Store.read_stored`).
A pack removed meanwhile (``usr gc``) stays readable through its mapping.

May import :mod:`usr.store.gitpack` and :mod:`usr.store.objects`.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import struct
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from usr.errors import VerifyError
from usr.store.gitpack import _DELTAS, _IDS_AT, IDX_SIGNATURE, PACK_SIGNATURE, _entry_header
from usr.store.objects import OBJECT_NAMES

#: Ids looked up at once: one binary search per idx for the whole batch.
BATCH = 1024


class _Pack:
    """One pack and its idx, mapped: sorted ids and offsets as arrays over the idx."""

    def __init__(self, idx_path: Path) -> None:
        with open(idx_path, "rb") as fh:
            self.idx = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        with open(idx_path.with_suffix(".pack"), "rb") as fh:
            self.pack = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        idx = self.idx
        if idx[:4] != IDX_SIGNATURE or struct.unpack_from(">I", idx, 4)[0] != 2:
            raise ValueError(f"{idx_path.name}: not an idx v2 file")
        if self.pack[:4] != PACK_SIGNATURE:
            raise ValueError(f"{idx_path.name}: its pack is not a git pack")
        n = struct.unpack_from(">I", idx, 8 + 255 * 4)[0]
        self.large_at = _IDS_AT + 28 * n
        if self.large_at + 40 > len(idx):
            raise ValueError(f"{idx_path.name}: idx truncated")
        self.ids = np.frombuffer(idx, dtype="S20", count=n, offset=_IDS_AT)
        self.offsets = np.frombuffer(idx, dtype=">u4", count=n, offset=_IDS_AT + 24 * n)

    def offset(self, i: int) -> int:
        off = int(self.offsets[i])
        if off & 0x80000000:  # in the table of 64-bit offsets
            off = struct.unpack_from(">Q", self.idx, self.large_at + 8 * (off & 0x7FFFFFFF))[0]
        return off


class PackedObjects:
    """The store's packs as they are at creation, read by id (:meth:`read_many`)."""

    def __init__(self, pack_dir: Path) -> None:
        self.packs: list[_Pack] = []
        with contextlib.suppress(FileNotFoundError):
            for name in sorted(os.listdir(pack_dir)):
                if name.startswith("pack-") and name.endswith(".idx"):
                    with contextlib.suppress(OSError, ValueError):  # libgit2 reads it
                        self.packs.append(_Pack(pack_dir / name))

    def locate(self, raws: list[bytes]) -> list[tuple[_Pack, int] | None]:
        """Where each of the ids ``raws`` (20 bytes each) is: its pack and offset there,
        or None."""
        found: list[tuple[_Pack, int] | None] = [None] * len(raws)
        if not self.packs or not raws:
            return found
        want = np.array(raws, dtype="S20")
        todo = np.arange(len(raws))
        for pack in self.packs:
            if not len(pack.ids) or not len(todo):
                continue
            keys = want[todo]
            at = np.searchsorted(pack.ids, keys)
            inside = at < len(pack.ids)
            hit = np.zeros(len(todo), dtype=bool)
            hit[inside] = pack.ids[at[inside]] == keys[inside]
            for i, j in zip(todo[hit].tolist(), at[hit].tolist(), strict=True):
                found[i] = (pack, pack.offset(j))
            todo = todo[~hit]
        return found

    def read_many(self, store: Any, oids: Iterable[str]) -> Iterator[tuple[str, str, bytes]]:
        """``(oid, type name, bytes)`` of each of ``oids``, in their order, each checked
        against its id; what no mapped pack holds whole is read through libgit2."""
        batch: list[str] = []
        for oid in oids:
            batch.append(oid)
            if len(batch) >= BATCH:
                yield from self._read_batch(store, batch)
                batch = []
        yield from self._read_batch(store, batch)

    def _read_batch(self, store: Any, oids: list[str]) -> Iterator[tuple[str, str, bytes]]:
        raws = [bytes.fromhex(oid) for oid in oids]
        for oid, raw, where in zip(oids, raws, self.locate(raws), strict=True):
            got = _entry(where[0].pack, where[1], oid, raw) if where is not None else None
            if got is None:
                got = store.read_stored(oid)
            yield oid, got[0], got[1]


def _entry(pack: mmap.mmap, at: int, oid: str, raw: bytes) -> tuple[str, bytes] | None:
    """The object of the pack entry at ``at``, checked against ``oid``; None for a delta
    or an entry this reader does not take apart (libgit2 reads those). ``raw``: the id's
    20 bytes."""
    type_code, size, hlen = _entry_header(pack, at)
    if type_code in _DELTAS or type_code not in OBJECT_NAMES:
        return None
    start = at + hlen
    view = memoryview(pack)
    # usr's own entries: one stored deflate block (78 01, final block, length and its
    # complement), then the bytes and an Adler-32 (covered by the SHA-1 below).
    if (
        size <= 0xFFFF
        and pack[start : start + 3] == b"\x78\x01\x01"
        and struct.unpack_from("<HH", pack, start + 3) == (size, 0xFFFF ^ size)
    ):
        data = bytes(view[start + 7 : start + 7 + size])
    else:
        inflate = zlib.decompressobj()
        try:
            data = inflate.decompress(view[start : start + size + size // 64 + 64], size + 1)
        except zlib.error:
            return None  # libgit2 reads it, and says what is wrong with it
        if not inflate.eof:
            return None
    kind = OBJECT_NAMES[type_code]
    digest = hashlib.sha1(b"%s %d\0" % (kind.encode(), size))
    digest.update(data)
    if len(data) != size or digest.digest() != raw:
        raise VerifyError(f"object {oid} is corrupt: its packed bytes hash to another id")
    return kind, data
