"""Merge as the sync carries it out: the preview a diff shows for diverged sides, and
``usr pull --merge``.

Owns :func:`preview` (the planner's ``merge_preview`` hook) and :func:`merge_pull`. The
three-way merge itself, pure over trees, is :mod:`usr.merge`; it is imported only when
two sides have really diverged (it loads pyarrow, ~0.13 s). Asks the planner's lower
modules (history, rules, verify, options) through their public functions and is never
imported by the planner.
"""

from __future__ import annotations

from typing import Any

from usr.locks import events_lock
from usr.sync.audit import AuditRun, Comparison
from usr.sync.gate import gate_state
from usr.sync.history import commits, effective_relation, haves, relation
from usr.sync.options import SyncOptions, confirm
from usr.sync.rules import check_events_chain, check_partial, require_primary
from usr.sync.target import Target
from usr.sync.verify import verify_working


def _fetch_needed(session: Any, store: Any, dataset: str, base: str | None, lt: str, rt: str):
    from usr.merge import needed_blobs

    need = needed_blobs(store, base, lt, rt)
    missing = [oid for oid in need["remote"] if not store.has_object(oid)]
    if missing:
        session.fetch_blobs(dataset, store, missing)


def preview(session: Any, store: Any, dataset: str, st: Any) -> dict[str, Any] | None:
    """What merging the two working trees would do, for ``diff`` and ``--dry-run``.

    Called by the planner with the session open (it fetches the remote contents a content
    merge needs). None unless the sides have diverged. Records nothing, moves no ref: the
    merged objects it writes are unreferenced until a real merge (``usr gc`` drops them).
    """
    if st.local_head is None or st.remote_head is None or st.remote_tree is None:
        return None
    heads_rel, base = relation(store, st.local_head, st.remote_head)
    if effective_relation(heads_rel, st.local_dirty, st.remote_dirty) != "diverged":
        return None
    if heads_rel == "equal":
        base = st.local_head
    if base is None:
        return unrelated(st.local_head, st.remote_head)
    from usr.merge import merge_trees, report

    base_tree = store.tree_of(base)
    _fetch_needed(session, store, dataset, base_tree, st.local_tree, st.remote_tree)
    # Files only one side changed are never read, so their blobs need not be here.
    result = merge_trees(store, base_tree, st.local_tree, st.remote_tree, strict=False)
    return report(result, st.local_head, st.remote_head, base)


def unrelated(local_head: str, remote_head: str) -> dict[str, Any]:
    """The merge report of two histories with no common state."""
    why = "the two histories share no state (no merge base)"
    return {
        "mergeable": False,
        "base_tree": None,
        "local_tree": None,
        "remote_tree": None,
        "tree": None,
        "files": [],
        "conflicts": [{"path": "", "kind": "no-merge-base", "why": why}],
        "local_head": local_head,
        "remote_head": remote_head,
        "merge_base": None,
        "commit": None,
    }


def merge_pull(
    run: AuditRun,
    session: Any,
    store: Any,
    target: Target,
    remote: str,
    st: Any,
    cmp: Comparison,
    options: SyncOptions,
) -> str:
    """``usr pull --merge`` (and ``usr merge``) once both sides are recorded and compared.

    Local already containing the remote head is a NO-OP (push shares it). Diverged: fetch
    the remote states, check their events chain, merge; on conflicts raise
    :class:`usr.merge.MergeConflict` having changed nothing; else record the merge commit
    and check it out here (staged, verified, promoted, HEAD moved from the local head in
    one locked step). The remote is untouched: ``usr push`` then fast-forwards it.
    """
    from usr.merge import MergeConflict, commit_merge, merge_trees, report

    data = run.data
    if cmp.relation == "local-ahead":
        run.notes.append("nothing to merge: local already holds the remote head; push it")
        return "NO-OP"
    check_partial(cmp, options)
    require_primary(store, st.remote_head, f"remote {remote}")
    if cmp.merge_base is None:
        doc = unrelated(st.local_head, st.remote_head)
        data.update(mergeable=False, conflicts=doc["conflicts"], merge=doc)
        raise MergeConflict(doc, data)
    session.fetch(target.dataset, store, [st.remote_head], haves(st.local_head))
    check_events_chain(store, commits(store, st.remote_head, st.local_head))
    data["gate"] = gate_state(store, st.remote_head, st.local_head, "merge", options)
    result = merge_trees(
        store, store.tree_of(cmp.merge_base), st.local_tree, store.tree_of(st.remote_head)
    )
    doc = report(result, st.local_head, st.remote_head, cmp.merge_base)
    data.update(mergeable=result.mergeable, conflicts=doc["conflicts"], merge=doc)
    if not result.mergeable:
        raise MergeConflict(doc, data)
    confirm(options, "merge", data)
    commit = commit_merge(store, result, st.local_head, st.remote_head, remote, options.actor)
    doc["commit"] = commit
    moved = {c.path for c in store.diff(st.local_head, commit, sizes=False) if c.new_id}
    with (
        store.lock(f"merge {remote}", timeout=options.lock_timeout),
        events_lock(target.path, timeout=options.lock_timeout),
    ):
        store.checkout(commit, expect_head=st.local_head)
        verify_working(store, target.path, commit, options, only=moved)
    run.notes.append(f"merged into {commit[:12]}; 'usr push' fast-forwards {remote}")
    return "TRANSFERRED"
