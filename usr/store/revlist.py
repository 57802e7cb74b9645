"""``rev-list --objects wants ^haves``: the git objects a receiver lacks, in writing order.

Both ends of a transfer ask this (the push for what to offer, the server for what a fetch
wants), through ``Store.missing_objects``. Imports only pygit2 and the errors.
"""

from __future__ import annotations

from collections.abc import Iterable

import pygit2

from usr.errors import NotFoundError

_TREE_MODE = 0o040000


def missing_objects(
    repo: pygit2.Repository, wants: Iterable[str], haves: Iterable[str]
) -> list[str]:
    """Git ids reachable from the commits ``wants`` but not from ``haves``, ordered so
    a receiver can write them as they come (blobs and subtrees before the trees that
    name them, trees before their commit, parents before children).

    ``haves`` the local store lacks are ignored; objects of the trees of known haves
    are excluded, which may send a few objects a receiver already has (never fewer).
    """
    known = [h for h in haves if h and repo.get(h) is not None]
    wants = list(wants)
    for w in wants:
        obj = repo.get(w)
        if obj is None or obj.type != pygit2.enums.ObjectType.COMMIT:
            raise NotFoundError(f"commit {w} is not in the store")
    walker = None
    for w in wants:
        if walker is None:
            walker = repo.walk(
                pygit2.Oid(hex=w),
                pygit2.enums.SortMode.TOPOLOGICAL | pygit2.enums.SortMode.REVERSE,
            )
        else:
            walker.push(pygit2.Oid(hex=w))
    if walker is None:
        return []
    for h in known:
        walker.hide(pygit2.Oid(hex=h))
    commits = [str(c.id) for c in walker]
    seen: set[str] = set()
    for h in known:
        _mark_tree(repo, str(repo[h].tree_id), seen)
    out: list[str] = []
    for c in commits:
        _emit_tree(repo, str(repo[c].tree_id), seen, out)
        out.append(c)
    return out


def _mark_tree(repo: pygit2.Repository, tree_id: str, seen: set[str]) -> None:
    """Mark a have's tree and everything below it as present at the receiver."""
    if tree_id in seen:
        return
    seen.add(tree_id)
    for e in repo[tree_id]:
        if e.filemode == _TREE_MODE:
            _mark_tree(repo, str(e.id), seen)
        else:
            seen.add(str(e.id))


def _emit_tree(repo: pygit2.Repository, tree_id: str, seen: set[str], out: list[str]) -> None:
    """Append the unseen objects below ``tree_id``, then the tree itself (children first)."""
    if tree_id in seen:
        return
    seen.add(tree_id)
    for e in repo[tree_id]:
        oid = str(e.id)
        if e.filemode == _TREE_MODE:
            _emit_tree(repo, oid, seen, out)
        elif oid not in seen:
            seen.add(oid)
            out.append(oid)
    out.append(tree_id)
