"""Revision syntax: the names a command accepts for a recorded state or a tree.

A full or abbreviated id, ``HEAD`` (or ``@``), a ref name (``main``, ``refs/heads/main``,
``<remote>/main``, a tag), each optionally followed by ``~N`` / ``^`` (first parents).
``Store.resolve`` and ``Store.tree_of`` are these functions over the store's repository
and refs; this module imports only pygit2, the errors and :mod:`usr.store.refs`.
"""

from __future__ import annotations

import re

import pygit2

from usr.errors import InputError, NotFoundError
from usr.store.refs import MAIN, Refs

_HEX_RE = re.compile(r"^[0-9a-f]{4,40}\Z")
_TILDE_RE = re.compile(r"^(.*?)((?:~\d*|\^)+)$")


def resolve(repo: pygit2.Repository, refs: Refs, rev: str) -> str:
    """A commit id for ``rev`` (see the module docstring). NotFoundError if nothing
    matches."""
    rev = rev.strip()
    m = _TILDE_RE.match(rev)
    if m and m.group(1):
        commit = resolve(repo, refs, m.group(1))
        for step in re.findall(r"~\d*|\^", m.group(2)):
            n = 1 if step in ("~", "^") else int(step[1:])
            for _ in range(n):
                parents = repo[commit].parent_ids
                if not parents:
                    raise NotFoundError(f"revision {rev!r} goes past the first state")
                commit = str(parents[0])
        return commit
    if rev in ("HEAD", "@"):
        head = refs.get(MAIN)
        if head is None:
            raise NotFoundError("HEAD: the dataset has no recorded state yet")
        return head
    for name in (rev, f"refs/heads/{rev}", f"refs/remotes/{rev}", f"refs/tags/{rev}"):
        if name.startswith("refs/"):
            try:
                target = refs.get(name)
            except InputError:
                continue
            if target:
                return target
    if _HEX_RE.match(rev):
        obj = lookup_prefix(repo, rev)
        if obj is not None:
            if obj.type == pygit2.enums.ObjectType.COMMIT:
                return str(obj.id)
            raise NotFoundError(f"{rev} is a {obj.type_str}, not a recorded state")
    raise NotFoundError(f"unknown revision {rev!r}", "see 'usr log' for recorded states")


def lookup_prefix(repo: pygit2.Repository, prefix: str) -> pygit2.Object | None:
    """The object a full or abbreviated hex id names, or None (unknown or ambiguous)."""
    if len(prefix) == 40:
        return repo.get(prefix)
    try:
        return repo.revparse_single(prefix)
    except (KeyError, ValueError, pygit2.GitError):
        return None


def tree_of(repo: pygit2.Repository, refs: Refs, rev: str | None) -> str | None:
    """The tree id of a commit or revision, or ``rev`` itself if it is a tree id."""
    if rev is None:
        return None
    if _HEX_RE.match(rev):
        obj = lookup_prefix(repo, rev)
        if obj is not None and obj.type == pygit2.enums.ObjectType.TREE:
            return str(obj.id)
    return str(repo[resolve(repo, refs, rev)].tree_id)
