"""The one locked step of a push on the server: check, then move the ref and check out.

Everything the push streamed is already verified and stored; here the state passes the
gate, must be complete and a fast-forward of the head, and is checked out (staged,
verified, promoted) under the dataset and events locks with ``refs/heads/main`` moving in
the same step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from usr.errors import NotFoundError, VerifyError
from usr.locks import events_lock
from usr.store import revlist
from usr.store.checkout import checkout
from usr.sync.beside import beside
from usr.sync.history import require_fast_forward


def update_and_checkout(
    store: Any,
    new: str,
    old: str | None,
    validate: bool = True,
    staged: Any = None,
    early: Any = None,
) -> str:
    """The one locked step of a push: HEAD must still be ``old`` and ``new`` must contain
    it (fast-forward only); then ``new`` is checked out (staged, verified, promoted) and
    ``refs/heads/main`` moves with it. Unrecorded changes in the working directory refuse
    it (ConflictError), so nothing written there since the record is ever overwritten.
    Before anything is promoted the state passes the gate (:mod:`usr.sync.gate`) unless
    the client named ``--no-validate``: checked on a thread while the checkout stages
    (which ends waiting for the disk), and waited for before the journal commits; its
    refusal wins over any other failure, as when it ran first. ``staged``: the files the
    receive streamed into the staging dir (:class:`usr.store.checkout.Staged`), which the
    checkout takes without rereading; ``early``: the gate's check of the received table
    already started on its staged copy (:class:`usr.sync.gate.StagedCheck`)."""
    if not store.has_object(new):
        raise VerifyError(f"commit {new} did not arrive; refusing to move the ref")
    _require_complete(store, new)
    # The events lock too (after the dataset lock, the order every writer takes them): a
    # batch job's line appended while files are staged would otherwise be overwritten when
    # the pushed .events.log is promoted. With it held the line waits and lands after.
    what = "push: update ref and check out"
    with (
        beside(_gate(store, new, old, validate, early)) as gate_passed,
        store.lock(what),
        events_lock(store.path, what=what),
    ):
        hint = "someone else pushed or recorded; rerun to see the new state"
        require_fast_forward(store, store.head(), old, new, hint)
        checkout(store, new, expect_head=old, staged=staged, ready=gate_passed)
    return store.head()


def _gate(
    store: Any, new: str, old: str | None, validate: bool, early: Any = None
) -> Callable[[], None]:
    """The gate's check of the pushed state (nothing with ``--no-validate``), through a
    store handle of its own (its own libgit2 repository and chunk readers: the checkout
    reads through the caller's meanwhile)."""

    def check() -> None:
        if validate:
            from usr.sync.gate import check_state, own_handle

            where = f"the push of state {new[:12]}"
            check_state(own_handle(store), new, old, where, early)

    return check


def _require_complete(store: Any, new: str) -> None:
    """Every file of ``new``'s tree is stored: checked for the blobs that are not at the
    same path in the stored head (complete, as it was checked out), found top-down, so a
    one-file push checks one file, not every file of the state."""
    head = store.head()
    bases = [str(store.repo[head].tree_id)] if head and store.has_object(head) else []
    try:
        listed = revlist.tree_changes(store.repo, str(store.repo[new].tree_id), bases)
    except NotFoundError as exc:
        raise VerifyError(f"commit {new} is incomplete: {exc} (did not arrive)") from None
    for oid, kind in listed:
        if kind == "blob" and not store.has_object(oid):
            raise VerifyError(f"commit {new} is incomplete: file {oid} did not arrive")
