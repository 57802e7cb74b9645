"""The one tree comparison: ``status``, ``log --stat``, ``show``, ``diff-tree`` and the sync
audit all read from :func:`diff_trees`, so they can never disagree about what changed.

Subtrees with equal ids are skipped without being read, so comparing two states of a
100,000-file dataset that differ in one file reads only the trees on that file's path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pygit2

from usr.errors import InputError
from usr.layout import check_relpath, section_of
from usr.store.index import StatCache
from usr.store.model import FileChange
from usr.store.worktree import FILE_MODES, MODE_TREE

Entry = tuple[str, int]  # (id, mode)


def _children(repo: pygit2.Repository, tree_id: str | None) -> dict[str, Entry]:
    if tree_id is None:
        return {}
    return {e.name: (str(e.id), e.filemode) for e in repo[tree_id]}


def _files_under(repo: pygit2.Repository, prefix: str, tree_id: str) -> Iterator[tuple[str, str]]:
    for name, (oid, mode) in sorted(_children(repo, tree_id).items()):
        rel = f"{prefix}{name}"
        if mode == MODE_TREE:
            yield from _files_under(repo, rel + "/", oid)
        else:
            yield rel, oid


def _walk(
    repo: pygit2.Repository, prefix: str, a: str | None, b: str | None
) -> Iterator[tuple[str, str | None, str | None]]:
    """``(path, old_id, new_id)`` for every differing file under two trees, in path order:
    a directory sorts as its name and "/", as its paths do (``d.txt`` before ``d/x``), and
    a file that became a directory (or back) as its own name, before both."""
    old, new = _children(repo, a), _children(repo, b)
    items = []  # (sort key, name, the directory side?)
    for name in set(old) | set(new):
        check_relpath(f"{prefix}{name}")
        o, n = old.get(name), new.get(name)
        if o == n:
            continue
        sides = [s for s in (o, n) if s is not None]
        if any(s[1] != MODE_TREE for s in sides):
            items.append((name, name, False))
        if any(s[1] == MODE_TREE for s in sides):
            items.append((name + "/", name, True))
    for _, name, is_tree in sorted(items):
        rel = f"{prefix}{name}"
        o, n = old.get(name), new.get(name)
        if is_tree:
            o_tree = o[0] if o is not None and o[1] == MODE_TREE else None
            n_tree = n[0] if n is not None and n[1] == MODE_TREE else None
            yield from _walk(repo, rel + "/", o_tree, n_tree)
            continue
        for side in (o, n):
            if side is not None and side[1] != MODE_TREE and side[1] not in FILE_MODES:
                raise InputError(f"tree entry {rel!r} has mode {side[1]:o}; refused")
        o_file = o[0] if o is not None and o[1] in FILE_MODES else None
        n_file = n[0] if n is not None and n[1] in FILE_MODES else None
        if o_file != n_file:  # a mode-only change is the same bytes: not a content change
            yield rel, o_file, n_file


def _no_size(_oid: str) -> None:
    return None


def diff_trees(
    repo: pygit2.Repository,
    a: str | None,
    b: str | None,
    size_of: Callable[[str], int | None] | None,
) -> list[FileChange]:
    """Every file that differs between trees ``a`` and ``b`` (either may be None), sorted
    by path, with section, ids and whole-file sizes (manifest sizes for chunked files);
    with ``size_of`` None, no sizes (None), and no blob is read."""
    return list(iter_diff(repo, a, b, size_of))


def iter_diff(
    repo: pygit2.Repository,
    a: str | None,
    b: str | None,
    size_of: Callable[[str], int | None] | None,
    new_size_of: Callable[[str, str], int | None] | None = None,
) -> Iterator[FileChange]:
    """:func:`diff_trees` one change at a time, in the same (path) order, holding only
    the trees on the current path. ``new_size_of(path, new_id)``, when given, sizes the
    new side instead of ``size_of`` (a stat-cache row knows a new file's size unread)."""
    size = size_of or _no_size
    new_size = new_size_of or (lambda _path, oid: size(oid))
    for rel, old, new in _walk(repo, "", a, b):
        status = "A" if old is None else "D" if new is None else "M"
        yield FileChange(
            path=rel,
            status=status,
            section=section_of(rel),
            old_id=old,
            new_id=new,
            old_size=size(old) if old else None,
            new_size=new_size(rel, new) if new else None,
        )


def cached_sizes(
    path: Path, inline_limit: int, fallback: Callable[[str], int | None]
) -> Callable[[str, str], int | None]:
    """``new_size_of`` for :func:`iter_diff` from the stat cache at ``path``
    (:meth:`StatCache.sizes_in_order`), read at the first call: a diff with no new file (a
    no-op status, whose walk has just read the cache) does not read it a second time
    (90 MB at 1,000,000 files)."""
    sizes: Callable[[str, str], int | None] | None = None

    def size(relpath: str, entry_id: str) -> int | None:
        nonlocal sizes
        if sizes is None:
            sizes = StatCache(path, inline_limit).sizes_in_order(fallback)
        return sizes(relpath, entry_id)

    return size
