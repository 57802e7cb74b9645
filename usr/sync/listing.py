"""What a fetch is told it lacks: the server's ``objects`` listing for a ``want``.

The listing comes from one top-down walk (:func:`usr.store.revlist.missing_typed`) for
commits, or a whole walk of a tree (a working tree for a diff); types come from the walk,
never from reading blobs. Without blobs (a comparison) it carries each named blob's
whole-file size instead, from the stat cache where it can, made as the messages go
(never a map of every blob). It goes in messages of at most the batch the client names
(:func:`batched`), so neither side holds it as one JSON text.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import suppress
from typing import Any

from usr.errors import InputError
from usr.store import revlist
from usr.sync.packstream import read_for_send
from usr.sync.peercheck import parse_tree
from usr.sync.trees import CachedSizes


def _walk(store: Any, oid: str, types: dict[str, str], order: list[str]) -> None:
    """Post-order walk (children first) of a tree want, typing what it meets (listed
    whole: the requester skips what it has)."""
    if oid in types:
        return
    types[oid] = "tree"
    _, data = store.read_object(oid)
    for child_kind, _name, child in parse_tree(data, f"tree {oid}"):
        if child_kind == "tree":
            _walk(store, child, types, order)
        elif child not in types:
            types[child] = "blob"
            order.append(child)
    order.append(oid)


def list_objects(store: Any, wants: list[str], haves: list[str], blobs: bool = True) -> dict:
    """The ``objects`` reply: ids the requester lacks (in writable order) with their types
    (``listed``, a :class:`usr.store.revlist.Listed`), and ``sizes`` (``(id, size)`` pairs,
    made as they are read); see :func:`batched`.

    ``wants`` are commits (negotiated against ``haves`` top-down, see
    :func:`usr.store.revlist.missing_typed`: equal subtrees are skipped unread) or trees
    (a working tree for a diff: listed whole; the requester skips what it has). Types come
    from the walk over commits and trees, never from reading blobs. With ``blobs`` false
    only commits and trees are listed, plus the size of every blob they name (``sizes``):
    enough to compare trees without moving file contents. A blob named in several trees
    may be sized more than once.
    """
    order = revlist.Listed()  # raw ids and a type byte each: one object per file
    commit_wants, tree_wants = [], []
    for oid in wants:
        kind, _ = store.read_object(oid)
        if kind not in ("commit", "tree"):
            raise InputError(f"cannot fetch {oid}: a {kind}, not a commit or tree")
        (commit_wants if kind == "commit" else tree_wants).append(oid)
    if commit_wants:
        order = revlist.missing_typed(store.repo, commit_wants, haves, blobs=blobs)
    if tree_wants:
        types = dict(order)
        walked: list[str] = []
        for oid in tree_wants:
            _walk(store, oid, types, walked)
        for oid in walked:
            order.append(bytes.fromhex(oid), types[oid])
    sizes: Iterable[tuple[str, int]] = ()
    if not blobs:
        order = order.without("blob")
        sizes = _tree_blob_sizes(store, [o for o, k in order if k == "tree"])
    return {"listed": order, "sizes": sizes}


def _tree_blob_sizes(store: Any, trees: list[str]) -> Iterator[tuple[str, int]]:
    """``(blob id, whole-file size)`` of every blob the ``trees`` name, once per tree,
    made as they are asked for: a map of every blob's size by hex id, and the stat cache's
    as another, held ~350 bytes a file on the serving side of a pull."""
    size_of = _BlobSizes(store)
    for oid in trees:
        _, data = read_for_send(store, oid)
        seen: set[str] = set()
        for kind, _name, child in parse_tree(data):
            if kind == "blob" and child not in seen:
                seen.add(child)
                yield child, size_of(child)


class _BlobSizes:
    """Whole-file sizes of blobs for a tree listing: from the stat cache once more than
    :attr:`CACHE_AFTER` are asked for (a working file's size is its entry's), else from
    the store, which reads every blob that might be a manifest (20,000 small files: 20,000
    whole reads for a bootstrap pull's listing, besides the reads that send them)."""

    CACHE_AFTER = 256

    def __init__(self, store: Any) -> None:
        self.store = store
        self.asked = 0
        self.cached: CachedSizes | None = None

    def __call__(self, oid: str) -> int:
        self.asked += 1
        if self.cached is None and self.asked == self.CACHE_AFTER + 1:
            with suppress(OSError, AttributeError, ValueError):
                self.cached = CachedSizes(self.store)
        size = None if self.cached is None else self.cached.get(bytes.fromhex(oid))
        return int(self.store.entry_size(oid)) if size is None else size


def batched(found: dict[str, Any], size: int | None) -> Iterator[dict[str, Any]]:
    """The ``objects`` reply of :func:`list_objects` in messages of at most ``size`` ids
    (with their types) and ``size`` sizes each, in order, every one but the last with
    ``more: true`` and the last with ``more: false`` (at least one message). With ``size``
    None (a client from before batched listings): the whole reply, without ``more``.
    ``sizes`` are read as the messages are made (a dict, or ``(id, size)`` pairs)."""
    listed, sizes = found["listed"], found["sizes"]
    pairs = iter(sizes.items() if isinstance(sizes, dict) else sizes)
    if size is None:
        oids, types = listed.piece(0, len(listed))
        yield {"oids": oids, "types": types, "sizes": dict(pairs)}
        return
    ahead = next(pairs, None)
    k = 0
    while True:
        oids, types = listed.piece(k * size, (k + 1) * size)
        piece: dict[str, int] = {}
        while ahead is not None and len(piece) < size:
            piece[ahead[0]] = ahead[1]
            ahead = next(pairs, None)
        k += 1
        more = k * size < len(listed) or ahead is not None
        yield {"oids": oids, "types": types, "sizes": piece, "more": more}
        if not more:
            return
