"""Carrying out a push: fast-forward the remote dataset to the local head (or bootstrap it).

Owns :func:`push`: both sides record their working state, the planner compares them, the
rules refuse or allow, the pre-push hook may refuse, then the session sends what the
remote lacks and the remote compare-and-swaps its ref with the checkout (see
:mod:`usr.sync.server`). May import the planner and the sync's lower modules,
:mod:`usr.hooks`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from usr import faults, hooks
from usr.atomic import syncfs
from usr.errors import NotFoundError
from usr.store.refs import MAIN
from usr.store.repository import FAULT_SNAPSHOT_AFTER_REF, FAULT_SNAPSHOT_BEFORE_REF
from usr.sync.audit import AuditRun, Comparison
from usr.sync.auditfile import observed_transfer
from usr.sync.beside import beside
from usr.sync.gate import check_state, own_handle
from usr.sync.history import commits, set_tracking, tracking_ref
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
from usr.sync.target import Target, local_exists, open_store

FAULT_PUSH_UPDATED = faults.register(
    "push.updated", "client: the remote moved its ref and checked out; tracking ref not moved"
)


def carry_out(run: AuditRun, target: Target, remote: str, options: SyncOptions) -> str:
    """The push itself once planned to run (not a dry run): returns the transfer state."""
    st = SyncState()
    require_local(target)
    stores: list[Any] = []
    # Both sides walk their files at once: this one on a thread while the session opens
    # and the remote walks its own (heads with scan), each recorded from its own walk.
    local = beside(lambda: stores.extend(_record_local(target, remote, st, options)))
    with local as wait_local, open_remote(remote, options) as session:
        try:
            heads = session.heads(target.dataset, scan="record")
            wait_local()
            store, finish = stores
            try:
                state = _send(session, heads, store, target, remote, st, options, run, finish)
            except KeyboardInterrupt:
                raise
            except BaseException:
                finish()  # a refusal of the local state wins; else the record stands
                raise
            if state == "NO-OP":
                return state
            hook = state
        finally:
            run.bytes_sent, run.bytes_received = bytes_moved(session)
    hook.post_push(run)
    return "TRANSFERRED"


def _send(
    session: Any,
    heads: dict[str, Any],
    store: Any,
    target: Target,
    remote: str,
    st: SyncState,
    options: SyncOptions,
    run: AuditRun,
    finish: Callable[[], None],
) -> Any:
    """Compare, decide and send; "NO-OP", or the push's hooks once the remote moved."""
    if not _clean(store, heads):
        # A remote with unrecorded changes records them, and a dataset directory without
        # a head takes a store, before anything is sent: only for a state that passed.
        finish()
    if heads["head"] is not None:
        st.remote_head = session.record(
            target.dataset,
            f"record before push from {here()}",
            options.actor,
            scanned=heads["tree"] is not None,
        )["commit"]
        st.remote_exists = True
        fetch_remote_trees(session, store, target, st)
        set_tracking(store, remote, st.remote_head)
    cmp = compare(store, target, remote, st)
    data = run.set_comparison(cmp)
    data["gate"] = st.gate
    if cmp.relation == "equal":
        finish()
        return "NO-OP"
    _decide(store, target, st, cmp, options)
    confirm(options, "push", data)
    hook = _Hook(target, remote, st, options, data)
    hook.pre_push()
    # Decided: let the comparison go (its spooled changes, a row per file of a
    # bootstrap); the audit entries name every file the push sends. The sizes go
    # to the push alone, which drops them once its plan is made.
    del cmp
    stats = session.push(
        target.dataset,
        store,
        st.local_head,
        st.remote_head,
        file_sizes=_take_sizes(st),
        validate=not options.no_validate,
        before_update=finish,
    )
    observed_transfer(data, stats)
    faults.point(FAULT_PUSH_UPDATED)
    set_tracking(store, remote, st.local_head)
    return hook


def _clean(store: Any, heads: dict[str, Any]) -> bool:
    """Whether nothing the push does before it asks the remote to move its ref changes
    what the remote's people see: no dataset there yet (a bootstrap, which a refusal
    abandons: ``abandon`` removes the directories it made), or its walk found its working
    files equal to its head (as far as this store knows that head)."""
    if not heads.get("exists", True):
        return True  # a bootstrap: a refused one asks the remote to remove what it made
    head, tree = heads["head"], heads.get("tree")
    if head is None or tree is None or not store.has_object(head):
        return False
    return store.tree_of(head) == tree


def _take_sizes(st: SyncState) -> Any:
    """The push's sizes, no longer held by ``st`` (the push drops them after its plan)."""
    sizes, st.sizes = st.sizes, None
    return sizes.seeded() if sizes is not None else None


def _record_local(
    target: Target, remote: str, st: SyncState, options: SyncOptions
) -> tuple[Any, Callable[[], None]]:
    """Record the local working state; returns its store and what must run before the
    remote is asked to move its ref (:class:`_CheckBeside`'s ``finish``, or nothing)."""
    st.local_exists = True
    store = open_store(target.path, create=True)
    action = f"record before push {remote}"
    if _check_first(target, options):
        gate = _WorkingGate(store, remote, options)
        with store.lock(action, timeout=options.lock_timeout):
            store.record(action, actor=options.actor, check=gate)
        st.gate = gate.result
        st.local_head = store.head()
        finish: Callable[[], None] = _nothing
    else:
        beside_ = _CheckBeside(
            store, action, options, _WorkingGate(own_handle(store), remote, options)
        )
        st.gate = beside_.gate.result
        st.local_head = beside_.commit
        finish = beside_.finish
    st.local_tree = store.tree_of(st.local_head)
    return store, finish


def _nothing() -> None:
    return None


def _check_first(target: Target, options: SyncOptions) -> bool:
    """Whether the gate must pass before the record is committed, as a snapshot's hooks and
    a person asked to confirm see it: with a ``pre-snapshot`` or ``pre-push`` hook, with a
    confirmation to ask, or with nothing to check (``--no-validate``)."""
    if options.no_validate or options.confirm is not None:
        return True
    roots = {target.root, hooks.find_root(target.path)}
    return any(
        hooks.find_hook(name, target.path, root) is not None
        for name in ("pre-snapshot", "pre-push")
        for root in roots
    )


class _CheckBeside:
    """A push's local record whose gate runs on a thread while the push compares, plans and
    sends (on the primary dataset the check of a new table is a decode of every id, seconds
    that the transfer's own work now hides).

    The commit object is written at once; ``refs/heads/main`` moves only in :meth:`finish`,
    once the check passed, which the push calls after the last byte is sent and before the
    remote is asked to move its own ref. So a refusal still leaves the local ref where it
    was and the remote's where it was: what the remote received is unnamed objects (and
    staged files no checkout takes), gone with its next gc."""

    def __init__(self, store: Any, action: str, options: SyncOptions, gate: _WorkingGate) -> None:
        self.store, self.action, self.gate = store, action, gate
        self.lock_timeout = options.lock_timeout
        with store.lock(action, timeout=options.lock_timeout):
            tree = store.working_tree()
            self.head = store.head()
            if self.head is not None and store.tree_of(self.head) == tree:
                self.commit = self.head
            else:
                parents = [self.head] if self.head else []
                self.commit = store.commit_tree(tree, parents, action, options.actor)
                syncfs(store.gitdir)  # durable before any ref names it: finish moves it only
        self.failed: list[BaseException] = []
        self.done = False
        self.thread = threading.Thread(
            target=self._check, args=(tree,), name="usr-push-gate", daemon=True
        )
        self.thread.start()

    def _check(self, tree: str) -> None:
        try:
            self.gate(tree)
        except BaseException as exc:  # noqa: BLE001 - raised on the push's thread
            self.failed.append(exc)

    def finish(self) -> None:
        """Wait for the check: raise its refusal, else move ``refs/heads/main`` to the
        record (once; the store's record makes the same move under the same fault points)."""
        if self.done:
            return
        self.thread.join()
        if self.failed:
            raise self.failed[0]
        self.done = True
        if self.commit != self.head:
            with self.store.lock(self.action, timeout=self.lock_timeout):
                faults.point(FAULT_SNAPSHOT_BEFORE_REF)
                self.store.refs.update(MAIN, self.commit, self.head)
                faults.point(FAULT_SNAPSHOT_AFTER_REF)


def require_local(target: Target) -> None:
    """A push needs the dataset here."""
    if not local_exists(target.path):
        raise NotFoundError(
            f"dataset {target.dataset!r} does not exist locally at {target.path}",
            "pull it first, or check the id and --root",
        )


class _WorkingGate:
    """The check a push's local record runs on the working tree before committing it, so a
    refusal leaves even the local ref where it was. What the remote already holds (as last
    seen) is not read again; the remote gates what it receives once more before its ref
    moves. ``result`` is the audit's ``data.gate``."""

    def __init__(self, store: Any, remote: str, options: SyncOptions) -> None:
        self.store = store
        self.seen = store.head(tracking_ref(remote))
        self.override = options.no_validate
        self.result: dict[str, Any] = {
            "validated": not self.override,
            "override": self.override,
            "checked": [],
        }

    def __call__(self, tree: str) -> None:
        if not self.override:
            done = check_state(self.store, tree, self.seen, "the push of the working files")
            self.result.update(done)


def _decide(
    store: Any, target: Target, st: SyncState, cmp: Comparison, options: SyncOptions
) -> None:
    """The rules a fast-forward push must pass before anything is sent."""
    if not st.remote_exists:
        bootstrap_id_check(target, options)
    refuse("push", cmp)
    check_partial(cmp, options)
    require_primary(store, st.local_head, "local")
    check_events_chain(store, commits(store, st.local_head, st.remote_head))


class _Hook:
    """The pre-push and post-push hooks of one push, with the context both are given."""

    def __init__(
        self,
        target: Target,
        remote: str,
        st: SyncState,
        options: SyncOptions,
        data: dict[str, Any],
    ) -> None:
        self.ctx = hooks.context_for(target.path, target.root, target.dataset)
        self.where = hooks.remote_target(remote, options.remotes_config)
        self.verify_env = hooks.verify_env_from(options)
        self.remote, self.st, self.options, self.data = remote, st, options, data

    def pre_push(self) -> None:
        hooks.run_pre_push(
            self.ctx,
            self.remote,
            self.where,
            self.st.local_head,
            self.st.remote_head,
            self.verify_env,
            no_verify=self.options.no_verify,
            audit=self.data,
        )

    def post_push(self, run: AuditRun) -> None:
        outcome = hooks.run_post_push(
            self.ctx,
            self.remote,
            self.where,
            self.st.local_head,
            self.st.remote_head,
            self.verify_env,
            no_verify=self.options.no_verify,
            audit=self.data,
        )
        if outcome.status == "failed":
            run.notes.append(f"post-push hook failed (exit {outcome.exit_code}); the push stands")
