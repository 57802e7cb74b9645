"""The one tree comparison: ``status``, ``log --stat``, ``show``, ``diff-tree`` and the sync
audit all read from :func:`diff_trees`, so they can never disagree about what changed.

Subtrees with equal ids are skipped without being read, so comparing two states of a
100,000-file dataset that differ in one file reads only the trees on that file's path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pygit2

from usr.errors import InputError
from usr.layout import check_relpath, section_of
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
    """``(path, old_id, new_id)`` for every differing file under two trees."""
    old, new = _children(repo, a), _children(repo, b)
    for name in sorted(set(old) | set(new)):
        rel = f"{prefix}{name}"
        check_relpath(rel)
        o, n = old.get(name), new.get(name)
        if o == n:
            continue
        for side in (o, n):
            if side is not None and side[1] != MODE_TREE and side[1] not in FILE_MODES:
                raise InputError(f"tree entry {rel!r} has mode {side[1]:o}; refused")
        o_tree = o is not None and o[1] == MODE_TREE
        n_tree = n is not None and n[1] == MODE_TREE
        if o_tree or n_tree:
            yield from _walk(repo, rel + "/", o[0] if o_tree else None, n[0] if n_tree else None)
        o_file = o if o is not None and o[1] in FILE_MODES else None
        n_file = n if n is not None and n[1] in FILE_MODES else None
        if o_file is None and n_file is None:
            continue
        if o_file is not None and n_file is not None and o_file[0] == n_file[0]:
            continue  # only the mode changed: same bytes, not a content change
        yield rel, o_file[0] if o_file else None, n_file[0] if n_file else None


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
    size = size_of or _no_size
    changes = []
    for rel, old, new in _walk(repo, "", a, b):
        status = "A" if old is None else "D" if new is None else "M"
        changes.append(
            FileChange(
                path=rel,
                status=status,
                section=section_of(rel),
                old_id=old,
                new_id=new,
                old_size=size(old) if old else None,
                new_size=size(new) if new else None,
            )
        )
    changes.sort(key=lambda c: c.path)
    return changes
