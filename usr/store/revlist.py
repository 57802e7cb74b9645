"""``rev-list --objects wants ^haves``, top-down: the git objects a receiver lacks, in
writing order, found by comparing trees path by path instead of listing everything.

Both ends of a transfer ask this (the push for what to offer, the server for what a fetch
wants), through ``Store.missing_objects`` or :func:`missing_typed`. For each new commit
its tree is compared with the trees at the same path in its parents and in the tips the
other side has ("bases"); a subtree whose id equals a base's at that path is skipped
without being read, so one new file among a million costs a handful of tree reads. An
object the other side has at *another* path is still listed (never fewer than it lacks).
docs/protocol.md, "How the missing objects are found", states the rules. Imports only
pygit2 and the errors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import pygit2

from usr.errors import NotFoundError

_TREE_MODE = 0o040000

#: ``name -> (id, filemode)`` of one tree's entries.
Entries = dict[str, tuple[pygit2.Oid, int]]

_KINDS = ("commit", "tree", "blob")
#: Ids compared or moved at once by :meth:`Listed.first_of_each`.
_PIECE = 65_536
_KIND_CODES = {name: i for i, name in enumerate(_KINDS)}


class Listed:
    """The ``(id, type name)`` pairs a walk found, in order, as two arrays: 20 raw bytes
    and one type byte an object, where a list of pairs of hex strings held ~150 bytes
    (a first push lists every file). Iterating makes each hex id as it is reached."""

    __slots__ = ("ids", "kinds")

    def __init__(self) -> None:
        self.ids = bytearray()
        self.kinds = bytearray()

    def append(self, raw: bytes, kind: str) -> None:
        self.ids += raw
        self.kinds.append(_KIND_CODES[kind])

    def __len__(self) -> int:
        return len(self.kinds)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        ids = self.ids
        for i, code in enumerate(self.kinds):
            yield ids[20 * i : 20 * i + 20].hex(), _KINDS[code]

    def oids(self) -> Iterator[str]:
        """The hex ids alone, in order."""
        ids = self.ids
        return (ids[i : i + 20].hex() for i in range(0, len(ids), 20))

    def piece(self, start: int, stop: int) -> tuple[list[str], list[str]]:
        """Hex ids and type names of the objects ``start`` to ``stop`` (one message's)."""
        ids, kinds = self.ids, self.kinds[start:stop]
        hexes = [ids[20 * i : 20 * i + 20].hex() for i in range(start, start + len(kinds))]
        return hexes, [_KINDS[code] for code in kinds]

    def first_of_each(self) -> None:
        """Keep each id's first place only, in order (in place): for a walk that stopped
        remembering the blobs it listed. Takes ~9 bytes an object for a moment (a stable
        order of the ids, and a flag each), where a set of the ids held ~100 for the whole
        walk; the ids are compared and moved a piece at a time."""
        import numpy as np

        keys = np.frombuffer(self.ids, dtype="S20")  # distinct ids stay distinct
        order = np.argsort(keys, kind="stable")  # equal ids: the first place comes first
        keep = np.ones(len(keys), dtype=bool)
        for at in range(1, len(order), _PIECE):
            here = order[at : at + _PIECE]
            same = keys[here] == keys[order[at - 1 : at - 1 + len(here)]]
            keep[here[same]] = False
        del order
        if keep.all():
            return
        kinds = np.frombuffer(self.kinds, dtype=np.uint8)
        n = 0
        for at in range(0, len(keys), _PIECE):
            kept = keep[at : at + _PIECE]
            moved_ids, moved_kinds = keys[at : at + _PIECE][kept], kinds[at : at + _PIECE][kept]
            keys[n : n + len(moved_ids)] = moved_ids  # n <= at: nothing unread is overwritten
            kinds[n : n + len(moved_ids)] = moved_kinds
            n += len(moved_ids)
        del keys, kinds, moved_ids, moved_kinds  # no view may outlive the resizes below
        del self.ids[20 * n :]
        del self.kinds[n:]

    def without(self, kind: str) -> Listed:
        """The same list without the objects of type ``kind``."""
        out, code = Listed(), _KIND_CODES[kind]
        for i, c in enumerate(self.kinds):
            if c != code:
                out.ids += self.ids[20 * i : 20 * i + 20]
                out.kinds.append(c)
        return out


def missing_objects(
    repo: pygit2.Repository,
    wants: Iterable[str],
    haves: Iterable[str],
    on_read: Callable[[str], None] | None = None,
) -> list[str]:
    """Git ids reachable from the commits ``wants`` and not on the other side, ordered so
    a receiver can write them as they come (blobs and subtrees before the trees that
    name them, trees before their commit, parents before children).

    ``haves`` are commits the other side has (with everything below them); those the
    local store lacks are ignored. ``on_read`` is called with the id of every tree read.
    """
    return list(missing_typed(repo, wants, haves, on_read).oids())


def missing_typed(
    repo: pygit2.Repository,
    wants: Iterable[str],
    haves: Iterable[str],
    on_read: Callable[[str], None] | None = None,
    blobs: bool = True,
) -> Listed:
    """:func:`missing_objects` with each id's type name (``commit``, ``tree``, ``blob``),
    known from the walk without reading any blob, as a compact :class:`Listed`. Without
    ``blobs``, only the commits and trees (a listing for a comparison: nothing is kept
    of the files, one each)."""
    known = [h for h in dict.fromkeys(haves) if h and _commit(repo, h) is not None]
    commits = _new_commits(repo, list(wants), known)
    walk = _TopDown(repo, on_read, blobs)
    have_trees = [_commit(repo, h).tree_id for h in known]  # type: ignore[union-attr]
    for c in commits:
        commit = repo[c]
        bases = [repo[p].tree_id for p in commit.parent_ids] + have_trees
        walk.tree(commit.tree_id, bases)
        walk.out.append(commit.id.raw, "commit")
    return walk.result()


def tree_changes(
    repo: pygit2.Repository,
    tree: str,
    bases: list[str],
    on_read: Callable[[str], None] | None = None,
) -> Listed:
    """``(id, type)`` of ``tree`` and what is below it that is not at the same path in the
    trees ``bases``, children first: what one tree adds over others, found by the same
    top-down comparison (equal subtrees unread). Empty when ``tree`` is one of ``bases``."""
    walk = _TopDown(repo, on_read)
    walk.tree(pygit2.Oid(hex=tree), [pygit2.Oid(hex=b) for b in bases])
    return walk.result()


def _commit(repo: pygit2.Repository, oid: str) -> pygit2.Commit | None:
    obj = repo.get(oid)
    return obj if isinstance(obj, pygit2.Commit) else None


def _new_commits(repo: pygit2.Repository, wants: list[str], known: list[str]) -> list[str]:
    """Commits reachable from ``wants`` and not from ``known``, parents first."""
    for w in wants:
        if _commit(repo, w) is None:
            raise NotFoundError(f"commit {w} is not in the store")
    if not wants:
        return []
    walker = repo.walk(
        pygit2.Oid(hex=wants[0]),
        pygit2.enums.SortMode.TOPOLOGICAL | pygit2.enums.SortMode.REVERSE,
    )
    for w in wants[1:]:
        walker.push(pygit2.Oid(hex=w))
    for h in known:
        walker.hide(pygit2.Oid(hex=h))
    return [str(c.id) for c in walker]


class _TopDown:
    """The emitting walk: ``out`` collects ``(id, type)`` children first; ``emitted``
    holds the raw ids ``out`` has (53 bytes each, where a hex string took 89), so an
    object is listed once whatever the paths naming it. Past :data:`REMEMBER_BLOBS` blobs
    (a first push or pull meets every file: ~100 bytes each in the set) it remembers only
    the trees, and :meth:`result` drops the blobs listed twice, once, at the end."""

    #: Blobs remembered in ``emitted`` before the walk leaves the rest to :meth:`result`.
    REMEMBER_BLOBS = 65_536

    def __init__(
        self,
        repo: pygit2.Repository,
        on_read: Callable[[str], None] | None,
        blobs: bool = True,
    ) -> None:
        self.repo = repo
        self.on_read = on_read
        #: False: blobs are neither listed nor remembered (only commits and trees).
        self.blobs = blobs
        self.emitted: set[bytes] = set()
        self.out = Listed()
        #: Blobs left to remember before :data:`REMEMBER_BLOBS` is reached.
        self.room = self.REMEMBER_BLOBS

    def result(self) -> Listed:
        """``out``, each object once (the first place: before every tree naming it)."""
        if self.room < 0:
            self.out.first_of_each()
        return self.out

    def entries(self, tree_id: pygit2.Oid) -> Entries | None:
        """A tree's entries, or None when this store lacks it (a base that cannot be
        read only means less is skipped)."""
        tree = self.repo.get(tree_id)
        if not isinstance(tree, pygit2.Tree):
            return None
        if self.on_read is not None:
            self.on_read(str(tree_id))
        return {e.name: (e.id, e.filemode) for e in tree}

    def tree(self, tree_id: pygit2.Oid, bases: list[pygit2.Oid]) -> None:
        """List what is below ``tree_id`` and not at the same path in any of ``bases``
        (the trees at this path on the other side or in the parents), then the tree.

        A tree already listed is not walked again: all below it was listed or is at its
        path in a base then. Equal to a base: the other side has it, or it was listed
        with an earlier (parent) commit."""
        if tree_id.raw in self.emitted or tree_id in bases:
            return
        mine = self.entries(tree_id)
        if mine is None:
            raise NotFoundError(f"tree {tree_id} is not in the store")
        theirs = [e for e in map(self.entries, dict.fromkeys(bases)) if e is not None]
        for name, (oid, mode) in mine.items():
            same_path = [t[name] for t in theirs if name in t]
            if any(other == oid for other, _ in same_path):
                continue
            if mode == _TREE_MODE:
                self.tree(oid, [other for other, m in same_path if m == _TREE_MODE])
            elif self.blobs and oid.raw not in self.emitted:
                if self.room >= 0:
                    self.room -= 1
                    if self.room >= 0:
                        self.emitted.add(oid.raw)
                self.out.append(oid.raw, "blob")
        self.emitted.add(tree_id.raw)
        self.out.append(tree_id.raw, "tree")
