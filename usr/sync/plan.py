"""Deciding a sync: both heads, how they relate, and what would move — the plan that
``usr diff`` prints and a ``--dry-run`` stops at.

Owns :class:`SyncState` (what was learned about both sides), :func:`fetch_remote_trees`
(the remote's commits and trees, no contents), :func:`compare` (the audit
:class:`Comparison` of both trees) and :func:`preview` (diff and dry runs: both working
trees, nothing recorded). It decides and never carries out: the operations
(:mod:`usr.sync.pull`, :mod:`usr.sync.push`) and merge call it, never the other way
round; a merge report for diverged sides comes in through the ``merge_preview`` hook a
caller passes. May import the sync's lower modules (options, target, remote, history,
trees, rules, audit).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from usr.errors import NotFoundError, UsageError, UsrError
from usr.layout import RECORDS_FILE
from usr.sync.audit import AuditRun, Comparison, Side
from usr.sync.beside import beside
from usr.sync.history import commits, effective_relation, haves, relation, set_tracking
from usr.sync.options import SyncOptions
from usr.sync.recordfetch import fetch_record_blobs, record_diff
from usr.sync.remote import bytes_moved, open_remote
from usr.sync.rules import check_partial
from usr.sync.target import Target, local_exists, open_store
from usr.sync.trees import (
    Sizes,
    Summary,
    changed_paths,
    events_blob,
    events_of,
    events_relation,
    summarize,
    top_blob,
    tree_diff,
)


@dataclass
class SyncState:
    """What the planner learned about both sides before deciding."""

    local_head: str | None = None
    local_tree: str | None = None
    local_exists: bool = False
    local_dirty: bool = False
    remote_head: str | None = None
    remote_tree: str | None = None
    remote_exists: bool = False
    remote_dirty: bool = False
    sizes: Sizes | None = None
    #: ``(tree, summary)`` of the local tree, made while the session opened (diff).
    local_listing: tuple[str, Summary] | None = None
    #: What the gate checked of the sender's side (usr.sync.gate), for the audit.
    gate: dict[str, Any] | None = None


#: What merge contributes to a plan of diverged sides: ``(session, store, dataset, state)``
#: -> the merge report, or None. Passed in by the caller (merge depends on the planner).
MergePreview = Callable[[Any, Any, str, SyncState], "dict[str, Any] | None"]


def compare(store: Any, target: Target, remote: str, st: SyncState) -> Comparison:
    """Build the audit :class:`Comparison` from both sides' trees (all trees local now).

    One per-file comparison (``changes``, local against remote); each side itself is only
    summarised (files per section, its single named files), and the paths changed since
    the merge base are found without sizing anything."""
    if st.sizes is None:
        st.sizes = Sizes(store)
    sizes = st.sizes
    heads_rel, base = relation(store, st.local_head, st.remote_head)
    rel = effective_relation(heads_rel, st.local_dirty, st.remote_dirty)
    if heads_rel == "equal":
        base = st.local_head
    if st.local_listing is not None and st.local_listing[0] == st.local_tree:
        local_sum = st.local_listing[1]  # summarised beside the session open: not again
    else:
        local_sum = summarize(store, st.local_tree, sizes)
    if st.remote_tree == st.local_tree:
        remote_sum = local_sum  # same tree, same summary: walk it once
    else:
        remote_sum = summarize(store, st.remote_tree, sizes)
    changes = (
        tree_diff(store, st.local_tree, st.remote_tree, sizes)
        if st.local_tree != st.remote_tree
        else []
    )
    local_changed = remote_changed = None
    if base is not None:
        local_changed = changed_paths(store, base, st.local_tree)
        remote_changed = changed_paths(store, base, st.remote_tree)
    ev_local = events_of(store, local_sum.named)
    ev_remote = events_of(store, remote_sum.named)
    return Comparison(
        dataset=target.dataset,
        remote=remote,
        local=_side(
            store,
            st.local_exists,
            st.local_head,
            st.local_tree,
            st.local_dirty,
            ev_local,
            local_sum,
        ),
        remote_side=_side(
            store,
            st.remote_exists,
            st.remote_head,
            st.remote_tree,
            st.remote_dirty,
            ev_remote,
            remote_sum,
        ),
        relation=rel,
        merge_base=base,
        changes=changes,
        local_changed=local_changed,
        remote_changed=remote_changed,
        newer_than_local=len(commits(store, st.remote_head, st.local_head)),
        newer_than_remote=len(commits(store, st.local_head, st.remote_head)),
        events_relation=events_relation(ev_local, ev_remote),
    )


def _side(
    store: Any,
    exists: bool,
    head: str | None,
    tree: str | None,
    dirty: bool,
    events: list[bytes] | None,
    summary: Summary,
) -> Side:
    return Side(
        exists=exists,
        head=head,
        tree=tree,
        dirty=dirty,
        states=len(commits(store, head)),
        events_lines=len(events or []),
        files=summary.named,
        counts=summary.counts,
    )


def fetch_remote_trees(session: Any, store: Any, target: Target, st: SyncState) -> None:
    """Commits and trees of the remote history (no contents) plus its events log bytes.

    ``haves`` is the local head only (not the tracking ref), so the server's listing names
    the sizes of every blob the local store lacks; the rest are sized from the store.
    Sets ``st.remote_tree`` to the head's tree unless a working tree was given.
    """
    if st.sizes is None:
        st.sizes = Sizes(store)
    if st.remote_head is not None and st.remote_head != st.local_head:
        # (The local head's commits, trees and blobs are all here: no walk to prove it.)
        st.sizes.add(
            session.fetch(
                target.dataset, store, [st.remote_head], haves(st.local_head), blobs=False
            )
        )
    if st.remote_head is not None and st.remote_tree is None:
        st.remote_tree = store.tree_of(st.remote_head)
    if st.remote_tree is not None and st.remote_tree != store.tree_of(st.remote_head):
        st.sizes.add(session.fetch_tree(target.dataset, store, st.remote_tree))
    if st.remote_tree is not None:
        events = events_blob(store, st.remote_tree)
        if events is not None and not store.has_object(events):
            session.fetch_blobs(target.dataset, store, [events])


def preview_store_dir(target: Target) -> Path:
    """Where to keep fetched trees when previewing: the dataset's store, or a cache.

    A diff against a dataset absent here must not create it (a diff never changes working
    files), so its fetched trees go to ``<root>/.usr-cache/<id>`` instead.
    """
    if local_exists(target.path):
        return target.path
    return target.root / ".usr-cache" / target.dataset


def preview(
    run: AuditRun,
    target: Target,
    remote: str,
    options: SyncOptions,
    merge_preview: MergePreview | None = None,
) -> SyncState:
    """diff / --dry-run: both working trees without committing (trees may be cached)."""
    st = SyncState()
    st.local_exists = local_exists(target.path)
    store = open_store(preview_store_dir(target), create=True)

    def local_side() -> None:
        if st.local_exists:
            st.local_head = store.head()
            st.local_tree = store.working_tree()
            st.local_dirty = st.local_tree != store.tree_of(st.local_head)
            st.sizes = Sizes(store)
            st.local_listing = (st.local_tree, summarize(store, st.local_tree, st.sizes))

    with beside(local_side) as wait_local, open_remote(remote, options) as session:
        try:
            _read_remote_side(session, store, target, st, wait_local)
            set_tracking(store, remote, st.remote_head)
            if options.rows:
                fetch_record_blobs(session, store, target.dataset, st.remote_tree)
            merge_report = _merge_report(run, session, store, target, st, options, merge_preview)
        finally:
            run.bytes_sent, run.bytes_received = bytes_moved(session)
    if not st.local_exists and not st.remote_exists:
        raise NotFoundError(
            f"dataset {target.dataset!r} exists neither here ({target.path}) nor on {remote}",
            "check the id, --root and the remote's base_dir",
        )
    cmp = compare(store, target, remote, st)
    data = run.set_comparison(cmp)
    missing_primary_notes(run, store, st)
    if options.rows:
        data["records"] = record_diff(store, st, options)
    if merge_report is not None:
        data.update(
            mergeable=merge_report["mergeable"],
            conflicts=merge_report["conflicts"],
            merge=merge_report,
        )
    if options.dry_run:
        dry_run_notes(run, cmp, options)
    return st


def _read_remote_side(
    session: Any, store: Any, target: Target, st: SyncState, wait_local: Callable[[], None]
) -> None:
    """The remote's head and working tree (unrecorded; walked there while this side walks
    its own), then, once the local side is read, the remote trees fetched."""
    heads = session.heads(target.dataset, scan="look")
    st.remote_head = heads["head"]
    st.remote_exists = st.remote_head is not None
    if st.remote_exists:
        st.remote_tree = heads["tree"] or session.working_tree(target.dataset)
    wait_local()
    fetch_remote_trees(session, store, target, st)
    if st.remote_exists:
        st.remote_dirty = st.remote_tree != store.tree_of(st.remote_head)


def missing_primary_notes(run: AuditRun, store: Any, st: SyncState) -> None:
    """Say up front that a side's working files lack records.parquet: pull and push would
    refuse to transfer that state, and the operator should restore it before recording."""
    for side, tree in (("local", st.local_tree), ("remote", st.remote_tree)):
        if tree is not None and top_blob(store, tree, RECORDS_FILE) is None:
            run.notes.append(
                f"{side} {RECORDS_FILE} is missing: pull and push refuse to transfer such a "
                "state; restore it there first (usr checkout DATASET HEAD)"
            )


def _merge_report(
    run: AuditRun,
    session: Any,
    store: Any,
    target: Target,
    st: SyncState,
    options: SyncOptions,
    merge_preview: MergePreview | None,
) -> dict[str, Any] | None:
    """What a merge of diverged sides would do, for ``diff`` and a ``--merge`` dry run;
    None when the sides have not diverged. A diff still reports when the preview itself
    fails (say, a file it cannot read), noting why."""
    if merge_preview is None or (run.action != "diff" and not options.merge):
        return None
    if st.local_head is None or st.remote_head is None:
        return None
    heads_rel, _base = relation(store, st.local_head, st.remote_head)
    if effective_relation(heads_rel, st.local_dirty, st.remote_dirty) != "diverged":
        return None  # decided here: merge imports pyarrow (~0.13 s) for nothing
    try:
        return merge_preview(session, store, target.dataset, st)
    except Exception as exc:  # noqa: BLE001 - a diff must report even if its preview fails
        if run.action != "diff":
            raise
        why = exc.one_line() if isinstance(exc, UsrError) else f"{type(exc).__name__}: {exc}"
        run.notes.append(f"merge preview unavailable: {why}")
        return None


def dry_run_notes(run: AuditRun, cmp: Comparison, options: SyncOptions) -> None:
    """What the real command would decide, said without doing it."""
    action = run.action
    rel = cmp.relation
    would = _WOULD.get((action, rel), "would refuse: local and remote have diverged")
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


#: What a real pull or push would do, by relation (said by a dry run).
_WOULD = {
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
}
