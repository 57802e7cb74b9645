"""A sync comparison's per-file changes, spooled as rows instead of held as objects.

A bootstrap's comparison (:func:`usr.sync.trees.tree_diff`, local against remote) names
every file of the dataset. As a list of :class:`~usr.store.FileChange` objects that was
~270 bytes a file (the slotted object, its path, a 40-character hex id, a size), held from
the comparison until the push is decided (issue "Scale: a million files per dataset in
bounded memory"). A :class:`ChangeList` keeps each change as one row of the audit's
:class:`~usr.sync.auditrows.Spool` (one piece of code for spooled rows: a few hundred KiB
in memory, the rest in an anonymous temporary file) and makes a ``FileChange`` for a row
only as it is read, so a reader holds the one it is looking at. It reads as often as it is
asked, answers ``len()`` and truthiness without reading, and compares equal to a list of
the same changes. JSON round-trips every field (str, int, None; any path, non-ASCII or
not) exactly, so nothing built from it changes.

Appending ends when the list is made (:func:`collect`); the readers are
``usr.sync.audit`` (the document's file lists and the transfer estimate, walked in path
order through :func:`by_path`) and ``usr.sync.rules`` (the sections a partial transfer
would drop).
"""

from __future__ import annotations

from collections.abc import Iterable

from usr.store import FileChange
from usr.sync.auditrows import Spool, SpooledList


def _change(row: list) -> FileChange:
    return FileChange(*row)


class ChangeList(SpooledList):
    """The changes of one comparison, one spooled row each (see the module docstring).

    ``in_path_order`` says the rows were appended sorted by path, so :func:`by_path` can
    walk them as they are instead of sorting a list of every change."""

    def __init__(self, spool: Spool, in_path_order: bool) -> None:
        super().__init__(spool, _change)
        self.in_path_order = in_path_order


def collect(changes: Iterable[FileChange]) -> ChangeList:
    """A :class:`ChangeList` of ``changes`` (an iterator: each is let go once spooled)."""
    spool = Spool()
    last: str | None = None
    ordered = True
    for c in changes:
        if last is not None and c.path < last:
            ordered = False
        last = c.path
        spool.append((c.path, c.status, c.section, c.old_id, c.new_id, c.old_size, c.new_size))
    return ChangeList(spool, ordered)


def by_path(changes: Iterable[FileChange]) -> Iterable[FileChange]:
    """``changes`` sorted by path: a :class:`ChangeList` already in order as it is (no
    list of every change), anything else sorted (stable, as ``sorted`` is)."""
    if isinstance(changes, ChangeList) and changes.in_path_order:
        return changes
    return sorted(changes, key=lambda c: c.path)
