"""The stat cache (``.usr/index.json``): path -> (size, mtime_ns, ctime_ns, inode) -> entry id.

Like git's index, it lets recording an unchanged dataset skip reading file contents: a file
whose stat matches its cached stat is taken to have the cached entry id.

Racy timestamps: a file modified within the same timestamp tick as it was hashed could
change without its stat changing. So the cache remembers when the scan that produced it
*started* (``scan_ns``); an entry whose mtime is not older than ``scan_ns - RACY_NS``
is never trusted and is re-hashed next time (by then it is old enough to be trusted). The
slack covers coarse filesystem clocks (NFS, Lustre, FAT: up to 1 s or 2 s).

The cache is replaced whole by atomic rename; a missing, unreadable or foreign-version
cache is simply empty (it only ever saves work, it is never the truth).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import NamedTuple

from usr.atomic import write_json
from usr.store.worktree import all_cached

VERSION = 1
RACY_NS = 2_000_000_000


class StatKey(NamedTuple):
    """The stat fields a cached entry is valid for (a tuple: a scan makes one per file)."""

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int

    @classmethod
    def of(cls, st: os.stat_result) -> StatKey:
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


class StatCache:
    """The stat cache of one store. Not thread-safe; callers hold the dataset lock to save."""

    def __init__(self, path: Path, inline_limit: int) -> None:
        self.path = path
        self.inline_limit = inline_limit
        self.scan_ns = 0
        self.entries: dict[str, tuple[StatKey, str]] = {}
        #: The tree the cached entries make (with the modes then), so a scan where every
        #: file hits the cache needs to write no tree at all.
        self.tree: str | None = None
        self._load()

    def _load(self) -> None:
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
            doc = json.loads(self.path.read_bytes())
            if doc.get("version") != VERSION or doc.get("inline_limit") != self.inline_limit:
                return  # a different inline limit gives different entry ids: start over
            self.scan_ns = int(doc["scan_ns"])
            self.tree = doc.get("tree")
            self.entries = {path: (tuple(row[:4]), row[4]) for path, row in doc["entries"].items()}

    def lookup(self, relpath: str, key: tuple[int, int, int, int]) -> str | None:
        """The cached entry id for ``relpath`` if its stat (a :class:`StatKey` or the same
        four fields as a plain tuple) matches and is not racy."""
        hit = self.entries.get(relpath)
        if hit is None or hit[0] != key:
            return None
        if key[1] >= self.scan_ns - RACY_NS:
            return None  # racy: could have changed within the tick it was hashed in
        return hit[1]

    def same_stat(self, relpath: str, key: tuple[int, int, int, int]) -> str | None:
        """The cached entry id for ``relpath`` if its stat matches, racy or not: a racy hit
        is only a candidate, to be confirmed by reading the file
        (:func:`usr.store.worktree.confirm_entry`)."""
        hit = self.entries.get(relpath)
        return hit[1] if hit is not None and hit[0] == key else None

    def unchanged_tree(self, dataset_dir: Path) -> tuple[str, int] | None:
        """``(tree, files)`` when every working file under ``dataset_dir`` hits the cache
        (same stat, not racy, plain mode, none added or gone): the cached tree, found by a
        scan that builds no per-file objects. None otherwise: scan in full."""
        if self.tree is None:
            return None
        files = all_cached(dataset_dir, self.entries, self.scan_ns - RACY_NS)
        return None if files is None else (self.tree, files)

    def replace(
        self, entries: dict[str, tuple[StatKey, str]], scan_ns: int, tree: str | None = None
    ) -> None:
        """Make ``entries`` (from a scan that started at ``scan_ns``, giving ``tree``) the
        whole cache."""
        self.entries = entries
        self.scan_ns = scan_ns
        self.tree = tree

    def update(self, relpath: str, key: StatKey, entry_id: str) -> None:
        """Remember one entry (after checkout wrote a verified file)."""
        self.entries[relpath] = (key, entry_id)
        self.tree = None

    def entry_ids(self) -> set[str]:
        """Every entry id the cache names (gc keeps them, as git keeps index blobs)."""
        return {oid for _, oid in self.entries.values()}

    def save(self) -> None:
        """Write the cache atomically (temp, fsync, rename), its entries a batch at a time
        (:func:`usr.atomic.write_json`)."""
        doc = {
            "version": VERSION,
            "inline_limit": self.inline_limit,
            "scan_ns": self.scan_ns,
            "tree": self.tree,
            "entries": {path: [*k, oid] for path, (k, oid) in sorted(self.entries.items())},
        }
        write_json(self.path, doc, "entries")
