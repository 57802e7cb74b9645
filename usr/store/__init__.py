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
``store.diff(a, b, sizes=True) -> list[FileChange]``
    Exact per-file comparison of two trees or commits (either may be None = empty);
    ``sizes=False`` leaves the sizes None and reads no blob.
``store.iter_diff(a, b) -> Iterator[FileChange]``
    The same changes with sizes, one at a time in the same order (a new file's size
    comes from its stat-cache row, unread): what snapshot and status print from.
``store.merge_base(a, b)``, ``store.is_ancestor(a, b)``, ``store.log(commit)``.
``store.lock(what)``
    The dataset lock, reentrant in this process. Use it instead of
    ``usr.locks.dataset_lock`` around store calls (record/checkout take it themselves;
    fcntl locks are per open file, so taking dataset_lock yourself and then calling
    record would wait on yourself).
``store.missing_objects(wants, haves) -> list[str]``
    Git ids reachable from ``wants`` (commits) and not from ``haves``, in an order a
    receiver can write (blobs/trees before the trees/commits that name them). Found
    top-down (``usr.store.revlist``): subtrees equal at the same path are skipped unread,
    so an object the other side has only at another path may be listed (never fewer).
``store.read_object(oid) -> (type_name, bytes)`` / ``store.write_object(type_name, data,
expect=None) -> oid`` (raises VerifyError if ``expect`` differs).
``store.chunks`` : ChunkStore with ``has(cid)``, ``get(cid) -> bytes`` (verified),
    ``put(cid, data)`` (verified), ``missing(cids) -> list``.
``store.manifest_of(blob_id) -> Manifest | None``  (None for an inline blob).
``store.entry_size(blob_id) -> int``  whole-file size behind a tree entry.

Additions (refinements noted here, not in the original contract):

- ``checkout(commit, force=False, expect_head=...) -> str``: ``expect_head`` makes the ref
  move a compare-and-swap (push). A HEAD that the target does not contain is kept under
  ``refs/usr/saved/<id>`` so no state is lost.
- ``resolve(rev) -> str``, ``tree_of(rev)``, ``status()``, ``verify_working(commit)``,
  ``open_entry(blob_id)`` (streamed, verified content), ``ls_tree(rev)``,
  ``chunk_ids(blob_ids)``, ``has_object(oid)``, ``commit_tree(...)``, ``log_entry(id)``,
  ``gc(prune_age, repack_min)``, ``fsck()``, ``read_range(blob_id, offset, length)``;
  ``chunks.writer()`` batches chunks into packs; ``object_writer()`` batches git objects
  into git packs (docs/format.md §3); ``store.progress`` (a terminal UI's
  ``(path, done, total)`` callback while large files are hashed); ``store.last_scan``.
- ``Store.open(dir, create=True)`` also makes a missing directory (bootstrap).
- ``usr.store.worktree.build_tree(repo, files, strict=True)``: ``strict=False`` writes
  trees naming objects not fetched yet (merge previews; never commit those).
"""

from __future__ import annotations

from usr.store.model import FileChange, GcReport, LogEntry, Problem, Recorded, ScanStats
from usr.store.objects import Manifest
from usr.store.refs import MAIN
from usr.store.repository import Store

__all__ = [
    "MAIN",
    "FileChange",
    "GcReport",
    "LogEntry",
    "Manifest",
    "Problem",
    "Recorded",
    "ScanStats",
    "Store",
]
