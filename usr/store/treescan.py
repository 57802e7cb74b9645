"""The working files against the stat cache, as two sorted streams (git's index and
cache-tree, our own code).

The walk visits directories depth first, each one's children sorted by name with
directories compared as ``name/`` (git's tree order, which is also the byte order of full
paths: the order of the cache's rows). A cursor moves through the cache's rows as the walk
moves through the files, so a run of files is checked against the cache with one bytes
comparison of the names and one list comparison of the stats, no per-file dict. A directory
whose every file hits (same stat and mode, not racy) with none added or gone keeps its
cached tree id; any other is hashed where it missed and its tree is written when the walk
leaves it (bottom-up, as git writes trees), so nothing holds the whole dataset's paths.
The next cache is written by the caller's :class:`usr.store.index.CacheWriter` as the walk
goes: rows that hit are copied as bytes.

The rules for what may be recorded (runtime names, backslashes, UTF-8, symlinks, special
files, path length) are :func:`usr.store.worktree.list_dir`'s, the same as ``scan``'s.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from operator import attrgetter, countOf, itemgetter
from pathlib import Path
from typing import Any

from usr.store import treefork
from usr.store.model import ScanStats
from usr.store.worktree import MODE_EXEC, MODE_FILE, list_dir

#: A file the cache missed: ``(relpath, abspath, scanned stat, candidate id or None)`` ->
#: ``(entry id, the stat it is valid for)``; the candidate is the cached id when the stat
#: matches but is racy (see :meth:`usr.store.index.StatCache.same_stat`).
Hasher = Callable[[str, str, os.stat_result, "str | None"], tuple[str, os.stat_result]]

#: A cache row (docs/format.md §6) as the walk reads it: the stat fields it compares, and
#: the entry id. The row layout is :data:`usr.store.index.ROW`'s.
_ROW_KEY = struct.Struct("<QqqQI24x")
_ROW_OID = struct.Struct("<40x20s")
_ROW_SIZE = 60
_mtime = itemgetter(1)
_name = itemgetter(1)
_stat = itemgetter(2)
#: The stat fields a row holds, in its order (C-level: this runs once per file).
_stat_key = attrgetter("st_size", "st_mtime_ns", "st_ctime_ns", "st_ino", "st_mode")
_GIT_MODE = {MODE_FILE: b"100644", MODE_EXEC: b"100755"}
_TREE_MODE = b"40000"


class Miss(Exception):
    """A check-only walk (no hasher) met something the cache does not hold."""


class StaleTree(Exception):
    """A cached tree id to be reused is not in the store (removed by hand, or a foreign
    cache): the caller walks again without the cache-tree."""


class _Dir:
    """One directory being walked: its sorted children, the entries of its tree so far and
    whether everything in it has hit the cache."""

    __slots__ = (
        "prefix",
        "path",
        "children",
        "subdirs",
        "i",
        "parts",
        "clean",
        "cached",
        "files",
        "start",
        "slot",
    )

    def __init__(
        self, prefix: str, path: str, children: list, cached: Any, start: int, slot: int
    ) -> None:
        self.prefix = prefix
        self.path = path  # the directory's absolute path
        self.children = children
        #: Where the subdirectories are among the children, last first (popped in turn).
        self.subdirs = []
        if countOf(map(_stat, children), None):
            self.subdirs = [i for i, child in enumerate(children) if child[2] is None][::-1]
        self.i = 0
        #: ("run", names, first row, count) for files that hit, copied from the cache rows;
        #: ("one", name, raw id, git mode bytes) for anything else, in tree order.
        self.parts: list[tuple] = []
        self.clean = True
        self.cached = cached  # (file count, raw tree id) from the cache-tree, or None
        self.files = 0
        self.start = start  # the cache row the directory's files start at
        self.slot = slot  # its row in the next cache-tree


class TreeScan:
    """One sorted walk of ``root`` against ``cache`` (a :class:`usr.store.index.StatCache`).

    With ``hasher`` and ``write_tree`` (tree bytes -> id) it returns the working tree,
    hashing what missed; without them it only checks, raising :class:`Miss` at the first
    thing that is not a hit. ``out`` (a ``CacheWriter``) receives the next cache.
    ``use_trees=False`` ignores the cache-tree (every tree is built again).
    """

    def __init__(
        self,
        root: Path,
        cache: Any,
        trust_before: int,
        hasher: Hasher | None = None,
        write_tree: Callable[[bytes], str] | None = None,
        tree_exists: Callable[[str], bool] | None = None,
        out: Any = None,
        use_trees: bool = True,
    ) -> None:
        self.root = str(root)
        self.cache = cache
        self.files, self.dirs = cache.files, cache.dirs
        self.names, self.raw = cache.files.names, cache.files.raw
        self.trust = trust_before
        self.hasher, self.write_tree, self.tree_exists = hasher, write_tree, tree_exists
        self.out = out
        self.use_trees = use_trees
        self.c = self.p = 0  # cursor in the cache's rows, and where its path starts
        self.t = self.tp = 0  # the same in the cache-tree's directories
        self.stats = ScanStats()
        self.changed = False  # anything not a plain hit: the cache must be written again

    def run(self) -> tuple[str, int]:
        """``(root tree id, files)``, the last part of a large tree checked by a forked
        child meanwhile (:mod:`usr.store.treefork`)."""
        lister = treefork.start(self)
        try:
            oid, files, clean = self.walk("", self.root, lister)
        finally:
            if lister is not None:
                lister.close()
        assert oid is not None
        if clean and self.tree_exists is not None and not self.tree_exists(oid.hex()):
            raise StaleTree(oid.hex())
        self.stats.files = files
        return oid.hex(), files

    def walk(self, prefix: str, path: str, lister: Any) -> tuple[bytes | None, int, bool]:
        """``(tree id or None, files, clean)`` of the directory ``prefix`` at ``path``,
        taking the subtrees ``lister`` found clean. Not split: one loop over an explicit
        stack (nesting can be deeper than Python's recursion limit)."""
        stack = [self._enter(prefix, path)]
        while True:
            d = stack[-1]
            if d.i < len(d.children):
                key, name, st = d.children[d.i]
                if st is not None:
                    j = d.subdirs[-1] if d.subdirs else len(d.children)
                    self._files(d, d.children[d.i : j])
                    d.i = j
                else:
                    d.subdirs.pop()
                    d.i += 1
                    sub = f"{d.prefix}{key}"
                    self._skip_gone(d, sub.encode(), below=True)
                    if lister is None or not self._take(d, sub, name, lister):
                        stack.append(self._enter(sub, f"{d.path}/{name}"))
                continue
            stack.pop()
            oid, files = self._leave(d)
            if not stack:
                return oid, files, d.clean
            parent = stack[-1]
            parent.clean = parent.clean and d.clean
            parent.files += files
            if oid is not None:
                name = d.prefix[len(parent.prefix) : -1]
                parent.parts.append(("one", name, oid, _TREE_MODE if not d.clean else None))

    def _take(self, d: _Dir, prefix: str, name: str, lister: Any) -> bool:
        """Take the subdirectory ``prefix`` as the child checked it, if it found every
        file under it a hit and agrees with this walk on where its rows start."""
        found = lister.answer(prefix)
        if found is None:
            return False
        c0, p0, t0, c1, p1, t1, tp1, files, oid, ops = found
        cached, t, _tp = self._tree_row(prefix.encode(), self.t, self.tp)
        if (self.c, self.p) != (c0, p0) or cached != (files, oid) or t != t0 + 1:
            return False
        self.c, self.p, self.t, self.tp = c1, p1, t1, tp1
        if self.out is not None:
            treefork.replay(ops, self.out)
        d.files += files
        d.parts.append(("one", name, oid, None))
        self.stats.forked += files
        return True

    def _tree_row(self, key: bytes, t: int, tp: int) -> tuple[Any, int, int]:
        """The cache-tree row of directory ``key`` (``(files, raw id)`` or None) from
        cursor ``(t, tp)``, and the cursor past it."""
        cached = None
        dirs = self.dirs
        while t < len(dirs):
            at, after = dirs.path_at(tp)
            if at > key:
                break
            if at == key and self.use_trees:
                count, _plen, oid = dirs.at(t)
                cached = (count, oid)
            t, tp = t + 1, after
        return cached, t, tp

    def _enter(self, prefix: str, path: str) -> _Dir:
        """List a directory and find its cache-tree row (the tree cursor moves in step)."""
        children = list_dir(prefix, path)
        key = prefix.encode()
        cached, self.t, self.tp = self._tree_row(key, self.t, self.tp)
        slot = self.out.open_tree(key) if self.out is not None else -1
        return _Dir(prefix, path, children, cached, self.c, slot)

    def _skip_gone(self, d: _Dir, bound: bytes, below: bool) -> None:
        """Pass the cache rows of files that are gone: those before ``bound`` (``below``)
        or, leaving a directory, those still under it (``bound`` is its prefix)."""
        files = self.files
        while self.c < len(files):
            path, after = files.path_at(self.p)
            if (path >= bound) if below else not path.startswith(bound):
                return
            self.c, self.p = self.c + 1, after
            self._dirty(d)

    def _dirty(self, d: _Dir) -> None:
        d.clean = False
        self.changed = True
        if self.hasher is None:
            raise Miss()

    def _files(self, d: _Dir, run: list) -> None:
        """A run of files between two subdirectories: one comparison when all hit."""
        c, k = self.c, len(run)
        names = list(map(_name, run))
        if c + k <= len(self.files):
            prefix = d.prefix
            expect = (prefix + ("\0" + prefix).join(names) + "\0").encode()
            if self.names.startswith(expect, self.p):
                keys = list(map(_stat_key, map(_stat, run)))
                block = self.raw[c * _ROW_SIZE : (c + k) * _ROW_SIZE]
                if (
                    keys == list(_ROW_KEY.iter_unpack(block))
                    and max(map(_mtime, keys)) < self.trust
                ):
                    self._hit(d, names, k, len(expect))
                    return
        for _key, name, st in run:
            self._file(d, name, st)

    def _hit(self, d: _Dir, names: list[str], k: int, path_bytes: int) -> None:
        """``k`` files at the cursor hit: their rows go to the next cache as they are."""
        c, p = self.c, self.p
        d.parts.append(("run", names, c, k))
        if self.out is not None:
            self.out.copy(c, c + k, p, p + path_bytes)
        self.c, self.p = c + k, p + path_bytes
        d.files += k

    def _file(self, d: _Dir, name: str, st: os.stat_result) -> None:
        """One file, looked up at the cursor: a hit, or hashed (with a candidate id when
        only the racy rule kept it from hitting)."""
        rel = f"{d.prefix}{name}"
        relb = rel.encode()
        self._skip_gone(d, relb, below=True)
        key = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_mode)
        candidate = None
        if self.c < len(self.files) and self.names.startswith(relb + b"\0", self.p):
            row = self.files.at(self.c)
            if row[:5] == key and row[1] < self.trust:
                self._hit(d, [name], 1, len(relb) + 1)
                return
            if row[:4] == key[:4]:
                candidate = row[6].hex()
            self.c, self.p = self.c + 1, self.p + len(relb) + 1
        d.files += 1
        self._dirty(d)
        assert self.hasher is not None
        oid, after = self.hasher(rel, f"{d.path}/{name}", st, candidate)
        self.stats.hashed += 1
        self.stats.bytes_hashed += after.st_size
        raw = bytes.fromhex(oid)
        mode = MODE_EXEC if st.st_mode & 0o100 else MODE_FILE
        d.parts.append(("one", name, raw, _GIT_MODE[mode]))
        if self.out is not None:
            # The stat after hashing (what the content is valid for), the mode as scanned
            # (what the tree records).
            stat = (after.st_size, after.st_mtime_ns, after.st_ctime_ns, after.st_ino)
            self.out.add(relb, (*stat, st.st_mode), raw)

    def _leave(self, d: _Dir) -> tuple[bytes | None, int]:
        """The directory's tree id (None: no file under it) and file count, reusing the
        cached tree when everything under it hit."""
        self._skip_gone(d, d.prefix.encode(), below=False)
        cached = d.cached
        if d.files == 0 and d.prefix:
            return None, 0  # nothing under it (now): it is in no tree, as in git
        if d.clean and cached is not None and cached[0] == d.files == self.c - d.start:
            oid = cached[1]
        else:
            self._dirty(d)
            assert self.write_tree is not None
            oid = bytes.fromhex(self.write_tree(self._tree_bytes(d)))
        if self.out is not None:
            self.out.set_tree(d.slot, d.files, oid)
        return oid, d.files

    def _tree_bytes(self, d: _Dir) -> bytes:
        """Git's tree object body for the directory's entries (already in tree order)."""
        out = []
        for part in d.parts:
            if part[0] == "run":
                _, names, c, k = part
                block = self.raw[c * _ROW_SIZE : (c + k) * _ROW_SIZE]
                keys = _ROW_KEY.iter_unpack(block)
                oids = _ROW_OID.iter_unpack(block)
                for name, key, (oid,) in zip(names, keys, oids, strict=True):
                    git = b"100755" if key[4] & 0o100 else b"100644"
                    out.append(b"%s %s\0%s" % (git, name.encode(), oid))
            else:
                _, name, oid, git = part
                if git is None:  # a subtree reused as cached: it must still be stored
                    if self.tree_exists is not None and not self.tree_exists(oid.hex()):
                        raise StaleTree(oid.hex())
                    git = _TREE_MODE
                out.append(b"%s %s\0%s" % (git, name.encode(), oid))
        return b"".join(out)
