"""Sync decisions: diff, pull and push of one dataset between here and a remote.

Every transfer is between recorded states. Before a pull or push both sides record their
working state (``Store.record`` here, the ``record`` request there), so nothing written on
either side is ever silently lost; ``diff`` and ``--dry-run`` compute both working trees the
same way without committing. With L the local head and R the remote head:

* L == R: ``NO-OP``.
* pull: L is an ancestor of R, or local is absent (bootstrap) -> fetch what is missing,
  check the events invariant, then ``Store.checkout`` (stage, verify, promote, move the
  branch in one locked step). R is an ancestor of L -> "local has newer states".
* push: the mirror image; the server does compare-and-swap of its ref with the checkout.
* otherwise: diverged, naming the merge base and both heads.

Locks: recording and checkout take the dataset lock inside the store for their short
critical section; nothing here holds a lock while objects stream.

Public API (the porcelain, demos and drills call these)::

    target = resolve_target(root, "densegen/my_dataset", SyncOptions())
    doc = diff(target, "bu-scc", SyncOptions(), audit_json_out=None)
    doc = pull(target, "bu-scc", SyncOptions(confirm=lambda summary: True))
    doc = push(target, "bu-scc", SyncOptions(dry_run=True))

each returning the audit document ``{"usr_output_version", "data", "changes"}`` (also
written to ``audit_json_out``, on failure too, before the error propagates).
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

import blake3

from usr import atomic, faults, hooks
from usr.errors import (
    ConflictError,
    InputError,
    NotFoundError,
    UsageError,
    UsrError,
    VerifyError,
)
from usr.layout import (
    EVENTS_FILE,
    RECORDS_FILE,
    REGISTRY_FILE,
    SECTIONS,
    check_dataset_dir,
    check_relpath,
    dataset_path,
    is_runtime_path,
    mark_root,
    section_of,
    validate_dataset_id,
)
from usr.locks import events_lock
from usr.store import FileChange
from usr.store.worktree import FILE_MODES, MODE_TREE
from usr.sync import audit as audit_mod
from usr.sync.audit import AuditRun, Comparison, Side, VerifyProfile

TRACKING_REF = "refs/remotes/{remote}/main"
MAIN_REF = "refs/heads/main"
#: ``--verify auto`` hashes files up to this size and checks larger ones by size (and
#: Parquet footer for the primary table), trading a full re-read for speed on huge files.
AUTO_HASH_LIMIT = 256 * 1024 * 1024

FAULT_PULL_NEGOTIATED = faults.register(
    "pull.negotiated", "client: both sides recorded, remote trees fetched; no contents yet"
)
FAULT_PULL_FETCHED = faults.register(
    "pull.fetched", "client: every object and chunk of the remote head stored; nothing checked out"
)
FAULT_PULL_CHECKED_OUT = faults.register(
    "pull.checked-out", "client: remote head checked out and ref moved; not yet re-verified"
)
FAULT_PUSH_UPDATED = faults.register(
    "push.updated", "client: the remote moved its ref and checked out; tracking ref not moved"
)


@dataclass
class SyncOptions:
    """Everything that changes how a diff/pull/push behaves (the CLI flags, validated)."""

    dry_run: bool = False
    primary_only: bool = False
    skip_snapshots: bool = False
    verify: str = "hash"
    verify_sidecars: bool = True
    verify_derived_hashes: bool = True
    strict_bootstrap_id: bool = False
    lock_timeout: float | None = None
    remote_path: str | None = None
    remotes_config: str | None = None
    #: Asked with a summary before a pull/push overwrites anything; None means "yes".
    confirm: Callable[[str], bool] | None = None
    actor: str | None = None
    #: ``--no-verify``: skip the pre-push/post-push/post-pull hooks (audited as skipped).
    no_verify: bool = False
    #: ``pull --merge`` / ``usr merge``: merge diverged histories (usr.merge) instead of
    #: refusing them.
    merge: bool = False

    def profile(self) -> VerifyProfile:
        return VerifyProfile(
            primary=self.verify,
            sidecars="strict" if self.verify_sidecars else "off",
            content_hashes="on" if self.verify_derived_hashes else "off",
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "primary_only": self.primary_only,
            "skip_snapshots": self.skip_snapshots,
            "strict_bootstrap_id": self.strict_bootstrap_id,
            "no_verify": self.no_verify,
            "merge": self.merge,
        }


@dataclass
class Target:
    """What to sync: a dataset (by id under a root) or, in file mode, one file."""

    kind: str  # "dataset" | "file"
    root: Path
    dataset: str
    path: Path
    remote_path: str | None = None


# ----------------------------------------------------------------------------- targets


def _looks_like_path(arg: str) -> bool:
    return arg.startswith(("/", "./", "../", "~")) or arg in (".", "..")


def _find_registry_root(directory: Path) -> Path | None:
    for candidate in [directory, *directory.parents]:
        if (candidate / REGISTRY_FILE).is_file():
            return candidate
    return None


def resolve_target(root: Path, arg: str, options: SyncOptions | None = None) -> Target:
    """Turn the DATASET argument into a :class:`Target`.

    * a dataset id (``name`` or ``namespace/name``) under ``root``;
    * a dataset directory path (outside ``root`` too): its root is the nearest ancestor
      holding ``registry.toml``, and its id the path below that root;
    * file mode: an existing regular file, or any path with ``--remote-path``.
    """
    options = options or SyncOptions()
    # os.path, not pathlib: an argument the OS cannot even stat (too long, a NUL byte, an
    # unknown ~user) is then simply no file or directory, and ends as a bad dataset id.
    candidate = Path(os.path.expanduser(arg))
    if options.remote_path is not None or os.path.isfile(candidate):
        return Target("file", root, arg, candidate.absolute(), options.remote_path)
    # normpath: "../densegen/my_dataset" from inside a root must give the id, not "x/../..".
    as_dir = Path(os.path.normpath(candidate.absolute()))
    in_root = root / arg
    is_dir = os.path.isdir(as_dir)
    if _looks_like_path(arg) or (is_dir and not os.path.isdir(in_root) and "/" in arg):
        if not is_dir:
            raise NotFoundError(
                f"dataset directory {as_dir} does not exist", "check the path, or name a dataset id"
            )
        if (as_dir / REGISTRY_FILE).is_file():
            raise InputError(
                f"{as_dir} is a datasets root (it holds {REGISTRY_FILE}), not a dataset",
                "name a dataset in it: usr --root DIR COMMAND ID, or the dataset's directory",
            )
        top = Path(os.path.normpath(root.absolute()))
        found = top if top in as_dir.parents else _find_registry_root(as_dir.parent)
        if found is None:
            raise NotFoundError(
                f"no {REGISTRY_FILE} above {as_dir}: cannot tell which datasets root it is in",
                "name the dataset by its id with --root ROOT, or mark its datasets root: "
                "touch ROOT/registry.toml",
            )
        dataset = as_dir.relative_to(found).as_posix()
        check_dataset_dir(as_dir, found)
        validate_dataset_id(dataset)
        return Target("dataset", found, dataset, as_dir)
    validate_dataset_id(arg)
    check_dataset_dir(dataset_path(root, arg), root)
    return Target("dataset", root, arg, dataset_path(root, arg))


# ----------------------------------------------------------------------------- remote


@contextmanager
def _session(remote: str, options: SyncOptions) -> Iterator[Any]:
    """An open :class:`usr.sync.client.RemoteSession` to the named remote profile."""
    from usr.sync import client

    session = client.open_session(remote, options.remotes_config, lock_timeout=options.lock_timeout)
    with session:
        yield session


@contextmanager
def _beside(work: Callable[[], None]) -> Iterator[Callable[[], None]]:
    """Run ``work`` on a thread while the body opens the session, and yield ``wait``.

    Opening a session is mostly waiting: the SSH login and the remote's start-up take
    0.3-0.5 s in which this process is idle; scanning and sizing the local tree (0.5 s on
    10,000 files) fits there. ``wait`` joins and re-raises. A failure of ``work`` wins over
    one of the session, as when the local side was read first.
    """
    import threading

    failed: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            failed.append(exc)

    thread = threading.Thread(target=run, name="usr-local-side", daemon=True)
    thread.start()

    def wait() -> None:
        thread.join()
        if failed:
            raise failed.pop()

    try:
        yield wait
    except BaseException:
        thread.join()
        if failed:
            raise failed.pop() from None
        raise
    wait()


def _remote_bytes(session: Any) -> tuple[int, int]:
    """(sent, received) bytes so far, as the session's frame layer counted them."""
    fio = getattr(session, "fio", None)
    if fio is None:
        return 0, 0
    return int(getattr(fio, "bytes_out", 0)), int(getattr(fio, "bytes_in", 0))


# ----------------------------------------------------------------------------- helpers


def _open_store(directory: Path, create: bool = False):
    from usr.store import Store

    directory.mkdir(parents=True, exist_ok=True)
    return Store.open(directory, create=create)


def _local_exists(directory: Path) -> bool:
    """A dataset is here when its directory holds anything but usr's own runtime state
    (a bootstrap pull cut off after fetching leaves only ``.usr/``: still absent)."""
    if not directory.is_dir():
        return False
    return any(not is_runtime_path(p.name) for p in directory.iterdir())


class _Sizes:
    """Whole-file sizes of tree entries: from the store, else from what a fetch reported.

    Remote trees are fetched without file contents, so their blobs' sizes come from the
    server's listing; the comparison itself is still the store's one ``diff_trees``.
    """

    def __init__(self, store: Any) -> None:
        self.store = store
        self.known: dict[str, int] = {}
        self._seeded = False

    def add(self, stats: Any) -> None:
        self.known.update(getattr(stats, "sizes", {}) or {})

    def _seed(self) -> None:
        """Take the sizes the stat cache already has (a working file's size is the size of
        its entry): sizing from the store reads each object, ~40 us per file."""
        self._seeded = True
        with suppress(OSError, AttributeError):
            for key, oid in self.store.stat_cache().entries.values():
                self.known.setdefault(oid, key[0])

    def seeded(self) -> dict[str, int]:
        """Every size known, the stat cache's included (for sizing a push's blobs)."""
        if not self._seeded:
            self._seed()
        return self.known

    def few(self, oid: str) -> int | None:
        """The size of one of a few entries: from the store unless known, without loading
        the whole stat cache (sizing a side's named files must not cost the no-op that)."""
        if oid not in self.known and self.store.has_object(oid):
            self.known[oid] = self.store.entry_size(oid)
        return self.known.get(oid)

    def __call__(self, oid: str) -> int | None:
        if oid in self.known:
            return self.known[oid]
        if not self._seeded:
            self._seed()
            if oid in self.known:
                return self.known[oid]
        if self.store.has_object(oid):
            # Remembered: sizing reads the object, and both sides' listings ask for the
            # same unchanged files.
            self.known[oid] = self.store.entry_size(oid)
            return self.known[oid]
        return None


def tree_diff(store: Any, a: str | None, b: str | None, sizes: _Sizes | None = None):
    """The store's exact per-file comparison, tolerating blobs only listed, not fetched."""
    from usr.store.diff_tree import diff_trees

    size_of = sizes or _Sizes(store)
    return diff_trees(store.repo, store.tree_of(a), store.tree_of(b), size_of)


def blob_bytes(store: Any, blob_id: str) -> bytes:
    """The whole file behind a tree entry (inline blob, or manifest + chunks), verified."""
    return b"".join(store.open_entry(blob_id, where=blob_id))


def _events_blob(store: Any, rev: str) -> str | None:
    """Blob id of ``.events.log`` in a state or tree, found by path: listing (and sizing)
    every file just to find it cost seconds on a dataset of 10,000 files."""
    tree = store.repo[store.tree_of(rev)]
    try:
        return str(tree[EVENTS_FILE].id)
    except KeyError:
        return None


def _top_blob(store: Any, rev: str, name: str) -> str | None:
    """Blob id of the top-level file ``name`` in a state or tree, or None."""
    tree = store.repo[store.tree_of(rev)]
    try:
        entry = tree[name]
    except KeyError:
        return None
    return str(entry.id) if entry.type_str == "blob" else None


def _listing(store: Any, tree: str | None, sizes: _Sizes | None = None) -> list[FileChange]:
    return [] if tree is None else tree_diff(store, None, tree, sizes)


#: The sections whose one file the audit names (id and size): kept whole in a summary.
_NAMED_SECTIONS = frozenset({"primary", "meta", "events"})


@dataclass
class _Summary:
    """What the audit needs of one side's tree: files per section, and the listing entries
    of the single files it names. A full listing held (and sized) an entry per file:
    100,000 files cost ~40 MiB per side for the whole command."""

    counts: dict[str, int]
    named: list[FileChange]


def _summary(store: Any, tree: str | None, sizes: _Sizes | None = None) -> _Summary:
    """Count ``tree``'s files per section with one walk of its trees (no blob read), with
    the same refusals as a listing: a bad name or a mode other than file/directory."""
    counts = dict.fromkeys(SECTIONS, 0)
    named: list[FileChange] = []
    if tree is None:
        return _Summary(counts, named)
    size_of = sizes or _Sizes(store)
    repo = store.repo
    stack: list[tuple[str, str | None, Any]] = [("", None, repo[tree])]
    while stack:
        prefix, section, node = stack.pop()
        for entry in node:
            check_relpath(entry.name)
            mode = entry.filemode
            if mode == MODE_TREE:
                sub = section or section_of(f"{prefix}{entry.name}/")
                stack.append((f"{prefix}{entry.name}/", sub, repo[entry.id]))
                continue
            if mode not in FILE_MODES:
                rel = prefix + entry.name
                raise InputError(f"tree entry {rel!r} has mode {mode:o}; refused")
            here = section or section_of(entry.name)
            counts[here] += 1
            if section is None and here in _NAMED_SECTIONS:
                oid = str(entry.id)
                size = size_of.few(oid)
                named.append(FileChange(entry.name, "A", here, None, oid, None, size))
    named.sort(key=lambda c: c.path)
    return _Summary(counts, named)


def _entry(files: list[FileChange], path: str) -> FileChange | None:
    for f in files:
        if f.path == path:
            return f
    return None


def _event_lines(data: bytes) -> list[bytes]:
    return data.splitlines(keepends=True)


def events_relation(local: list[bytes] | None, remote: list[bytes] | None) -> str:
    """How two ``.events.log`` copies relate line by line (the append-only view)."""
    if local is None and remote is None:
        return "absent"
    local = local or []
    remote = remote or []
    if local == remote:
        return "equal"
    if remote[: len(local)] == local:
        return "remote-extends"
    if local[: len(remote)] == remote:
        return "local-extends"
    return "diverged"


def _commits(store: Any, tip: str | None, hide: str | None = None) -> list[str]:
    """Commit ids reachable from ``tip`` and not from ``hide`` (newest first)."""
    if tip is None:
        return []
    import pygit2

    walker = store.repo.walk(pygit2.Oid(hex=tip), pygit2.enums.SortMode.TOPOLOGICAL)
    if hide is not None:
        walker.hide(pygit2.Oid(hex=hide))
    return [str(c.id) for c in walker]


def _parents(store: Any, commit: str) -> list[str]:
    return [str(p) for p in store.repo[commit].parent_ids]


def _relation(store: Any, local: str | None, remote: str | None) -> tuple[str, str | None]:
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


def _effective_relation(heads_relation: str, local_dirty: bool, remote_dirty: bool) -> str:
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


def _short(oid: str | None) -> str:
    return oid[:12] if oid else "(none)"


# ----------------------------------------------------------------------------- comparison


@dataclass
class _State:
    """What the engine learned about both sides before deciding."""

    local_head: str | None = None
    local_tree: str | None = None
    local_exists: bool = False
    local_dirty: bool = False
    remote_head: str | None = None
    remote_tree: str | None = None
    remote_exists: bool = False
    remote_dirty: bool = False
    sizes: _Sizes | None = None
    #: ``(tree, summary)`` of the local tree, made while the session opened (diff).
    local_listing: tuple[str, _Summary] | None = None


def _compare(store: Any, target: Target, remote: str, st: _State) -> Comparison:
    """Build the audit :class:`Comparison` from both sides' trees (all trees local now).

    One per-file comparison (``changes``, local against remote); each side itself is only
    summarised (files per section, its single named files), and the paths changed since
    the merge base are found without sizing anything."""
    if st.sizes is None:
        st.sizes = _Sizes(store)
    sizes = st.sizes
    heads_rel, base = _relation(store, st.local_head, st.remote_head)
    relation = _effective_relation(heads_rel, st.local_dirty, st.remote_dirty)
    if heads_rel == "equal":
        base = st.local_head
    if st.local_listing is not None and st.local_listing[0] == st.local_tree:
        local_sum = st.local_listing[1]  # summarised beside the session open: not again
    else:
        local_sum = _summary(store, st.local_tree, sizes)
    if st.remote_tree == st.local_tree:
        remote_sum = local_sum  # same tree, same summary: walk it once
    else:
        remote_sum = _summary(store, st.remote_tree, sizes)
    changes = (
        tree_diff(store, st.local_tree, st.remote_tree, sizes)
        if st.local_tree != st.remote_tree
        else []
    )
    local_changed = remote_changed = None
    if base is not None:
        local_changed = _changed_paths(store, base, st.local_tree)
        remote_changed = _changed_paths(store, base, st.remote_tree)
    ev_local = _events_of(store, local_sum.named)
    ev_remote = _events_of(store, remote_sum.named)
    return Comparison(
        dataset=target.dataset,
        remote=remote,
        local=Side(
            exists=st.local_exists,
            head=st.local_head,
            tree=st.local_tree,
            dirty=st.local_dirty,
            states=len(_commits(store, st.local_head)),
            events_lines=len(ev_local or []),
            files=local_sum.named,
            counts=local_sum.counts,
        ),
        remote_side=Side(
            exists=st.remote_exists,
            head=st.remote_head,
            tree=st.remote_tree,
            dirty=st.remote_dirty,
            states=len(_commits(store, st.remote_head)),
            events_lines=len(ev_remote or []),
            files=remote_sum.named,
            counts=remote_sum.counts,
        ),
        relation=relation,
        merge_base=base,
        changes=changes,
        local_changed=local_changed,
        remote_changed=remote_changed,
        newer_than_local=len(_commits(store, st.remote_head, st.local_head)),
        newer_than_remote=len(_commits(store, st.local_head, st.remote_head)),
        events_relation=events_relation(ev_local, ev_remote),
    )


def _unsized(_oid: str) -> None:
    return None


def _changed_paths(store: Any, a: str | None, b: str | None) -> set[str]:
    """Paths that differ between two states: the same comparison with nothing sized
    (sizing a stored file may read its whole object)."""
    if a == b:
        return set()
    from usr.store.diff_tree import diff_trees

    return {c.path for c in diff_trees(store.repo, store.tree_of(a), store.tree_of(b), _unsized)}


def _events_of(store: Any, files: list[FileChange]) -> list[bytes] | None:
    entry = _entry(files, EVENTS_FILE)
    if entry is None or entry.new_id is None:
        return None
    return _event_lines(blob_bytes(store, entry.new_id))


# ----------------------------------------------------------------------------- invariants


def check_events_chain(store: Any, commits: list[str]) -> None:
    """Refuse states whose ``.events.log`` is not a line-prefix extension of a parent's.

    A merge state must extend at least one parent (the remote-side parent, by the merge
    rules), so the shared copy consumers tail only ever grows.
    """
    lines: dict[str, list[bytes]] = {}

    def events_at(commit: str) -> list[bytes]:
        if commit not in lines:
            blob = _events_blob(store, commit)
            lines[commit] = _event_lines(blob_bytes(store, blob)) if blob else []
        return lines[commit]

    for commit in commits:
        mine = events_at(commit)
        parents = _parents(store, commit)
        if not parents:
            continue
        ok = False
        for parent in parents:
            theirs = events_at(parent)
            if mine[: len(theirs)] == theirs:
                ok = True
                break
        if not ok:
            raise ConflictError(
                f"state {_short(commit)} rewrites .events.log instead of appending to it",
                ".events.log is append-only; restore the removed or changed lines and record again",
            )


def _require_primary(store: Any, commit: str, where: str, sizes: _Sizes | None = None) -> None:
    """``sizes`` is unused: the file is found by path (listing the tree sized every file)."""
    if _top_blob(store, commit, RECORDS_FILE) is None:
        raise InputError(
            f"{where} state {_short(commit)} has no {RECORDS_FILE}",
            "a dataset without its primary table is never transferred; restore it on that side, "
            "e.g. usr checkout DATASET HEAD~1",
        )


# ----------------------------------------------------------------------------- verification


def verify_working(
    store: Any,
    directory: Path,
    commit: str,
    options: SyncOptions,
    only: set[str] | None = None,
    entries: Iterable[FileChange] | None = None,
) -> int:
    """Re-check the working files against ``commit``'s tree after promotion.

    Per section, by the verify profile: primary by ``--verify``; ``meta.md``,
    ``.events.log`` and ``_snapshots`` by hash when sidecars are strict (skipped when off);
    ``_derived``/``_auxiliary`` by hash when content hashes are on, else by size. Returns
    how many files were checked; raises :class:`VerifyError` naming the first mismatch.
    ``only`` limits the check to the paths a transfer wrote (the rest did not change);
    ``entries`` gives those files directly, as ``commit``'s side (``new_id``/``new_size``)
    of a comparison already made, so the tree is not listed and sized again.
    """
    checked = 0
    for entry in _listing(store, commit) if entries is None else entries:
        if only is not None and entry.path not in only:
            continue
        if entries is not None and entry.section == "primary":
            # ``--verify auto`` picks the level by size: the store's size, not the peer's.
            entry = replace(entry, new_size=store.entry_size(entry.new_id))
        level = _level_for(entry, options)
        if level == "off":
            continue
        path = directory / entry.path
        if not path.is_file():
            raise VerifyError(f"{entry.path} is missing after checkout")
        size = path.stat().st_size
        # Sizes from a comparison may be the peer's word (a fetch listing): the store's
        # own object says the size, unless the file is hashed, which checks it anyway.
        want = entry.new_size if entries is None else _stored_size(store, entry, level)
        if want is not None and size != want:
            raise VerifyError(f"{entry.path}: {size} bytes after checkout, the tree says {want}")
        if level == "parquet":
            _check_parquet(path)
        elif level == "hash":
            _check_hash(store, path, entry)
        checked += 1
    return checked


def _stored_size(store: Any, entry: FileChange, level: str) -> int | None:
    """The whole-file size the local store holds for ``entry`` (None when its hash is
    checked instead: sizing a small file reads its object)."""
    if level == "hash":
        return None
    if entry.section == "primary":
        return entry.new_size  # sized from the store just above
    return store.entry_size(entry.new_id)


def _level_for(entry: FileChange, options: SyncOptions) -> str:
    section = entry.section
    if section == "primary":
        level = options.verify
        if level == "auto":
            level = "hash" if (entry.new_size or 0) <= AUTO_HASH_LIMIT else "parquet"
        return level
    if section in ("meta", "events", "snapshots"):
        return "hash" if options.verify_sidecars else "off"
    return "hash" if options.verify_derived_hashes else "size"


def _check_parquet(path: Path) -> None:
    import pyarrow.parquet as pq

    try:
        pq.ParquetFile(path).metadata  # noqa: B018 - reading the footer is the check
    except Exception as exc:  # noqa: BLE001 - any parse failure is a verify failure
        raise VerifyError(f"{path.name}: not a readable Parquet file: {exc}") from None


def _check_hash(store: Any, path: Path, entry: FileChange) -> None:
    """The working file hashes to its entry: for a small file, its own bytes to the blob
    id, without reading the object (a blob that is not a manifest is the file's bytes);
    else by the manifest's whole-file blake3."""
    from usr.store.objects import MAGIC, git_object_id, inline_limit

    if path.stat().st_size <= inline_limit():
        data = path.read_bytes()
        if not data.startswith(MAGIC) and git_object_id("blob", data) == entry.new_id:
            return
    manifest = store.manifest_of(entry.new_id)
    if manifest is not None:
        h = blake3.blake3()
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        if h.hexdigest() != manifest.blake3:
            raise VerifyError(f"{entry.path}: blake3 differs from the tree after checkout")
        return
    if git_object_id("blob", path.read_bytes()) != entry.new_id:
        raise VerifyError(f"{entry.path}: content differs from the tree after checkout")


# ----------------------------------------------------------------------------- audit output


_LIST_MARK = "\x00usr-audit-list-%d\x00"
_SCALARS = (str, int, float, bool, type(None))


def dump_audit(doc: dict[str, Any], out: TextIO) -> None:
    """Write the audit document to ``out`` as it is encoded: the bytes of
    ``json.dumps(doc, indent=2, sort_keys=True, default=str)`` and a newline, without
    building that string.

    ``json.dumps`` with an indent joins millions of small strings first (100,000 files:
    +230 MiB of peak memory) and encodes in Python. Long lists of scalars or of flat dicts
    (``data.files``, the sections' path lists) are encoded by the C encoder with the
    indented layout's separators instead, the rest as before (100,000 entries and a
    100,000-path section: 0.90 -> 0.42 s of CPU).
    ``--audit-json-out`` and ``--format json`` use it."""
    enc = json.JSONEncoder(indent=2, sort_keys=True, default=str)
    lists: list[list[Any]] = []
    shell = _swap_lists(doc, lists)
    marks = {enc.encode(_LIST_MARK % i): lst for i, lst in enumerate(lists)}
    line = ""  # the output's current line: a swapped list takes its key's indent
    for chunk in enc.iterencode(shell):
        mark = next((m for m in marks if m in chunk), None) if "usr-audit-list-" in chunk else None
        if mark is None:
            out.write(chunk)
            line = line + chunk if "\n" not in chunk else chunk.rsplit("\n", 1)[1]
            continue
        before, _, after = chunk.partition(mark)
        out.write(before)
        line = line + before if "\n" not in before else before.rsplit("\n", 1)[1]
        _dump_list(marks[mark], len(line) - len(line.lstrip(" ")), out)
        out.write(after)
        line = ("]" + after).rsplit("\n", 1)[-1]
    out.write("\n")


def _swap_lists(value: Any, lists: list[list[Any]]) -> Any:
    """A copy of the dicts of ``value`` with each long flat list (see :func:`_flat_list`)
    replaced by a marker string; the lists are collected in ``lists``."""
    if not isinstance(value, dict):
        return value
    out = {}
    for key, item in value.items():
        if isinstance(item, list) and _flat_list(item):
            out[key] = _LIST_MARK % len(lists)
            lists.append(item)
        else:
            out[key] = _swap_lists(item, lists)
    return out


def _flat_list(items: list[Any]) -> bool:
    """Worth the C encoder: more than a few items, all scalars or all flat dicts of them."""
    if len(items) < 8:
        return False
    if all(type(v) in _SCALARS for v in items):
        return True
    return all(
        isinstance(e, dict)
        and all(isinstance(k, str) and type(v) in _SCALARS for k, v in e.items())
        for e in items
    )


def _dump_list(items: list[Any], key_indent: int, out: TextIO) -> None:
    """The indented layout of a flat list under a key indented ``key_indent``."""
    item_pad = " " * (key_indent + 2)
    if type(items[0]) in _SCALARS:
        body = json.JSONEncoder(separators=(",\n" + item_pad, ": ")).encode(items)[1:-1]
        out.write(f"[\n{item_pad}{body}\n{' ' * key_indent}]")
        return
    field_pad = item_pad + "  "
    one = json.JSONEncoder(sort_keys=True, separators=(",\n" + field_pad, ": ")).encode
    out.write("[")
    sep = "\n"
    for entry in items:
        body = one(entry)[1:-1]
        block = f"{{\n{field_pad}{body}\n{item_pad}}}" if body else "{}"
        out.write(f"{sep}{item_pad}{block}")
        sep = ",\n"
    out.write("\n" + " " * key_indent + "]")


def _write_audit(path: Path | None, doc: dict[str, Any]) -> None:
    if path is None:
        return
    with atomic.atomic_writer(path) as fh:
        text = io.TextIOWrapper(fh, encoding="utf-8", newline="\n")
        try:
            dump_audit(doc, text)
        finally:
            text.detach()  # flushes; the atomic writer fsyncs and closes the file itself


def _run(
    action: str,
    target: Target,
    remote: str,
    options: SyncOptions,
    audit_json_out: Path | None,
    body: Callable[[AuditRun], str],
) -> dict[str, Any]:
    run = AuditRun(action, target.dataset, remote, options.profile())
    run.options = options.to_json()
    try:
        state = body(run)
    except BaseException as exc:
        if isinstance(exc, UsrError | OSError | ValueError):
            _write_audit(audit_json_out, run.finish("FAILED", error=exc))
        elif isinstance(exc, KeyboardInterrupt):
            _write_audit(
                audit_json_out, run.finish("FAILED", error=UsrError("interrupted by the user"))
            )
        raise
    doc = run.finish(state)
    _write_audit(audit_json_out, doc)
    return doc


# ----------------------------------------------------------------------------- commands


def _set_tracking(store: Any, remote: str, head: str | None) -> None:
    """Move ``refs/remotes/REMOTE/main`` to the last remote head seen (like git fetch)."""
    if head is None:
        return
    ref = TRACKING_REF.format(remote=remote)
    old = store.head(ref)
    if old != head:
        store.update_ref(ref, head, old)


def _fetch_remote_trees(session: Any, store: Any, target: Target, st: _State) -> None:
    """Commits and trees of the remote history (no contents) plus its events log bytes.

    ``haves`` is the local head only (not the tracking ref), so the server's listing names
    the sizes of every blob the local store lacks; the rest are sized from the store.
    Sets ``st.remote_tree`` to the head's tree unless a working tree was given.
    """
    if st.sizes is None:
        st.sizes = _Sizes(store)
    if st.remote_head is not None and st.remote_head != st.local_head:
        # (The local head's commits, trees and blobs are all here: no walk to prove it.)
        st.sizes.add(
            session.fetch(
                target.dataset, store, [st.remote_head], _haves(st.local_head), blobs=False
            )
        )
    if st.remote_head is not None and st.remote_tree is None:
        st.remote_tree = store.tree_of(st.remote_head)
    if st.remote_tree is not None and st.remote_tree != store.tree_of(st.remote_head):
        st.sizes.add(session.fetch_tree(target.dataset, store, st.remote_tree))
    if st.remote_tree is not None:
        events = _events_blob(store, st.remote_tree)
        if events is not None and not store.has_object(events):
            session.fetch_blobs(target.dataset, store, [events])


def diff(
    target: Target,
    remote: str,
    options: SyncOptions | None = None,
    audit_json_out: Path | None = None,
) -> dict[str, Any]:
    """Compare both working trees; record nothing, move no branch on either side."""
    options = options or SyncOptions()
    if target.kind == "file":
        from usr.sync import filemode

        return filemode.diff(target, remote, options, audit_json_out)

    def body(run: AuditRun) -> str:
        _preview(run, target, remote, options)
        return "DIFF-ONLY"

    return _run("diff", target, remote, options, audit_json_out, body)


def _preview_store_dir(target: Target) -> Path:
    """Where to keep fetched trees when previewing: the dataset's store, or a cache.

    A diff against a dataset absent here must not create it (a diff never changes working
    files), so its fetched trees go to ``<root>/.usr-cache/<id>`` instead.
    """
    if _local_exists(target.path):
        return target.path
    return target.root / ".usr-cache" / target.dataset


def _preview(run: AuditRun, target: Target, remote: str, options: SyncOptions) -> _State:
    """diff / --dry-run: both working trees without committing (trees may be cached)."""
    st = _State()
    st.local_exists = _local_exists(target.path)
    store = _open_store(_preview_store_dir(target), create=True)

    def local_side() -> None:
        if st.local_exists:
            st.local_head = store.head()
            st.local_tree = store.working_tree()
            st.local_dirty = st.local_tree != store.tree_of(st.local_head)
            st.sizes = _Sizes(store)
            st.local_listing = (st.local_tree, _summary(store, st.local_tree, st.sizes))

    with _beside(local_side) as wait_local, _session(remote, options) as session:
        wait_local()
        try:
            heads = session.heads(target.dataset)
            st.remote_head = heads["head"]
            st.remote_exists = st.remote_head is not None
            if st.remote_exists:
                st.remote_tree = session.working_tree(target.dataset)
            _fetch_remote_trees(session, store, target, st)
            if st.remote_exists:
                st.remote_dirty = st.remote_tree != store.tree_of(st.remote_head)
            _set_tracking(store, remote, st.remote_head)
            merge_report = _merge_preview(run, session, store, target, st, options)
        finally:
            run.bytes_sent, run.bytes_received = _remote_bytes(session)
    if not st.local_exists and not st.remote_exists:
        raise NotFoundError(
            f"dataset {target.dataset!r} exists neither here ({target.path}) nor on {remote}",
            "check the id, --root and the remote's base_dir",
        )
    cmp = _compare(store, target, remote, st)
    data = run.set_comparison(cmp)
    _missing_primary_notes(run, store, st)
    if merge_report is not None:
        data.update(
            mergeable=merge_report["mergeable"],
            conflicts=merge_report["conflicts"],
            merge=merge_report,
        )
    if options.dry_run:
        _dry_run_notes(run, cmp, options)
    return st


def _missing_primary_notes(run: AuditRun, store: Any, st: _State) -> None:
    """Say up front that a side's working files lack records.parquet: pull and push would
    refuse to transfer that state, and the operator should restore it before recording."""
    for side, tree in (("local", st.local_tree), ("remote", st.remote_tree)):
        if tree is not None and _top_blob(store, tree, RECORDS_FILE) is None:
            run.notes.append(
                f"{side} {RECORDS_FILE} is missing: pull and push refuse to transfer such a "
                "state; restore it there first (usr checkout DATASET HEAD)"
            )


def _merge_preview(
    run: AuditRun, session: Any, store: Any, target: Target, st: _State, options: SyncOptions
) -> dict[str, Any] | None:
    """What a merge of diverged sides would do (``usr.merge.preview``), for ``diff`` and a
    ``--merge`` dry run; None when the sides have not diverged. A diff still reports when
    the preview itself fails (say, a file it cannot read), noting why."""
    if run.action != "diff" and not options.merge:
        return None
    if st.local_head is None or st.remote_head is None:
        return None
    heads_rel, _base = _relation(store, st.local_head, st.remote_head)
    if _effective_relation(heads_rel, st.local_dirty, st.remote_dirty) != "diverged":
        return None  # decided here: usr.merge imports pyarrow (~0.13 s) for nothing
    from usr import merge as merge_mod

    try:
        return merge_mod.preview(session, store, target.dataset, st)
    except Exception as exc:  # noqa: BLE001 - a diff must report even if its preview fails
        if run.action != "diff":
            raise
        why = exc.one_line() if isinstance(exc, UsrError) else f"{type(exc).__name__}: {exc}"
        run.notes.append(f"merge preview unavailable: {why}")
        return None


def _dry_run_notes(run: AuditRun, cmp: Comparison, options: SyncOptions) -> None:
    """What the real command would decide, said without doing it."""
    action = run.action
    rel = cmp.relation
    would = {
        ("pull", "equal"): "would do nothing (up-to-date)",
        ("push", "equal"): "would do nothing (up-to-date)",
        ("pull", "remote-ahead"): "would fast-forward local to the remote head",
        ("pull", "local-missing"): "would bootstrap the dataset here from the remote",
        ("push", "local-ahead"): "would fast-forward the remote to the local head",
        ("push", "remote-missing"): "would bootstrap the dataset on the remote",
        ("pull", "local-ahead"): "would refuse: local has newer states",
        ("push", "remote-ahead"): "would refuse: remote has newer states; pull first",
        ("pull", "remote-missing"): "would refuse: the dataset does not exist on the remote",
        ("push", "local-missing"): "would refuse: the dataset does not exist here",
    }.get((action, rel), "would refuse: local and remote have diverged")
    if options.merge and action == "pull" and rel in ("diverged", "local-ahead"):
        mergeable = ((run.data or {}).get("merge") or {}).get("mergeable")
        would = (
            "would do nothing: local already holds the remote head (push it)"
            if rel == "local-ahead"
            else "would merge; then 'usr push' fast-forwards the remote"
            if mergeable
            else "would refuse: merge conflicts (nothing would change)"
            if mergeable is False
            else "would try to merge (mergeability unknown)"
        )
    run.notes.append(would)
    try:
        check_partial(cmp, options)
    except UsageError as exc:
        run.notes.append("would refuse: " + exc.message)


def _bootstrap_id_check(target: Target, options: SyncOptions) -> None:
    if options.strict_bootstrap_id and "/" not in target.dataset:
        raise UsageError(
            f"refusing to bootstrap {target.dataset!r}: strict bootstrap ids need NAMESPACE/NAME",
            "use a namespace-qualified id, or drop --strict-bootstrap-id / "
            "USR_SYNC_STRICT_BOOTSTRAP_ID",
        )


def _refuse(action: str, cmp: Comparison) -> None:
    """The fast-forward-only rule: refuse (nothing changed yet) unless it fast-forwards."""
    relation = cmp.relation
    heads = f"local {_short(cmp.local.head)}, remote {_short(cmp.remote_side.head)}"
    if relation == "diverged" and cmp.merge_base is None:
        raise ConflictError(
            f"local and remote histories are unrelated (no common state): {heads}",
            "nothing was changed on either side; keep one copy (move the other aside) and "
            "pull or push again",
        )
    if relation == "diverged":
        raise ConflictError(
            f"local and remote have diverged: merge base {_short(cmp.merge_base)}, {heads}",
            "nothing was changed on either side; run usr merge DATASET REMOTE, then push",
        )
    if action == "push" and relation == "remote-ahead":
        raise ConflictError(
            f"remote has newer states; pull first ({heads})", "run usr pull, then push again"
        )
    if action == "pull" and relation == "local-ahead":
        raise ConflictError(
            f"local has newer states ({heads})", "nothing to pull; push them instead"
        )


def _left_out(options: SyncOptions) -> set[str]:
    if options.primary_only:
        return {"meta", "events", "snapshots", "derived", "auxiliary"}
    if options.skip_snapshots:
        return {"snapshots"}
    return set()


def check_partial(cmp: Comparison, options: SyncOptions) -> None:
    """Refuse a ``--primary-only``/``--skip-snapshots`` transfer that would drop changes.

    A head moves only with its whole tree; if the left-out sections differ, moving it would
    make the receiver's files disagree with its recorded state (see docs/cli.md).
    """
    left_out = _left_out(options)
    dropped = sorted({c.section for c in cmp.changes if c.section in left_out})
    if dropped:
        flag = "--primary-only" if options.primary_only else "--skip-snapshots"
        raise UsageError(
            f"{flag} would leave out changed sections: {', '.join(dropped)}",
            "a state moves with all its files; rerun without " + flag,
        )


def _confirm(options: SyncOptions, action: str, data: dict[str, Any]) -> None:
    """Ask (through the caller's ``confirm``) before anything is overwritten."""
    if options.confirm is None:
        return
    summary = "\n".join(audit_mod.header_lines(data) + audit_mod.section_lines(data))
    if not options.confirm(summary):
        raise UsageError(f"{action} cancelled; nothing was changed")


def pull(
    target: Target,
    remote: str,
    options: SyncOptions | None = None,
    audit_json_out: Path | None = None,
) -> dict[str, Any]:
    """Fast-forward local to the remote head (bootstrap if local is absent)."""
    options = options or SyncOptions()
    if target.kind == "file":
        from usr.sync import filemode

        return filemode.pull(target, remote, options, audit_json_out)

    def body(run: AuditRun) -> str:
        if options.dry_run:
            _preview(run, target, remote, options)
            return "DRY-RUN"
        return _pull(run, target, remote, options)

    return _run("pull", target, remote, options, audit_json_out, body)


def _pull(run: AuditRun, target: Target, remote: str, options: SyncOptions) -> str:
    st = _State()
    st.local_exists = _local_exists(target.path)
    with _session(remote, options) as session:
        try:
            if session.heads(target.dataset)["head"] is None:
                raise NotFoundError(
                    f"dataset {target.dataset!r} has no recorded state on remote {remote}",
                    "push it first, record it there (usr snapshot), or check the id and the "
                    "remote's base_dir",
                )
            st.remote_head = session.record(
                target.dataset, f"record before pull to {_here()}", options.actor
            )["commit"]
            st.remote_exists = True
            if not st.local_exists:
                _bootstrap_id_check(target, options)
            store = _open_store(target.path, create=True)
            if st.local_exists and store.head() is None:
                _adopt_if_identical(run, session, store, target, st, options)
            if st.local_exists:
                with store.lock(f"record before pull {remote}", timeout=options.lock_timeout):
                    store.record(f"record before pull {remote}", actor=options.actor)
            st.local_head = store.head()
            st.local_tree = store.tree_of(st.local_head)
            _fetch_remote_trees(session, store, target, st)
            _set_tracking(store, remote, st.remote_head)
            faults.point(FAULT_PULL_NEGOTIATED)
            cmp = _compare(store, target, remote, st)
            data = run.set_comparison(cmp)
            if cmp.relation == "equal":
                return "NO-OP"
            if options.merge and cmp.relation in ("diverged", "local-ahead"):
                from usr import merge as merge_mod

                return merge_mod.merge_pull(run, session, store, target, remote, st, cmp, options)
            _refuse("pull", cmp)
            check_partial(cmp, options)
            # Decided: let the comparison and the sizes go (per-file objects, ~35 MiB at
            # 100,000 files); the audit entries name every file the checkout writes.
            del cmp
            st.sizes = None
            _require_primary(store, st.remote_head, f"remote {remote}")
            _confirm(options, "pull", data)
            stats = session.fetch(target.dataset, store, [st.remote_head], _haves(st.local_head))
            _observed_transfer(data, stats)
            check_events_chain(store, _commits(store, st.remote_head, st.local_head))
            faults.point(FAULT_PULL_FETCHED)
        finally:
            run.bytes_sent, run.bytes_received = _remote_bytes(session)
    # Checkout under the dataset lock AND the events lock (same order as every writer),
    # so a line appended to .events.log meanwhile is either in the recorded state already
    # or waits for us and lands after promotion; the store refuses if HEAD or the working
    # files moved since we recorded (nothing is lost, rerun the pull).
    moved = _pulled_entries(data)
    with (
        store.lock(f"pull {remote}", timeout=options.lock_timeout),
        events_lock(target.path, timeout=options.lock_timeout),
    ):
        store.checkout(st.remote_head, expect_head=st.local_head)
        faults.point(FAULT_PULL_CHECKED_OUT)
        verify_working(store, target.path, st.remote_head, options, entries=moved)
    if not st.local_exists:
        mark_root(target.root)  # a bootstrapped root is a root: `usr diff .` works inside it
    outcome = hooks.run_post_pull(
        hooks.context_for(target.path, target.root, target.dataset),
        remote,
        hooks.remote_target(remote, options.remotes_config),
        st.local_head,
        st.remote_head,
        hooks.verify_env_from(options),
        no_verify=options.no_verify,
        audit=data,
    )
    if outcome.status == "failed":
        run.notes.append(f"post-pull hook failed (exit {outcome.exit_code}); the pull stands")
    return "TRANSFERRED"


def _pulled_entries(data: dict[str, Any]) -> Iterator[FileChange]:
    """The files a pull writes, from its audit entries (``new_*`` is the remote side of a
    pull), for the post-checkout check: no second per-file list held through the checkout."""
    for f in data["files"]:
        if f["new_id"] is not None:
            status = "A" if f["old_id"] is None else "M"
            old, new = (f["old_id"], f["old_size"]), (f["new_id"], f["new_size"])
            yield FileChange(f["path"], status, f["section"], old[0], new[0], old[1], new[1])


def _adopt_if_identical(
    run: AuditRun, session: Any, store: Any, target: Target, st: _State, options: SyncOptions
) -> None:
    """Adopt the remote history for a copy that has files but no history of its own.

    A dataset copied here by other means (rsync, an archive) would otherwise record an
    unrelated first state that every later sync refuses. If its files are exactly the
    remote head's, point ``refs/heads/main`` at that head instead (nothing is rewritten).
    """
    st.sizes = st.sizes or _Sizes(store)
    st.sizes.add(session.fetch(target.dataset, store, [st.remote_head], [], blobs=False))
    with store.lock("adopt remote history", timeout=options.lock_timeout):
        if store.head() is None and store.working_tree() == store.tree_of(st.remote_head):
            store.update_ref(MAIN_REF, st.remote_head, None)
            run.notes.append(
                f"adopted the remote history: the files here already equal {_short(st.remote_head)}"
            )


def _observed_transfer(data: dict[str, Any], stats: Any) -> None:
    """Replace the audit's transfer estimate with what the transport really moved."""
    data["transfer"] = dict(
        data.get("transfer") or {},
        objects=int(getattr(stats, "objects", 0)),
        chunks=int(getattr(stats, "chunks", 0)),
        payload_bytes=int(getattr(stats, "payload_bytes", 0)),
        basis="observed",
    )


def _haves(head: str | None) -> list[str]:
    return [head] if head else []


def _here() -> str:
    import socket

    return socket.gethostname()


def push(
    target: Target,
    remote: str,
    options: SyncOptions | None = None,
    audit_json_out: Path | None = None,
) -> dict[str, Any]:
    """Fast-forward the remote to the local head (bootstrap if the remote is absent)."""
    options = options or SyncOptions()
    if target.kind == "file":
        from usr.sync import filemode

        return filemode.push(target, remote, options, audit_json_out)

    def body(run: AuditRun) -> str:
        if options.dry_run:
            _preview(run, target, remote, options)
            return "DRY-RUN"
        return _push(run, target, remote, options)

    return _run("push", target, remote, options, audit_json_out, body)


def _push(run: AuditRun, target: Target, remote: str, options: SyncOptions) -> str:
    st = _State()
    if not _local_exists(target.path):
        raise NotFoundError(
            f"dataset {target.dataset!r} does not exist locally at {target.path}",
            "pull it first, or check the id and --root",
        )
    st.local_exists = True
    store = _open_store(target.path, create=True)
    with store.lock(f"record before push {remote}", timeout=options.lock_timeout):
        store.record(f"record before push {remote}", actor=options.actor)
    st.local_head = store.head()
    st.local_tree = store.tree_of(st.local_head)
    with _session(remote, options) as session:
        try:
            heads = session.heads(target.dataset)
            if heads["head"] is not None:
                st.remote_head = session.record(
                    target.dataset, f"record before push from {_here()}", options.actor
                )["commit"]
                st.remote_exists = True
                _fetch_remote_trees(session, store, target, st)
                _set_tracking(store, remote, st.remote_head)
            cmp = _compare(store, target, remote, st)
            data = run.set_comparison(cmp)
            if cmp.relation == "equal":
                return "NO-OP"
            if not st.remote_exists:
                _bootstrap_id_check(target, options)
            _refuse("push", cmp)
            check_partial(cmp, options)
            _require_primary(store, st.local_head, "local")
            check_events_chain(store, _commits(store, st.local_head, st.remote_head))
            _confirm(options, "push", data)
            ctx = hooks.context_for(target.path, target.root, target.dataset)
            where = hooks.remote_target(remote, options.remotes_config)
            verify_env = hooks.verify_env_from(options)
            hooks.run_pre_push(
                ctx,
                remote,
                where,
                st.local_head,
                st.remote_head,
                verify_env,
                no_verify=options.no_verify,
                audit=data,
            )
            stats = session.push(
                target.dataset,
                store,
                st.local_head,
                st.remote_head,
                file_sizes=st.sizes.seeded() if st.sizes is not None else None,
            )
            _observed_transfer(data, stats)
            faults.point(FAULT_PUSH_UPDATED)
            _set_tracking(store, remote, st.local_head)
        finally:
            run.bytes_sent, run.bytes_received = _remote_bytes(session)
    outcome = hooks.run_post_push(
        ctx,
        remote,
        where,
        st.local_head,
        st.remote_head,
        verify_env,
        no_verify=options.no_verify,
        audit=data,
    )
    if outcome.status == "failed":
        run.notes.append(f"post-push hook failed (exit {outcome.exit_code}); the push stands")
    return "TRANSFERRED"


# ----------------------------------------------------------------------------- log / status


def tracking_ref(remote: str) -> str:
    """``refs/remotes/REMOTE/main``: the last head seen on ``remote``."""
    from usr.remotes import validate_name

    return TRACKING_REF.format(remote=validate_name(remote))


def remote_log(store: Any, remote: str, limit: int | None = None) -> list[Any]:
    """The remote-tracking history (``usr log DS --remote REMOTE``), newest first.

    Reads only the local store: what the last diff/pull/push saw. NotFoundError when this
    dataset was never compared with ``remote``.
    """
    head = store.head(tracking_ref(remote))
    if head is None:
        raise NotFoundError(
            f"no remote-tracking state for {remote}",
            f"run usr diff DATASET {remote} first: it records what the remote has",
        )
    return store.log(head, limit=limit)


def _apart(store: Any, remote: str, local: str | None, seen: str | None) -> dict[str, Any]:
    relation, base = _relation(store, local, seen)
    return {
        "remote": remote,
        "local_head": local,
        "remote_head": seen,
        "merge_base": base,
        "relation": relation,
        "ahead": len(_commits(store, local, seen)),
        "behind": len(_commits(store, seen, local)),
    }


def last_seen_status(store: Any) -> list[dict[str, Any]]:
    """How far local is from every remote this dataset synced with, as last seen (no
    network): one entry per ``refs/remotes/*/main``."""
    local = store.head()
    out = []
    for name in sorted(store.refs.names()):
        m = re.fullmatch(r"refs/remotes/([^/]+)/main", name)
        if m:
            entry = _apart(store, m.group(1), local, store.head(name))
            entry["live"] = False
            out.append(entry)
    return out


def remote_status(
    target: Target,
    remote: str | None = None,
    options: SyncOptions | None = None,
) -> list[dict[str, Any]]:
    """How far local and the remotes are apart (``usr status DS [REMOTE]``).

    Without ``remote``: :func:`last_seen_status`. With ``remote``: asks it now (its head,
    then its history's commits and trees, no file contents), moves the tracking ref like
    ``git fetch``, and reports that one live. ``ahead`` counts local states the remote
    lacks, ``behind`` remote states local lacks.
    """
    options = options or SyncOptions()
    if not _local_exists(target.path):
        raise NotFoundError(f"dataset {target.dataset!r} does not exist at {target.path}")
    store = _open_store(target.path, create=True)
    if remote is None:
        return last_seen_status(store)
    local = store.head()
    with _session(remote, options) as session:
        seen = session.heads(target.dataset)["head"]
        if seen is not None:
            session.fetch(target.dataset, store, [seen], _haves(local), blobs=False)
            _set_tracking(store, remote, seen)
    entry = _apart(store, remote, local, seen)
    entry["live"] = True
    return [entry]


def status_text(entries: list[dict[str, Any]]) -> list[str]:
    """One line per remote for ``usr status``."""
    lines = []
    for e in entries:
        how = "now" if e.get("live") else "last seen"
        rel = e["relation"]
        if rel == "equal":
            what = "up-to-date"
        elif rel == "remote-missing":
            what = "the dataset is not on the remote"
        else:
            what = f"{rel}: local ahead by {e['ahead']}, behind by {e['behind']}"
        lines.append(f"{e['remote']} ({how} {_short(e['remote_head'])}): {what}")
    return lines
