"""Carrying out a push: fast-forward the remote dataset to the local head (or bootstrap it).

Owns :func:`push`: both sides record their working state, the planner compares them, the
rules refuse or allow, the pre-push hook may refuse, then the session sends what the
remote lacks and the remote compare-and-swaps its ref with the checkout (see
:mod:`usr.sync.server`). May import the planner and the sync's lower modules,
:mod:`usr.hooks`.
"""

from __future__ import annotations

from typing import Any

from usr import faults, hooks
from usr.errors import NotFoundError
from usr.sync.audit import AuditRun, Comparison
from usr.sync.auditfile import observed_transfer
from usr.sync.beside import beside
from usr.sync.gate import check_state
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
    local = beside(lambda: stores.append(_record_local(target, remote, st, options)))
    with local as wait_local, open_remote(remote, options) as session:
        try:
            heads = session.heads(target.dataset, scan="record")
            wait_local()
            store = stores[0]
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
            )
            observed_transfer(data, stats)
            faults.point(FAULT_PUSH_UPDATED)
            set_tracking(store, remote, st.local_head)
        finally:
            run.bytes_sent, run.bytes_received = bytes_moved(session)
    hook.post_push(run)
    return "TRANSFERRED"


def _take_sizes(st: SyncState) -> Any:
    """The push's sizes, no longer held by ``st`` (the push drops them after its plan)."""
    sizes, st.sizes = st.sizes, None
    return sizes.seeded() if sizes is not None else None


def _record_local(target: Target, remote: str, st: SyncState, options: SyncOptions) -> Any:
    """Record the local working state; returns its store."""
    st.local_exists = True
    store = open_store(target.path, create=True)
    gate = _WorkingGate(store, remote, options)
    with store.lock(f"record before push {remote}", timeout=options.lock_timeout):
        store.record(f"record before push {remote}", actor=options.actor, check=gate)
    st.gate = gate.result
    st.local_head = store.head()
    st.local_tree = store.tree_of(st.local_head)
    return store


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
