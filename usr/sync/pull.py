"""Carrying out a pull: fast-forward the local dataset to the remote head (or bootstrap it).

Owns :func:`pull`: both sides record their working state, the planner compares them, the
rules refuse or allow, the remote's objects and chunks are fetched, and the store checks
the head out here (staged, verified, promoted, branch moved in one locked step). A
``--merge`` pull of diverged sides is handed to :mod:`usr.sync.merging`. May import the
planner and the sync's lower modules, :mod:`usr.hooks`, :mod:`usr.locks`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from usr import faults, hooks
from usr.errors import NotFoundError
from usr.layout import mark_root
from usr.locks import events_lock
from usr.store import FileChange
from usr.store.checkout import Staged, checkout
from usr.store.streamstage import StreamStager
from usr.sync import merging
from usr.sync.audit import AuditRun, Comparison
from usr.sync.auditfile import observed_transfer
from usr.sync.beside import beside
from usr.sync.gate import gate_state, own_handle
from usr.sync.history import MAIN_REF, commits, haves, set_tracking, short
from usr.sync.options import SyncOptions, confirm
from usr.sync.plan import SyncState, compare, fetch_remote_trees
from usr.sync.remote import bytes_moved, here, open_remote
from usr.sync.rules import (
    bootstrap_id_check,
    check_events_chain,
    check_partial,
    refuse,
    require_primary,
)
from usr.sync.target import Target, local_exists, open_store, scan_working
from usr.sync.trees import Sizes
from usr.sync.verify import verify_working

FAULT_PULL_NEGOTIATED = faults.register(
    "pull.negotiated", "client: both sides recorded, remote trees fetched; no contents yet"
)
FAULT_PULL_FETCHED = faults.register(
    "pull.fetched", "client: every object and chunk of the remote head stored; nothing checked out"
)
FAULT_PULL_CHECKED_OUT = faults.register(
    "pull.checked-out", "client: remote head checked out and ref moved; not yet re-verified"
)


def carry_out(run: AuditRun, target: Target, remote: str, options: SyncOptions) -> str:
    """The pull itself once planned to run (not a dry run): returns the transfer state."""
    st = SyncState()
    st.local_exists = local_exists(target.path)
    scan = _LocalScan(target, remote, st, options)
    with beside(scan.run) as wait_local, open_remote(remote, options) as session:
        try:
            store = _record_both(run, session, target, remote, st, options, scan, wait_local)
            fetch_remote_trees(session, store, target, st)
            set_tracking(store, remote, st.remote_head)
            faults.point(FAULT_PULL_NEGOTIATED)
            cmp = compare(store, target, remote, st)
            data = run.set_comparison(cmp)
            if cmp.relation == "equal":
                return "NO-OP"
            if options.merge and cmp.relation in ("diverged", "local-ahead"):
                return merging.merge_pull(run, session, store, target, remote, st, cmp, options)
            _decide(cmp, options)
            # Decided: let the comparison and the sizes go (per-file objects, ~35 MiB at
            # 100,000 files); the audit entries name every file the checkout writes.
            del cmp
            st.sizes = None
            require_primary(store, st.remote_head, f"remote {remote}")
            confirm(options, "pull", data)
            base = store.tree_of(st.local_head) if st.local_head else None
            # Chunked files too, as their chunks land, when both sides agreed to it.
            chunked = bool(getattr(session, "manifest_first", False))
            tree = store.tree_of(st.remote_head)
            stager = StreamStager(store, tree, base, chunked=chunked)
            try:
                stats = session.fetch(
                    target.dataset, store, [st.remote_head], haves(st.local_head), stage=stager
                )
                observed_transfer(data, stats)
                check_events_chain(store, commits(store, st.remote_head, st.local_head))
            except BaseException:
                stager.discard()  # refused: nothing of it stays in the working directory
                raise
            if faults.armed(FAULT_PULL_FETCHED):
                stager.drain()  # a kill here leaves the same staged files every run
            faults.point(FAULT_PULL_FETCHED)
        finally:
            run.bytes_sent, run.bytes_received = bytes_moved(session)
    try:
        _check_out(store, target, remote, st, options, data, stager.result())
    except BaseException:
        stager.discard()
        raise
    _post_pull(run, target, remote, st, options, data)
    return "TRANSFERRED"


def _decide(cmp: Comparison, options: SyncOptions) -> None:
    """The rules a fast-forward pull must pass before anything is fetched."""
    refuse("pull", cmp)
    check_partial(cmp, options)


class _LocalScan:
    """The walk of the local working files, made on a thread while the session opens and
    the remote walks its own; recorded only once the remote has recorded (a refused pull
    leaves the local history as it was). No walk for a bootstrap or a copy without
    history (it may adopt the remote's)."""

    def __init__(self, target: Target, remote: str, st: SyncState, options: SyncOptions):
        self.target, self.remote, self.st, self.options = target, remote, st, options
        self.scanned: tuple[str, str | None] | None = None
        self.store: Any = None

    def run(self) -> None:
        if not self.st.local_exists:
            return
        self.store = store = open_store(self.target.path, create=True)
        if store.head() is not None:
            why = f"scan before pull {self.remote}"
            self.scanned = scan_working(store, why, timeout=self.options.lock_timeout)


def _record_both(
    run: AuditRun,
    session: Any,
    target: Target,
    remote: str,
    st: SyncState,
    options: SyncOptions,
    scan: _LocalScan,
    wait_local: Callable[[], None],
) -> Any:
    """Record the remote's working state, then the local one from the walk ``scan`` made
    meanwhile (adopting the remote history for an unrecorded identical copy); returns the
    local store."""
    heads = session.heads(target.dataset, scan="record")
    if heads["head"] is None:
        raise NotFoundError(
            f"dataset {target.dataset!r} has no recorded state on remote {remote}",
            "push it first, record it there (usr snapshot), or check the id and the "
            "remote's base_dir",
        )
    st.remote_head = session.record(
        target.dataset,
        f"record before pull to {here()}",
        options.actor,
        gate=not options.no_validate,
        scanned=heads["tree"] is not None,
    )["commit"]
    st.remote_exists = True
    wait_local()
    if not st.local_exists:
        bootstrap_id_check(target, options)
    store = scan.store or open_store(target.path, create=True)
    if st.local_exists and store.head() is None:
        _adopt_if_identical(run, session, store, target, st, options)
    if st.local_exists:
        with store.lock(f"record before pull {remote}", timeout=options.lock_timeout):
            action = f"record before pull {remote}"
            store.record(action, actor=options.actor, scanned=scan.scanned)
    st.local_head = store.head()
    st.local_tree = store.tree_of(st.local_head)
    return store


def _check_out(
    store: Any,
    target: Target,
    remote: str,
    st: SyncState,
    options: SyncOptions,
    data: dict[str, Any],
    staged: Staged | None = None,
) -> None:
    """Check the fetched head out here and re-verify what it wrote (taking the files the
    fetch ``staged`` as their blobs landed without reading them again). The gate checks
    the fetched state on a thread while the checkout stages (which ends waiting for the
    disk), and is waited for before anything is promoted; its refusal wins over any
    other failure, as when it ran first.

    Under the dataset lock AND the events lock (same order as every writer), so a line
    appended to .events.log meanwhile is either in the recorded state already or waits for
    us and lands after promotion; the store refuses if HEAD or the working files moved
    since we recorded (nothing is lost, rerun the pull).
    """
    moved = pulled_entries(data)

    def gate() -> None:
        data["gate"] = gate_state(own_handle(store), st.remote_head, st.local_head, "pull", options)

    with (
        beside(gate) as gate_passed,
        store.lock(f"pull {remote}", timeout=options.lock_timeout),
        events_lock(target.path, timeout=options.lock_timeout),
    ):
        checkout(store, st.remote_head, expect_head=st.local_head, staged=staged, ready=gate_passed)
        faults.point(FAULT_PULL_CHECKED_OUT)
        verify_working(store, target.path, st.remote_head, options, entries=moved)
    if not st.local_exists:
        mark_root(target.root)  # a bootstrapped root is a root: `usr diff .` works inside it


def _post_pull(
    run: AuditRun,
    target: Target,
    remote: str,
    st: SyncState,
    options: SyncOptions,
    data: dict[str, Any],
) -> None:
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


def pulled_entries(data: dict[str, Any]) -> Iterator[FileChange]:
    """The files a pull writes, from its audit entries (``new_*`` is the remote side of a
    pull), for the post-checkout check: no second per-file list held through the checkout."""
    for f in data["files"]:
        if f["new_id"] is not None:
            status = "A" if f["old_id"] is None else "M"
            old, new = (f["old_id"], f["old_size"]), (f["new_id"], f["new_size"])
            yield FileChange(f["path"], status, f["section"], old[0], new[0], old[1], new[1])


def _adopt_if_identical(
    run: AuditRun, session: Any, store: Any, target: Target, st: SyncState, options: SyncOptions
) -> None:
    """Adopt the remote history for a copy that has files but no history of its own.

    A dataset copied here by other means (rsync, an archive) would otherwise record an
    unrelated first state that every later sync refuses. If its files are exactly the
    remote head's, point ``refs/heads/main`` at that head instead (nothing is rewritten).
    """
    st.sizes = st.sizes or Sizes(store)
    st.sizes.add(session.fetch(target.dataset, store, [st.remote_head], [], blobs=False))
    with store.lock("adopt remote history", timeout=options.lock_timeout):
        if store.head() is None and store.working_tree() == store.tree_of(st.remote_head):
            store.update_ref(MAIN_REF, st.remote_head, None)
            run.notes.append(
                f"adopted the remote history: the files here already equal {short(st.remote_head)}"
            )
