"""Git pack files written by usr itself: many received objects in one file, not one each.

A transfer of 20,000 small files wrote 20,000 loose objects through libgit2 (~20 system
calls each); here they are collected in memory and written as one pack (git's pack v2 with
an idx v2, byte formats in docs/format.md §3) under ``objects/pack/``, which libgit2 and
``git`` read like any pack. Nothing is delta-compressed and the zlib streams are *stored*
blocks: a receive is CPU-bound, and a level-1 deflate of sequence text ran at ~80 MB/s
against ~3 GB/s for stored blocks.

Crash rule: a pack is built in memory, written to ``.usr-tmp-*`` names, fsynced, then the
``.pack`` and after it the ``.idx`` are renamed into place and the directory is fsynced.
libgit2 and git only look at packs that have an idx, so a crash at any point leaves either
no new pack or a complete one; objects still pending in memory are lost with the process
(the sender sends them again, since presence is decided per object).
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import struct
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from usr import faults
from usr.atomic import TMP_PREFIX, fsync_dir
from usr.errors import InputError, VerifyError
from usr.store.objects import OBJECT_NAMES, OBJECT_TYPES, git_object_id
from usr.store.presence import Backends, SealedIds

DELTA_TYPES = (6, 7)  # OFS_DELTA, REF_DELTA: only in packs git tools made

PACK_SIGNATURE = b"PACK"
IDX_SIGNATURE = b"\xfftOc"
_STORED_MAX = 0xFFFF  # bytes per stored deflate block
IDX_IDS_AT = 8 + 1024  # an idx v2's sorted ids: after its signature, version and fanout

#: A writer seals its pending objects into a pack once they hold SEAL_BYTES, then after
#: twice as many each time up to SEAL_MAX_BYTES (the most a pending pack keeps in memory):
#: a killed receiver loses at most that much, and a big transfer makes few packs.
SEAL_BYTES = 4 << 20
SEAL_MAX_BYTES = 32 << 20
#: A batch that ends with fewer objects than this, none of them sealed yet, is written as
#: loose objects instead of a pack (git's ``transfer.unpackLimit`` rule, same number): a
#: pack per small push, pull or snapshot would pile up packs that every lookup searches.
UNPACK_LIMIT = 100
#: gc rewrites old packs deflated at this zlib level: stored blocks cost 2.5-3x the disk of
#: deflated sequence text, and level 1 already takes most of that back at ~80 MB/s.
GC_LEVEL = 1

FAULT_PACK_WRITTEN = faults.register(
    "gitpack.before-rename", "an object pack and its idx are written and fsynced, not renamed"
)
FAULT_PACK_RENAMED = faults.register(
    "gitpack.before-idx", "an object pack is renamed into place, its idx is not (invisible)"
)


def object_header(type_code: int, size: int) -> bytes:
    """A pack entry's header: type and size, 4 size bits then 7 per continuation byte."""
    byte = (type_code << 4) | (size & 0x0F)
    size >>= 4
    out = bytearray()
    while size:
        out.append(byte | 0x80)
        byte = size & 0x7F
        size >>= 7
    out.append(byte)
    return bytes(out)


def stored_zlib(data: bytes) -> bytes:
    """``data`` as a zlib stream of stored (uncompressed) deflate blocks."""
    n = len(data)
    adler = struct.pack(">I", zlib.adler32(data))
    if n <= _STORED_MAX:  # one block: most objects (small files, trees, commits)
        return b"\x78\x01" + struct.pack("<BHH", 1, n, 0xFFFF ^ n) + data + adler
    parts = [b"\x78\x01"]
    view = memoryview(data)
    start = 0
    while True:
        block = view[start : start + _STORED_MAX]
        start += len(block)
        last = start >= n
        parts.append(struct.pack("<BHH", int(last), len(block), 0xFFFF ^ len(block)))
        parts.append(bytes(block))
        if last:
            break
    parts.append(adler)
    return b"".join(parts)


def build_idx(entries: list[tuple[bytes, int, int]], pack_sha: bytes) -> bytes:
    """An idx v2 for ``(raw id, crc32, offset)`` entries of the pack whose trailer is
    ``pack_sha``: fanout, sorted ids, CRCs, 31-bit offsets (larger ones in a 64-bit
    table), the pack checksum and the idx's own SHA-1."""
    entries = sorted(entries)
    fanout = [0] * 256
    for raw, _crc, _off in entries:
        fanout[raw[0]] += 1
    total = 0
    for i in range(256):
        total += fanout[i]
        fanout[i] = total
    small, large = [], []
    for _raw, _crc, off in entries:
        if off < 0x80000000:
            small.append(off)
        else:
            small.append(0x80000000 | len(large))
            large.append(off)
    n = len(entries)
    body = b"".join(
        [
            IDX_SIGNATURE,
            struct.pack(">I", 2),
            struct.pack(">256I", *fanout),
            b"".join(raw for raw, _c, _o in entries),
            struct.pack(f">{n}I", *(crc for _r, crc, _o in entries)),
            struct.pack(f">{n}I", *small),
            struct.pack(f">{len(large)}Q", *large),
            pack_sha,
        ]
    )
    return body + hashlib.sha1(body).digest()


def read_idx(data: bytes | mmap.mmap, where: str) -> tuple[list[tuple[str, int, int]], bytes]:
    """``([(oid, crc32, offset), ...], pack checksum)`` of an idx v2, its checksum checked."""
    if len(data) < 8 + 1024 + 40 or data[:4] != IDX_SIGNATURE:
        raise VerifyError(f"{where}: not an idx v2 file")
    if struct.unpack_from(">I", data, 4)[0] != 2:
        raise VerifyError(f"{where}: idx version is not 2")
    if hashlib.sha1(data[:-20]).digest() != data[-20:]:
        raise VerifyError(f"{where}: idx checksum mismatch")
    n = struct.unpack_from(">I", data, 8 + 255 * 4)[0]
    ids_at = IDX_IDS_AT
    crc_at = ids_at + 20 * n
    off_at = crc_at + 4 * n
    large_at = off_at + 4 * n
    if large_at + 40 > len(data):
        raise VerifyError(f"{where}: idx truncated")
    crcs = struct.unpack_from(f">{n}I", data, crc_at)
    offsets = list(struct.unpack_from(f">{n}I", data, off_at))
    for i, off in enumerate(offsets):
        if off & 0x80000000:
            at = large_at + 8 * (off & 0x7FFFFFFF)
            if at + 8 > len(data) - 40:
                raise VerifyError(f"{where}: idx large offset out of range")
            offsets[i] = struct.unpack_from(">Q", data, at)[0]
    ids = bytes(data[ids_at:crc_at])
    out = [(ids[20 * i : 20 * i + 20].hex(), crcs[i], offsets[i]) for i in range(n)]
    return out, bytes(data[-40:-20])


def entry_header(data: Any, at: int) -> tuple[int, int, int]:
    """``(type code, size, header length)`` of the pack entry at ``at``."""
    byte = data[at]
    type_code, size, shift, i = (byte >> 4) & 7, byte & 0x0F, 4, at + 1
    while byte & 0x80:
        byte = data[i]
        size |= (byte & 0x7F) << shift
        shift += 7
        i += 1
    return type_code, size, i - at


def verify_pack(idx_path: Path) -> tuple[int, list[str]]:
    """Check one pack against its idx: both checksums, the object count, and for every
    whole (non-delta) object its CRC32, size and git id. Returns ``(objects, problems)``."""
    pack_path = idx_path.with_suffix(".pack")
    name = pack_path.name
    try:
        entries, pack_sha = read_idx(idx_path.read_bytes(), idx_path.name)
        with open(pack_path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as m:
            return len(entries), _verify_pack_bytes(m, entries, pack_sha, name)
    except (OSError, ValueError) as exc:
        return 0, [f"{name}: cannot be read: {exc}"]
    except VerifyError as exc:
        return 0, [exc.message]


def _verify_pack_bytes(
    m: mmap.mmap, entries: list[tuple[str, int, int]], pack_sha: bytes, name: str
) -> list[str]:
    size = len(m)
    if size < 32 or m[:4] != PACK_SIGNATURE or struct.unpack_from(">I", m, 4)[0] not in (2, 3):
        return [f"{name}: not a git pack v2"]
    problems = []
    if m[size - 20 :] != pack_sha:
        problems.append(f"{name}: its trailer does not match the checksum its idx names")
    if hashlib.sha1(m[: size - 20]).digest() != m[size - 20 :]:
        problems.append(f"{name}: pack checksum mismatch (the file is damaged)")
    if struct.unpack_from(">I", m, 8)[0] != len(entries):
        problems.append(f"{name}: pack and idx disagree on the object count")
    by_offset = sorted(entries, key=lambda e: e[2])
    ends = [e[2] for e in by_offset[1:]] + [size - 20]
    for (oid, crc, off), end in zip(by_offset, ends, strict=True):
        why = _check_entry(m, oid, crc, off, end)
        if why:
            problems.append(f"{name}: object {oid} at {off}: {why}")
    return problems


def _check_entry(m: mmap.mmap, oid: str, crc: int, off: int, end: int) -> str | None:
    if not 12 <= off < end:
        return "offset out of range"
    if zlib.crc32(m[off:end]) != crc:
        return "CRC32 mismatch (the entry is damaged)"
    type_code, size, hlen = entry_header(m, off)
    if type_code in DELTA_TYPES:
        return None  # a git tool's delta: libgit2 checks it when the object is read
    if type_code not in OBJECT_NAMES:
        return f"bad object type {type_code}"
    try:
        data = zlib.decompressobj().decompress(m[off + hlen : end], size + 1)
    except zlib.error as exc:
        return f"bad zlib data ({exc})"
    if len(data) != size:
        return f"{len(data)} bytes, its header says {size}"
    if git_object_id(OBJECT_NAMES[type_code], data) != oid:
        return "its bytes hash to a different id"
    return None


def pack_names(pack_dir: Path) -> list[str]:
    """Names (``pack-<sha>``) of the visible packs: those with an idx, sorted."""
    try:
        names = os.listdir(pack_dir)
    except FileNotFoundError:
        return []
    return sorted(n[:-4] for n in names if n.startswith("pack-") and n.endswith(".idx"))


class PackBuilder:
    """Objects (already checked against their ids) collected in memory, written as one
    pack + idx by :meth:`seal`. Knows nothing of the store: see :class:`ObjectWriter`.

    ``level`` None stores the bytes (a receive is CPU-bound); a zlib level deflates them
    (gc, which runs offline, uses :data:`GC_LEVEL`)."""

    def __init__(self, pack_dir: Path, level: int | None = None) -> None:
        self.pack_dir = pack_dir
        self.level = level
        self._records: list[bytes] = []
        self._entries: list[tuple[bytes, int, int]] = []
        self._where: dict[str, int] = {}  # oid -> index in _records
        self.size = 12  # bytes of the pack so far (header included)
        self.sealed: list[str] = []
        #: The raw ids of the last pack sealed, sorted (its idx's table of ids).
        self.sealed_ids = b""

    def __contains__(self, oid: str) -> bool:
        return oid in self._where

    def __len__(self) -> int:
        return len(self._records)

    def add(self, type_name: str, oid: str, data: bytes) -> bool:
        """Queue an object whose id the caller checked; False if already queued."""
        if oid in self._where:
            return False
        body = stored_zlib(data) if self.level is None else zlib.compress(data, self.level)
        record = object_header(OBJECT_TYPES[type_name], len(data)) + body
        self._where[oid] = len(self._records)
        self._entries.append((bytes.fromhex(oid), zlib.crc32(record), self.size))
        self._records.append(record)
        self.size += len(record)
        return True

    def read(self, oid: str) -> tuple[str, bytes] | None:
        """A queued object's ``(type_name, bytes)``, or None."""
        i = self._where.get(oid)
        if i is None:
            return None
        record = self._records[i]
        type_code, _size, hlen = entry_header(record, 0)
        return OBJECT_NAMES[type_code], zlib.decompress(record[hlen:])

    def items(self) -> Iterator[tuple[str, tuple[str, bytes]]]:
        """``(oid, (type_name, bytes))`` of each queued object, in the order queued."""
        for oid in self._where:
            yield oid, self.read(oid)  # type: ignore[misc]

    def clear(self) -> None:
        """Forget the queued objects (the caller stored them some other way)."""
        self._records, self._entries, self._where = [], [], {}
        self.size = 12

    def seal(self) -> str | None:
        """Write the queued objects as ``pack-<sha>.pack`` + ``.idx`` (see the module
        docstring for the order); returns the pack name, None if nothing was queued."""
        if not self._records:
            return None
        header = PACK_SIGNATURE + struct.pack(">II", 2, len(self._records))
        sha = hashlib.sha1(header)
        for record in self._records:
            sha.update(record)
        trailer = sha.digest()
        name = f"pack-{trailer.hex()}"
        idx = build_idx(self._entries, trailer)
        self.sealed_ids = idx[IDX_IDS_AT : IDX_IDS_AT + 20 * len(self._entries)]
        final = self.pack_dir / f"{name}.pack"
        if not (self.pack_dir / f"{name}.idx").exists():  # else: the same pack is there
            self.pack_dir.mkdir(parents=True, exist_ok=True)
            tmp_pack = self._write_tmp([header, *self._records, trailer])
            tmp_idx = self._write_tmp([idx])
            faults.point(FAULT_PACK_WRITTEN)
            os.replace(tmp_pack, final)
            faults.point(FAULT_PACK_RENAMED)
            os.replace(tmp_idx, final.with_suffix(".idx"))
            fsync_dir(self.pack_dir)
        self.clear()
        self.sealed.append(name)
        return name

    def _write_tmp(self, parts: list[bytes]) -> str:
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=self.pack_dir)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.writelines(parts)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o444)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return tmp


def write_loose(repo: Any, type_name: str, oid: str, data: bytes) -> None:
    """Write an object (its id already checked against ``data``) as a loose object through
    libgit2; VerifyError if libgit2 names it otherwise."""
    written = str(repo.odb.write(OBJECT_TYPES[type_name], data))
    if written != oid:
        raise VerifyError(f"object store wrote {written}, expected {oid}")


class ObjectWriter:
    """Writes git objects into usr's packs for the life of one ``Store.object_writer()``
    block: presence is the store's or this writer's pending set, and pending objects are
    sealed at the thresholds above and when the block ends (even on error)."""

    def __init__(self, repo: Any, pack_dir: Path) -> None:
        self.repo = repo
        self.pending = PackBuilder(pack_dir)
        self._seal_at = SEAL_BYTES
        self.written = 0
        self.loose = 0  # objects :meth:`finish` wrote loose
        #: Presence is asked of the backends directly, their pack lists read once, here
        #: (``odb.exists`` re-reads the pack dir on every miss, and a receive's objects
        #: are nearly all misses), and of this writer's own packs through their ids: a
        #: lookup costs the packs that were there before, not one step more per pack
        #: sealed (usr/store/presence.py). A pack another process writes meanwhile is not
        #: seen, and an object in it is stored again (harmless: git reads the first copy).
        self._before = Backends(repo)
        self._sealed = SealedIds()

    def __contains__(self, oid: str) -> bool:
        return oid in self.pending

    def has(self, oid: str) -> bool:
        """Stored or pending (not verified)."""
        return oid in self.pending or oid in self._sealed or self._before.has(oid)

    def add(self, type_name: str, oid: str, data: bytes) -> bool:
        """Queue an object whose id the caller checked against ``data``; False if it is
        already stored or pending."""
        if type_name not in OBJECT_TYPES:
            raise InputError(f"bad object type {type_name!r}")
        if self.has(oid):
            return False
        self.pending.add(type_name, oid, data)
        self.written += 1
        if self.pending.size >= self._seal_at:
            self._seal_at = min(2 * self._seal_at, SEAL_MAX_BYTES)
            self.seal()
        return True

    def read(self, oid: str) -> tuple[str, bytes] | None:
        return self.pending.read(oid)

    def seal(self) -> str | None:
        """Write what is pending as a pack now (a no-op when nothing is)."""
        name = self.pending.seal()
        if name is not None:
            self._sealed.add(self.pending.sealed_ids)  # no longer pending: stored here
        return name

    def finish(self) -> str | None:
        """End of the batch: what is pending becomes a pack, or loose objects when the
        whole batch is smaller than :data:`UNPACK_LIMIT` (see there)."""
        if self.pending.sealed or len(self.pending) >= UNPACK_LIMIT:
            return self.seal()
        for oid, (type_name, data) in self.pending.items():
            write_loose(self.repo, type_name, oid, data)
            self.loose += 1
        self.pending.clear()
        return None


def iter_pack_objects(idx_path: Path) -> Iterator[str]:
    """Object ids an idx lists (its checksum checked)."""
    entries, _ = read_idx(idx_path.read_bytes(), idx_path.name)
    for oid, _crc, _off in entries:
        yield oid
