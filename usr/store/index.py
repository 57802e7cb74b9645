"""The stat cache (``.usr/stat-cache``): path -> (size, mtime_ns, ctime_ns, inode, mode) -> entry
id, plus the cache-tree: each directory's tree id and file count.

Like git's index, it lets recording an unchanged dataset skip reading file contents: a file
whose stat matches its cached stat is taken to have the cached entry id; and, like git's
cache-tree, a directory whose files all hit (none added or gone) keeps its cached tree id,
so only the directories on a changed path are built again.

The file is binary and sorted by path in git's order (docs/format.md §6). In memory it is
the file's bytes (about 90 bytes per file), never a dict of Python objects, and it is
read in order: :mod:`usr.store.treescan` compares it with the working files as two sorted
streams and writes the next cache with :class:`CacheWriter` as it goes. (No numpy: its
import alone costs more than reading the cache of 100,000 files.)

Racy timestamps: a file modified within the same timestamp tick as it was hashed could
change without its stat changing. So the cache remembers when the scan that produced it
*started* (``scan_ns``); an entry whose mtime is not older than ``scan_ns - RACY_NS``
is never trusted and is re-hashed next time (by then it is old enough to be trusted). The
slack covers coarse filesystem clocks (NFS, Lustre, FAT: up to 1 s or 2 s).

The cache is replaced whole by atomic rename; a missing, unreadable, truncated, corrupt
(blake3 trailer) or foreign-version cache is simply empty (it only ever saves work, it is
never the truth). The JSON cache of earlier versions (``.usr/index.json``) is ignored and
removed by the first save.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import re
import struct
import tempfile
import time
from array import array
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import blake3

from usr.atomic import TMP_PREFIX, fsync_dir
from usr.errors import InputError
from usr.store.treescan import Miss, TreeScan

VERSION = 2
RACY_NS = 2_000_000_000
#: The cache's file name under the store.
CACHE_FILE = "stat-cache"
MAGIC = b"USRINDEX"
#: One entry: size, mtime_ns, ctime_ns, inode, st_mode, path length, entry id (raw).
ROW = struct.Struct("<QqqQII20s")
#: The stat fields of a row as a scan compares them: size, mtime, ctime, inode, st_mode.
ROW_KEY = struct.Struct("<QqqQI24x")
#: One directory of the cache-tree: files under it (recursively), path length, tree id.
TREE_ROW = struct.Struct("<QI20s")
#: version, inline_limit, scan_ns, entries, entry path bytes, directories, dir path bytes.
FOOTER = struct.Struct("<IQqQQQQ")
DIGEST = 32  # blake3 of everything before it
OLD_JSON = "index.json"
_FLUSH = 1 << 20


class StatKey(NamedTuple):
    """The stat fields a cached entry is valid for (a tuple: a scan makes one per file)."""

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int

    @classmethod
    def of(cls, st: os.stat_result) -> StatKey:
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


class _Table:
    """Sorted fixed-size rows (``row``) and their paths, each ended by a NUL, over the
    file's bytes. Read in order (a cursor's row index and path offset move together);
    :meth:`find` is for the odd single path."""

    def __init__(self, row: struct.Struct, raw: memoryview, names: bytes) -> None:
        self.row = row
        self.raw = raw  # the row section's bytes, copied into the next cache as they are
        self.names = names
        self.count = len(raw) // row.size
        if names.count(b"\0") != self.count:
            raise ValueError("rows and paths do not match")
        self.finds = 0
        #: Where each path starts (and, at ``count``, where the paths end): listed by the
        #: first :meth:`find` past the scanned few.
        self.starts: array | None = None

    def __len__(self) -> int:
        return self.count

    def at(self, i: int) -> tuple:
        return self.row.unpack_from(self.raw, i * self.row.size)

    def path_at(self, p: int) -> tuple[bytes, int]:
        """The path starting at offset ``p`` of the paths, and where the next one starts."""
        end = self.names.index(b"\0", p)
        return self.names[p:end], end + 1

    def items(self) -> Iterator[tuple[bytes, tuple]]:
        """``(path, row fields)`` of every row, in order."""
        p = 0
        for fields in self.row.iter_unpack(self.raw):
            path, p = self.path_at(p)
            yield path, fields

    def find(self, path: bytes) -> tuple[int, int] | None:
        """``(row, path offset)`` of ``path``, or None. The first few are one search of the
        paths' bytes each; after that the paths' offsets are listed once (8 bytes a row)
        and each find is a binary search: a caller asking about every path stays linear."""
        self.finds += 1
        if self.finds <= _SCANNED_FINDS:
            names = self.names
            if names.startswith(path + b"\0"):
                return 0, 0
            pos = names.find(b"\0" + path + b"\0")
            if pos < 0:
                return None
            return names.count(b"\0", 0, pos + 1), pos + 1
        if self.starts is None:
            self.starts = array("Q", [0])
            self.starts.extend(m.end() for m in re.finditer(b"\0", self.names))
        starts, names = self.starts, self.names
        i = bisect.bisect_left(
            range(self.count), path, key=lambda r: names[starts[r] : starts[r + 1] - 1]
        )
        if i < self.count and names[starts[i] : starts[i + 1] - 1] == path:
            return i, starts[i]
        return None


#: Finds answered by a search of the paths' bytes before they are indexed for bisection.
_SCANNED_FINDS = 8
#: Paths a diff asks sizes for that are not in the cache before the rest are looked up by
#: stepping through the rows (a miss searches to the end of the paths).
_SIZE_MISSES = 8


def trusted_before(path: Path) -> int | None:
    """The mtime (ns) below which an entry of the stat cache at ``path`` is trusted without
    reading its file (``scan_ns - RACY_NS``), read from the footer alone; None without a
    readable footer. Only ever a hint: :class:`StatCache` verifies the whole file, and a
    wrong hint can only leave an entry racy (re-read next time), never trusted."""
    try:
        with open(path, "rb") as fh:
            total = os.fstat(fh.fileno()).st_size
            if total < len(MAGIC) + FOOTER.size + DIGEST:
                return None
            fh.seek(total - FOOTER.size - DIGEST)
            footer = fh.read(FOOTER.size)
        version, _limit, scan_ns, *_ = FOOTER.unpack(footer)
    except (OSError, struct.error):
        return None
    return scan_ns - RACY_NS if version == VERSION and scan_ns > 0 else None


def _empty_table(row: struct.Struct) -> _Table:
    return _Table(row, memoryview(b""), b"")


class StatCache:
    """The stat cache of one store. Not thread-safe; callers hold the dataset lock to save."""

    def __init__(self, path: Path, inline_limit: int) -> None:
        self.path = path
        self.inline_limit = inline_limit
        self.scan_ns = 0
        self.files = _empty_table(ROW)
        self.dirs = _empty_table(TREE_ROW)
        with (
            contextlib.suppress(OSError, ValueError, TypeError, struct.error),
            open(path, "rb") as fh,
        ):
            self._load(fh)

    def _load(self, fh: Any) -> None:
        """Read the sections one by one (footer first), hashing as they come: the rows
        and paths are held once, not also as one copy of the whole file."""
        total = os.fstat(fh.fileno()).st_size
        if total < len(MAGIC) + FOOTER.size + DIGEST:
            return
        fh.seek(total - FOOTER.size - DIGEST)
        footer = fh.read(FOOTER.size)
        digest = fh.read(DIGEST)
        version, limit, scan_ns, n, nbytes, t, tbytes = FOOTER.unpack(footer)
        if version != VERSION or limit != self.inline_limit:
            return  # a different inline limit gives different entry ids: start over
        sizes = (len(MAGIC), n * ROW.size, nbytes, t * TREE_ROW.size, tbytes)
        if sum(sizes) + FOOTER.size + DIGEST != total:
            return
        fh.seek(0)
        hasher = blake3.blake3()
        parts = []
        for size in sizes:
            part = fh.read(size)
            if len(part) != size:
                return
            hasher.update(part)
            parts.append(part)
        hasher.update(footer)
        if parts[0] != MAGIC or hasher.digest() != digest:
            return  # corrupt or torn: empty
        files = _Table(ROW, memoryview(parts[1]), parts[2])
        dirs = _Table(TREE_ROW, memoryview(parts[3]), parts[4])
        self.files, self.dirs, self.scan_ns = files, dirs, scan_ns

    # -- reading --------------------------------------------------------------------------

    @property
    def entries(self) -> Mapping[str, tuple[tuple[int, int, int, int], str]]:
        """``{relpath: (stat key, entry id)}`` as a read-only view (nothing is copied)."""
        return _Entries(self)

    @property
    def tree(self) -> str | None:
        """The root tree the cached entries make, if the cache-tree holds it."""
        found = self.dirs.find(b"")
        if found is None:
            return None
        return self.dirs.at(found[0])[2].hex()

    def _row(self, relpath: str) -> tuple[StatKey, str] | None:
        found = self.files.find(relpath.encode("utf-8", "surrogateescape"))
        if found is None:
            return None
        size, mtime, ctime, ino, _mode, _plen, oid = self.files.at(found[0])
        return StatKey(size, mtime, ctime, ino), oid.hex()

    def lookup(self, relpath: str, key: tuple[int, int, int, int]) -> str | None:
        """The cached entry id for ``relpath`` if its stat (a :class:`StatKey` or the same
        four fields as a plain tuple) matches and is not racy."""
        hit = self._row(relpath)
        if hit is None or hit[0] != tuple(key):
            return None
        if key[1] >= self.scan_ns - RACY_NS:
            return None  # racy: could have changed within the tick it was hashed in
        return hit[1]

    def same_stat(self, relpath: str, key: tuple[int, int, int, int]) -> str | None:
        """The cached entry id for ``relpath`` if its stat matches, racy or not: a racy hit
        is only a candidate, to be confirmed by reading the file
        (:func:`usr.store.worktree.confirm_entry`)."""
        hit = self._row(relpath)
        return hit[1] if hit is not None and hit[0] == tuple(key) else None

    def unchanged_tree(self, dataset_dir: Path) -> tuple[str, int] | None:
        """``(tree, files)`` when every working file under ``dataset_dir`` hits the cache
        (same stat and mode, not racy, none added or gone): the cached root tree, found by
        the sorted walk without reading or writing anything. None otherwise (anything odd,
        such as a symlink, is only a miss here: the full scan reports it)."""
        scan = TreeScan(dataset_dir, self, self.scan_ns - RACY_NS)
        try:
            return scan.run()
        except (Miss, InputError, OSError):
            return None

    def entry_ids(self) -> set[str]:
        """Every entry id the cache names (gc keeps them, as git keeps index blobs)."""
        return {fields[6].hex() for fields in ROW.iter_unpack(self.files.raw)}

    def tree_ids(self) -> set[str]:
        """Every tree id the cache-tree names (gc keeps them: a scan reuses them unread)."""
        return {fields[2].hex() for fields in TREE_ROW.iter_unpack(self.dirs.raw)}

    def sizes_in_order(
        self, fallback: Callable[[str], int | None]
    ) -> Callable[[str, str], int | None]:
        """``size(relpath, entry_id)`` for paths asked in path order (a diff's): the size in
        the cached row of ``relpath`` when that row names ``entry_id`` (the file hashed to
        that id had that size, so the entry's whole-file size is it, inline or chunked),
        else ``fallback(entry_id)``. One pass over the rows, nothing read from the store:
        sizing the 1,000,000 files a snapshot added no longer reads their blobs.

        The pass jumps to each path by a search of the paths' bytes (C speed: a status
        with 10 files changed across 1,000,000 no longer steps through every row in
        Python, 0.5 s); after :data:`_SIZE_MISSES` paths not in the cache (each a search to
        the end) it steps row by row, so a diff of many new files stays linear."""
        files = self.files
        names = files.names
        at = [0, 0, 0]  # row, path offset (nothing asked later sorts before it), misses

        def seek(path: bytes) -> int | None:
            c, p, misses = at
            if misses < _SIZE_MISSES:
                found = p if names.startswith(path + b"\0", p) else -1
                if found < 0:
                    i = names.find(b"\0" + path + b"\0", p)
                    found = i + 1 if i >= 0 else -1
                if found < 0:
                    at[2] += 1
                    return None
                c += names.count(b"\0", p, found)
                at[0], at[1] = c, found
                return c
            while c < len(files):
                row, after = files.path_at(p)
                if row >= path:
                    at[0], at[1] = c, p
                    return c if row == path else None
                c, p = c + 1, after
            at[0], at[1] = c, p
            return None

        def size(relpath: str, entry_id: str) -> int | None:
            c = seek(relpath.encode("utf-8", "surrogateescape"))
            if c is not None:
                fields = files.at(c)
                if fields[6].hex() == entry_id:
                    return fields[0]
            return fallback(entry_id)

        return size

    def writer(self, scan_ns: int) -> CacheWriter:
        """A writer for the next whole cache (a scan that started at ``scan_ns``)."""
        return CacheWriter(self.path, self.inline_limit, scan_ns, self.files)


class SortedUpdates:
    """The next stat cache, written as a checkout gives its entries in path order (old
    rows copied as bytes between them): nothing held per file. An entry out of order or an
    error writing leaves it (or all) out, to be hashed again. Use :func:`sorted_updates`."""

    def __init__(self, cache: StatCache) -> None:
        self.cache = cache
        self.out: CacheWriter | None = cache.writer(_trust_line(cache))
        self.rows = cache.files.items()
        self.ahead = next(self.rows, None)
        self.at = self.p = 0  # the next old row not yet written, and its path offset
        self.last: bytes | None = None
        self.stale = {b""}  # directories whose cached trees the entries make stale

    def update(self, relpath: str, key: StatKey, entry_id: str, mode: int = 0) -> None:
        """Remember one entry (the checkout wrote a verified file); the directories above
        lose their cached trees. ``mode``: ``st_mode`` of the same stat; 0 (unknown) makes
        the row a miss."""
        path = relpath.encode("utf-8", "surrogateescape")
        if self.out is None or (self.last is not None and path <= self.last):
            return
        start, pstart = self.at, self.p
        while self.ahead is not None and self.ahead[0] < path:
            self.at, self.p = self.at + 1, self.p + len(self.ahead[0]) + 1
            self.ahead = next(self.rows, None)
        if self.ahead is not None and self.ahead[0] == path:  # replaced
            replaced = (self.at + 1, self.p + len(path) + 1)
        else:
            replaced = (self.at, self.p)
        try:
            self.out.copy(start, self.at, pstart, self.p)
            self.out.add(path, (*key, mode), bytes.fromhex(entry_id))
        except OSError:
            self.close()
            return
        if replaced[0] != self.at:
            self.at, self.p = replaced
            self.ahead = next(self.rows, None)
        self.last = path
        parts = path.split(b"/")[:-1]
        for i in range(len(parts)):
            self.stale.add(b"/".join(parts[: i + 1]) + b"/")

    def save(self) -> None:
        """Finish and replace the cache (atomically); an error leaves the old one."""
        out, files = self.out, self.cache.files
        if out is None:
            return
        try:
            out.copy(self.at, len(files), self.p, len(files.names))
            for path, (count, _plen, oid) in self.cache.dirs.items():
                if path not in self.stale:
                    out.set_tree(out.open_tree(path), count, oid)
            out.commit()
        except OSError:
            pass
        finally:
            self.close()

    def close(self) -> None:
        if self.out is not None:
            self.out.close()
            self.out = None


def _trust_line(cache: StatCache) -> int:
    """A checkout's cache keeps the old ``scan_ns`` (an old racy row must not turn trusted);
    with no old rows (a bootstrap) it takes now: each stat it records is taken later, so a
    later write stamps a later mtime, and the next scan trusts files written before now."""
    return cache.scan_ns if len(cache.files) else time.time_ns()


@contextlib.contextmanager
def sorted_updates(cache: StatCache) -> Iterator[SortedUpdates]:
    """A :class:`SortedUpdates` of ``cache``, its temporary files dropped on the way out
    (whether or not it was saved)."""
    updates = SortedUpdates(cache)
    try:
        yield updates
    finally:
        updates.close()


class _Entries(Mapping):
    """The cache's entries as a mapping, for callers that ask about a few paths or want
    every ``(key, id)`` (sizes by id): each value is decoded when asked for."""

    def __init__(self, cache: StatCache) -> None:
        self.cache = cache

    def __getitem__(self, relpath: str) -> tuple[StatKey, str]:
        hit = self.cache._row(relpath)
        if hit is None:
            raise KeyError(relpath)
        return hit

    def __iter__(self) -> Iterator[str]:
        for path, _ in self.cache.files.items():
            yield path.decode("utf-8", "surrogateescape")

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def values(self) -> Iterator[tuple[tuple[int, int, int, int], str]]:  # type: ignore[override]
        for size, mtime, ctime, ino, _mode, _plen, oid in ROW.iter_unpack(self.cache.files.raw):
            yield (size, mtime, ctime, ino), oid.hex()


class CacheWriter:
    """The next cache file, written as a scan produces its rows in sorted order: rows go
    to the temp file as they come and paths to a second (unnamed) temp file appended at
    the end, so a scan of any size holds only the directories' rows (32 bytes each) and
    a buffer in memory. Runs of old rows kept as they are stay a pending range until
    something else comes, so a scan where everything hit writes nothing at all. Nothing
    replaces the cache until :meth:`commit`."""

    def __init__(self, path: Path, inline_limit: int, scan_ns: int, old: _Table) -> None:
        self.path = path
        self.inline_limit = inline_limit
        self.scan_ns = scan_ns
        self.old = old
        self.count = 0
        self.path_bytes = 0
        self._hash = blake3.blake3()
        #: Old rows to copy, not yet written: rows start:stop, path bytes start:stop.
        self._pending: list[int] | None = None
        self._rows = bytearray()
        self._names = bytearray()
        self._dir_rows = bytearray()
        self._dir_names = bytearray()
        self._dirs = 0
        self._tmp: str | None = None
        self._fh: Any = None
        self._side: Any = None

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=self.path.parent)
        self._fh = os.fdopen(fd, "wb")
        # Closed by close(), which every caller reaches (try/finally).
        self._side = tempfile.TemporaryFile(dir=self.path.parent, prefix=TMP_PREFIX)  # noqa: SIM115
        self._write(MAGIC)

    def _write(self, data: bytes | bytearray | memoryview) -> None:
        self._hash.update(data)
        self._fh.write(data)

    def _flush(self) -> None:
        """Write the pending old rows, then the buffered new ones."""
        if self._fh is None:
            self._open()
        if self._pending is not None:
            start, stop, pstart, pstop = self._pending
            self._write(self.old.raw[start * ROW.size : stop * ROW.size])
            self._side.write(memoryview(self.old.names)[pstart:pstop])
            self._pending = None
        self._write(self._rows)
        self._side.write(self._names)
        self._rows.clear()
        self._names.clear()

    def copy(self, start: int, stop: int, pstart: int, pstop: int) -> None:
        """Keep rows ``start:stop`` of the old cache (their paths at bytes
        ``pstart:pstop``) as they are: bytes, not objects."""
        if stop <= start:
            return
        self.count += stop - start
        self.path_bytes += pstop - pstart
        pending = self._pending
        if pending is not None and pending[1] == start and not self._rows:
            pending[1], pending[3] = stop, pstop
            return
        if self._rows or pending is not None:
            self._flush()
        self._pending = [start, stop, pstart, pstop]

    def add(self, path: bytes, key: tuple[int, int, int, int, int], oid: bytes) -> None:
        """One row: ``path`` (UTF-8), ``key`` = size, mtime_ns, ctime_ns, inode, st_mode."""
        if self._pending is not None:
            self._flush()
        self._rows += ROW.pack(*key, len(path), oid)
        self._names += path + b"\0"
        self.count += 1
        self.path_bytes += len(path) + 1
        if len(self._rows) >= _FLUSH:
            self._flush()

    def open_tree(self, path: bytes) -> int:
        """Reserve the cache-tree row of directory ``path`` ("" or ending in "/"), in the
        order directories are entered (sorted); :meth:`set_tree` fills it when done."""
        self._dir_rows += bytes(TREE_ROW.size)
        self._dir_names += path + b"\0"
        self._dirs += 1
        return self._dirs - 1

    def set_tree(self, slot: int, count: int, oid: bytes) -> None:
        TREE_ROW.pack_into(self._dir_rows, slot * TREE_ROW.size, count, 0, oid)

    def _dir_table(self) -> tuple[bytearray, bytearray]:
        """The directory rows with their path lengths and their paths, those never given
        a tree (no file under them) dropped."""
        rows, names = bytearray(), bytearray()
        paths = bytes(self._dir_names).split(b"\0")
        for i in range(self._dirs):
            count, _, oid = TREE_ROW.unpack_from(self._dir_rows, i * TREE_ROW.size)
            if oid != bytes(20):
                rows += TREE_ROW.pack(count, len(paths[i]), oid)
                names += paths[i] + b"\0"
        return rows, names

    def commit(self) -> None:
        """Finish the file (paths, cache-tree, footer, blake3), fsync it and rename it over
        the cache; the old JSON cache goes."""
        self._flush()
        self._side.seek(0)
        while block := self._side.read(_FLUSH):
            self._write(block)
        rows, names = self._dir_table()
        self._write(rows)
        self._write(names)
        dirs = len(rows) // TREE_ROW.size
        footer = (VERSION, self.inline_limit, self.scan_ns, self.count, self.path_bytes)
        self._write(FOOTER.pack(*footer, dirs, len(names)))
        self._fh.write(self._hash.digest())
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        assert self._tmp is not None
        os.chmod(self._tmp, 0o644)
        os.replace(self._tmp, self.path)
        self._tmp = None
        fsync_dir(self.path.parent)
        with contextlib.suppress(OSError):
            (self.path.parent / OLD_JSON).unlink()

    def close(self) -> None:
        """Drop the temp files (after :meth:`commit`, only the unnamed one is left)."""
        for fh in (self._fh, self._side):
            if fh is not None:
                fh.close()
        if self._tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._tmp)
