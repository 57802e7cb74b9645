"""The chunk store: immutable, content-addressed chunks of large files, named by blake3.

Chunks live under ``.usr/chunks/`` in two forms (byte formats in docs/format.md):

``loose/<aa>/<id>``
    One chunk per file. What :meth:`ChunkStore.put` writes: a chunk received alone (a sync
    that is cut off keeps every chunk that landed) is durable at once.
``packs/<pack id>.pack``
    Many chunks in one file with the index in its trailer (restic-style), so a 4 GiB file
    is ~64 files instead of ~65,000. Snapshots write packs through :class:`PackWriter`;
    ``gc`` repacks loose chunks. The pack id is the blake3 of the whole pack file.

Everything is written to a temporary name, fsynced and renamed, and never modified after:
a crash leaves at worst a ``.usr-tmp-*`` file that ``gc`` removes. Every read re-hashes
the chunk and raises :class:`VerifyError` naming the chunk (and its pack) on a mismatch, so
a corrupt chunk is never served as data.
"""

from __future__ import annotations

import contextlib
import functools
import os
import struct
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3

from usr import faults
from usr.atomic import TMP_PREFIX, fsync_dir
from usr.errors import InputError, VerifyError
from usr.store.objects import is_chunk_id

PACK_MAGIC = b"USRPACK1"
INDEX_MAGIC = b"USRPIDX1"
_ENTRY = struct.Struct(">32sQI")  # chunk id (raw blake3), offset in pack, length
_TAIL = struct.Struct(">I32s8s")  # entry count, blake3 of the entry table, INDEX_MAGIC

#: A pack is closed once it holds this many bytes of chunk data.
PACK_TARGET = 64 << 20

FAULT_PACK_WRITTEN = faults.register(
    "chunks.pack-before-rename", "a pack is fully written and fsynced, not yet renamed"
)


def chunk_id(data: bytes | memoryview) -> str:
    """The id of a chunk: hex blake3 of its bytes."""
    return blake3.blake3(data).hexdigest()


@dataclass(frozen=True)
class PackEntry:
    """Where one chunk sits inside a pack file."""

    pack: str
    offset: int
    length: int


def read_pack_index(path: Path) -> list[tuple[str, int, int]]:
    """The ``(chunk_id, offset, length)`` entries of a pack, read from its trailer only.

    The trailer's own blake3 is checked, so a damaged index is reported rather than
    misdirecting reads.
    """
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        end = fh.tell()
        if end < len(PACK_MAGIC) + _TAIL.size:
            raise VerifyError(f"pack {path.name}: truncated")
        fh.seek(end - _TAIL.size)
        count, table_hash, magic = _TAIL.unpack(fh.read(_TAIL.size))
        table_len = count * _ENTRY.size
        if magic != INDEX_MAGIC or table_len + _TAIL.size + len(PACK_MAGIC) > end:
            raise VerifyError(f"pack {path.name}: bad trailer")
        fh.seek(end - _TAIL.size - table_len)
        table = fh.read(table_len)
    if blake3.blake3(table).digest() != table_hash:
        raise VerifyError(f"pack {path.name}: index trailer hash mismatch")
    return [
        (raw.hex(), offset, length)
        for raw, offset, length in (
            _ENTRY.unpack_from(table, i) for i in range(0, table_len, _ENTRY.size)
        )
    ]


class ChunkStore:
    """Content-addressed chunks under ``<store>/chunks``. Safe for concurrent writers.

    No lock is needed: chunks are immutable and named by their content, so two writers of
    the same chunk write the same bytes, and rename makes either copy complete.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.loose_dir = directory / "loose"
        self.packs_dir = directory / "packs"
        # String forms for the per-chunk lookups: pathlib costs ~20 us per chunk looked up,
        # and a transfer looks each new chunk up two or three times.
        self._loose_root = str(self.loose_dir)
        self._packs_root = str(self.packs_dir)
        self._index: dict[str, PackEntry] = {}
        self._packs_seen: set[str] = set()
        self._packs_stamp = -1
        self._fds: dict[str, int] = {}
        #: Depth of :meth:`settled` blocks, and whether the loose directory was there when
        #: the outermost began (or a chunk was put loose since).
        self._settled = 0
        self._loose_seen = True

    # -- lookup ---------------------------------------------------------------------------

    def _loose_path(self, cid: str) -> Path:
        return Path(self._loose_file(cid))

    def _loose_file(self, cid: str) -> str:
        return f"{self._loose_root}/{cid[:2]}/{cid}"

    def _scan_packs(self) -> bool:
        """Load the trailers of packs not seen yet; True if any were new."""
        try:
            stamp = os.stat(self._packs_root).st_mtime_ns
        except FileNotFoundError:
            return False
        if stamp == self._packs_stamp:
            return False  # no pack added or removed since the last look
        self._packs_stamp = stamp
        new = False
        for entry in os.scandir(self.packs_dir):
            name = entry.name
            if not name.endswith(".pack") or name in self._packs_seen:
                continue
            pack = name[: -len(".pack")]
            for cid, offset, length in read_pack_index(Path(entry.path)):
                self._index.setdefault(cid, PackEntry(pack, offset, length))
            self._packs_seen.add(name)
            new = True
        return new

    def _locate(self, cid: str) -> PackEntry | Path | None:
        if self._packs_stamp == -1:
            self._scan_packs()
        entry = self._index.get(cid)
        if entry is not None:
            return entry
        if self._settled and not self._loose_seen:
            return None
        loose = self._loose_file(cid)
        if os.path.exists(loose):
            return Path(loose)
        if not self._settled and self._scan_packs():  # another process may have added one
            return self._index.get(cid)
        return None

    @contextlib.contextmanager
    def settled(self) -> Iterator[None]:
        """Within: the packs and the loose directory are looked at once, at the start, not
        again for each chunk not found. A receive asks about every chunk it is sent two or
        three times, each a miss (a stat of the loose path and one of the packs directory:
        60,805 chunks of a 4 GiB push spent 2.1 s there). A pack or loose chunk another
        process adds meanwhile is then not seen, which at worst stores a chunk twice (both
        copies are valid; gc keeps what is live)."""
        if not self._settled:
            self._scan_packs()
            self._loose_seen = os.path.isdir(self._loose_root)
        self._settled += 1
        try:
            yield
        finally:
            self._settled -= 1

    def length(self, cid: str) -> int | None:
        """Bytes of a stored chunk from its pack index or file size (nothing is read or
        verified); None if it is not stored. Lets a receiver check a manifest's claims."""
        where = self._locate(cid)
        if isinstance(where, PackEntry):
            return where.length
        if where is None:
            return None
        try:
            return where.stat().st_size
        except FileNotFoundError:
            return None

    def packed(self, cid: str) -> bool:
        """True if a pack holds the chunk (a loose copy does not count); loads pack
        trailers on first use. Used to repack loose chunks."""
        self._locate(cid)
        return cid in self._index

    def has(self, cid: str) -> bool:
        """True if the chunk is stored (not verified; reads verify)."""
        return self._locate(cid) is not None

    def missing(self, cids: Iterable[str]) -> list[str]:
        """The ids among ``cids`` not stored here, in the given order, without repeats."""
        seen: set[str] = set()
        out = []
        with self.settled():
            for cid in cids:
                if cid not in seen and not self.has(cid):
                    out.append(cid)
                seen.add(cid)
        return out

    def location(self, cid: str) -> str:
        """Human description of where a chunk lives (for error messages)."""
        where = self._locate(cid)
        if isinstance(where, PackEntry):
            return f"pack {where.pack} offset {where.offset}"
        if isinstance(where, Path):
            return f"loose file {where}"
        return "missing"

    def _pack_fd(self, pack: str) -> int:
        fd = self._fds.get(pack)
        if fd is None:
            fd = os.open(self.packs_dir / f"{pack}.pack", os.O_RDONLY)
            self._fds[pack] = fd
        return fd

    def get(self, cid: str) -> bytes:
        """The chunk's bytes, verified by blake3; :class:`VerifyError` if corrupt or missing."""
        where = self._locate(cid)
        if where is None:
            raise VerifyError(f"chunk {cid} is missing from the store")
        if isinstance(where, PackEntry):
            data = os.pread(self._pack_fd(where.pack), where.length, where.offset)
            place = f"pack {where.pack}"
        else:
            data = where.read_bytes()
            place = "loose"
        if chunk_id(data) != cid:
            raise VerifyError(f"chunk {cid} ({place}) is corrupt: its bytes hash differently")
        return data

    # -- writing --------------------------------------------------------------------------

    def put(self, cid: str, data: bytes | memoryview) -> bool:
        """Store one chunk as a loose file after checking ``cid``; False if already stored.

        Raises :class:`VerifyError` if the bytes do not hash to ``cid`` (nothing is written).
        """
        if not is_chunk_id(cid):
            raise InputError(f"bad chunk id {cid!r}")
        if chunk_id(data) != cid:
            raise VerifyError(f"chunk {cid}: received bytes hash differently; refused")
        if self.has(cid):
            return False
        path = self._loose_path(cid)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o444)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        self._loose_seen = True
        return True

    @contextlib.contextmanager
    def writer(self) -> Iterator[PackWriter]:
        """A :class:`PackWriter` whose packs are finalised when the block ends (even on error:
        the chunks written are valid and a rerun reuses them)."""
        w = PackWriter(self)
        try:
            with self.settled():
                yield w
        finally:
            w.close()

    def add_pack(self, pack: str, entries: list[tuple[str, int, int]]) -> None:
        """Index a pack just written by :class:`PackWriter` (its entries are known)."""
        for cid, offset, length in entries:
            self._index.setdefault(cid, PackEntry(pack, offset, length))
        self._packs_seen.add(f"{pack}.pack")

    # -- enumeration (gc, fsck) -----------------------------------------------------------

    def loose_ids(self) -> Iterator[str]:
        """Ids of every loose chunk (gc and fsck walk them)."""
        if not self.loose_dir.is_dir():
            return
        for sub in os.scandir(self.loose_dir):
            if sub.is_dir():
                for f in os.scandir(sub.path):
                    if is_chunk_id(f.name):
                        yield f.name

    def pack_names(self) -> list[str]:
        """Ids of every pack, sorted."""
        if not self.packs_dir.is_dir():
            return []
        return sorted(e.name[:-5] for e in os.scandir(self.packs_dir) if e.name.endswith(".pack"))

    def close(self) -> None:
        """Close cached pack file descriptors."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def forget_pack(self, pack: str) -> None:
        """Drop a pack from the in-memory index (after gc removed it)."""
        fd = self._fds.pop(pack, None)
        if fd is not None:
            os.close(fd)
        self._packs_seen.discard(f"{pack}.pack")
        self._packs_stamp = -1
        self._index = {c: e for c, e in self._index.items() if e.pack != pack}


#: A pack being written asks the kernel to start writing each further WRITEBACK_BYTES to
#: disk at once (asynchronously), so the fsync that seals it waits for the last few MiB
#: instead of the whole pack. Without it nothing reaches the disk before that fsync (the
#: dirty-page thresholds are GiBs on a machine with RAM to spare) and the receiving loop
#: stalls there; measured on a 256 MiB push to a local remote: 2.09 -> 1.78 s (mean of 4).
WRITEBACK_BYTES = 8 << 20


@functools.cache
def _sync_file_range() -> Any:
    try:
        import ctypes

        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None  # not Linux: the seal's fsync does all the work, as before
    fn.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    return fn


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing ``length`` bytes at ``offset`` of ``fd`` to disk, without waiting for
    it (``sync_file_range(SYNC_FILE_RANGE_WRITE)``); durability still needs an fsync."""
    fn = _sync_file_range()
    if fn is not None:
        fn(fd, offset, length, 2)  # SYNC_FILE_RANGE_WRITE


class PackWriter:
    """Appends new chunks to a temporary pack; closes it into ``<id>.pack`` at ~64 MiB.

    Chunks already in the store (or already in this pack) are skipped, so snapshotting a
    file that shares most chunks with its previous version writes only the new ones.
    Memory stays bounded: chunk bytes go straight to the file; only the 44-byte index
    entries are kept until the pack closes.
    """

    def __init__(self, store: ChunkStore) -> None:
        self.store = store
        self._fh = None
        self._tmp: str | None = None
        self._hasher: blake3.blake3 | None = None
        self._entries: list[tuple[str, int, int]] = []
        self._ids: set[str] = set()
        self._offset = 0
        self._flushed = 0  # end of the range already handed to start_writeback
        self.written_bytes = 0
        self.written_chunks = 0

    def add(self, cid: str, data: bytes | memoryview) -> bool:
        """Add a chunk whose id the caller computed from ``data``; False if already stored."""
        if cid in self._ids or self.store.has(cid):
            return False
        return self._append(cid, data)

    def _append(self, cid: str, data: bytes | memoryview) -> bool:
        if self._fh is None:
            self._open()
        self._fh.write(data)
        end = self._offset + len(data)
        if end - self._flushed >= WRITEBACK_BYTES:
            self._fh.flush()
            start_writeback(self._fh.fileno(), self._flushed, end - self._flushed)
            self._flushed = end
        self._hasher.update(data)
        length = len(data)
        self._entries.append((cid, self._offset, length))
        self._ids.add(cid)
        self._offset += length
        self.written_bytes += length
        self.written_chunks += 1
        if self._offset >= PACK_TARGET:
            self._finish()
        return True

    def add_packed(self, cid: str, data: bytes) -> bool:
        """Like :meth:`add`, but a loose copy does not count: used to repack loose chunks."""
        packed = self.store.packed(cid)  # loads pack trailers on first use
        if cid in self._ids or packed:
            return False
        return self._append(cid, data)

    def _open(self) -> None:
        self.store.packs_dir.mkdir(parents=True, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=self.store.packs_dir)
        self._fh = os.fdopen(fd, "wb")
        self._hasher = blake3.blake3(PACK_MAGIC)
        self._fh.write(PACK_MAGIC)
        self._offset = len(PACK_MAGIC)
        self._flushed = 0

    def _finish(self) -> None:
        if self._fh is None:
            return
        table = b"".join(
            _ENTRY.pack(bytes.fromhex(cid), offset, length) for cid, offset, length in self._entries
        )
        tail = _TAIL.pack(len(self._entries), blake3.blake3(table).digest(), INDEX_MAGIC)
        self._fh.write(table + tail)
        self._hasher.update(table + tail)
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        pack = self._hasher.hexdigest()
        faults.point(FAULT_PACK_WRITTEN)
        os.chmod(self._tmp, 0o444)
        os.replace(self._tmp, self.store.packs_dir / f"{pack}.pack")
        fsync_dir(self.store.packs_dir)
        self.store.add_pack(pack, self._entries)
        self._fh = None
        self._tmp = None
        self._entries = []
        self._ids = set()
        self._offset = 0

    def close(self) -> None:
        """Finalise the open pack, if any."""
        self._finish()
