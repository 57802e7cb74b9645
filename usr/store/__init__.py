"""The per-dataset object store (``<dataset>/.usr/``): a bare git repository plus chunks.

CONTRACT (other layers code against exactly this; the store issue implements it):

``Store.open(dataset_dir, create=True) -> Store``
    Open (or create / adopt) the store of a dataset directory.
``store.head(ref="refs/heads/main") -> str | None``
    Commit id a ref points at, or None.
``store.update_ref(name, new, old) -> None``
    Compare-and-swap: moves ``name`` from ``old`` (None = must not exist) to ``new``;
    raises ``ConflictError`` ("ref moved") otherwise. Atomic.
``store.working_tree() -> str``
    Tree id of the working files as they are now. Writes blobs/manifests/chunks into the
    store (like ``git add``) but commits nothing and moves no ref. Uses the stat cache.
``store.record(action, actor=None, message=None) -> Recorded``
    Under the dataset lock: build the working tree; if it differs from HEAD's tree (or
    there is no HEAD) commit it on ``refs/heads/main``. ``Recorded.commit`` is HEAD after,
    ``Recorded.created`` says whether a commit was made. The ONE way states are recorded.
``store.checkout(commit, force=False) -> None``
    Make the working files equal the commit's tree: stage, verify by hash, promote by
    rename; move ``refs/heads/main`` in the same locked step. Refuses unrecorded changes
    unless ``force`` (then records them first).
``store.diff(a, b) -> list[FileChange]``
    Exact per-file comparison of two trees or commits (either may be None = empty).
``store.merge_base(a, b)``, ``store.is_ancestor(a, b)``, ``store.log(commit)``.
``store.missing_objects(wants, haves) -> list[str]``
    Git ids reachable from ``wants`` (commits) and not from ``haves``, in an order a
    receiver can write (blobs/trees before the trees/commits that name them).
``store.read_object(oid) -> (type_name, bytes)`` / ``store.write_object(type_name, data,
expect=None) -> oid`` (raises VerifyError if ``expect`` differs).
``store.chunks`` : ChunkStore with ``has(cid)``, ``get(cid) -> bytes`` (verified),
    ``put(cid, data)`` (verified), ``missing(cids) -> list``.
``store.manifest_of(blob_id) -> Manifest | None``  (None for an inline blob).
``store.entry_size(blob_id) -> int``  whole-file size behind a tree entry.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FileChange:
    """One path that differs between two trees. ``status`` is ``A``, ``M`` or ``D``."""

    path: str
    status: str
    section: str
    old_id: str | None
    new_id: str | None
    old_size: int | None
    new_size: int | None


@dataclass(frozen=True)
class Recorded:
    commit: str | None
    created: bool
