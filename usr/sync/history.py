"""Ancestry as the sync sees it: commits between two heads, how two heads relate, and the
remote-tracking refs that remember what a remote had.

Owns the relations (``equal``, ``local-ahead``, ``remote-ahead``, ``diverged``,
``remote-missing``, ``local-missing``, ``both-missing``), :func:`commits` (a walk that
hides what the other side has), and ``refs/remotes/REMOTE/main``. Reads the store only;
may import pygit2, :mod:`usr.errors` and :mod:`usr.remotes` (for a remote's name),
nothing else of the sync.
"""

from __future__ import annotations

from typing import Any

from usr.errors import ConflictError

TRACKING_REF = "refs/remotes/{remote}/main"
MAIN_REF = "refs/heads/main"


def short(oid: str | None) -> str:
    """The 12-character form of a commit id in messages and text output."""
    return oid[:12] if oid else "(none)"


def haves(head: str | None) -> list[str]:
    """What to tell the other side this side has: its head, if any."""
    return [head] if head else []


def commits(store: Any, tip: str | None, hide: str | None = None) -> list[str]:
    """Commit ids reachable from ``tip`` and not from ``hide`` (newest first)."""
    if tip is None:
        return []
    import pygit2

    walker = store.repo.walk(pygit2.Oid(hex=tip), pygit2.enums.SortMode.TOPOLOGICAL)
    if hide is not None:
        walker.hide(pygit2.Oid(hex=hide))
    return [str(c.id) for c in walker]


def parents(store: Any, commit: str) -> list[str]:
    return [str(p) for p in store.repo[commit].parent_ids]


def relation(store: Any, local: str | None, remote: str | None) -> tuple[str, str | None]:
    """How two recorded heads relate, and their merge base."""
    if local is None and remote is None:
        return "both-missing", None
    if remote is None:
        return "remote-missing", None
    if local is None:
        return "local-missing", None
    if local == remote:
        return "equal", local
    base = store.merge_base(local, remote)
    if base == local:
        return "remote-ahead", base
    if base == remote:
        return "local-ahead", base
    return "diverged", base


def effective_relation(heads_relation: str, local_dirty: bool, remote_dirty: bool) -> str:
    """The relation after both sides would record their unrecorded working changes."""
    if heads_relation in ("remote-missing", "local-missing", "both-missing"):
        return heads_relation
    local_moves = local_dirty or heads_relation in ("local-ahead", "diverged")
    remote_moves = remote_dirty or heads_relation in ("remote-ahead", "diverged")
    if local_moves and remote_moves:
        return "diverged"
    if local_moves:
        return "local-ahead"
    if remote_moves:
        return "remote-ahead"
    return "equal"


def require_fast_forward(
    store: Any, head: str | None, old: str | None, new: str, hint: str
) -> None:
    """The precondition of a ref's compare-and-swap from ``old`` to ``new``: it still names
    ``old`` (it is ``head`` now), and ``new`` contains ``old`` (fast-forward only)."""
    if head != old:
        raise ConflictError(
            f"remote moved: head is {head or 'absent'}, expected {old or 'absent'}", hint
        )
    if old is not None and not store.is_ancestor(old, new):
        raise ConflictError(f"{new} does not contain remote head {old}: not a fast-forward")


def tracking_ref(remote: str) -> str:
    """``refs/remotes/REMOTE/main``: the last head seen on ``remote``."""
    from usr.remotes import validate_name

    return TRACKING_REF.format(remote=validate_name(remote))


def set_tracking(store: Any, remote: str, head: str | None) -> None:
    """Move ``refs/remotes/REMOTE/main`` to the last remote head seen (like git fetch)."""
    if head is None:
        return
    ref = TRACKING_REF.format(remote=remote)
    old = store.head(ref)
    if old != head:
        store.update_ref(ref, head, old)
