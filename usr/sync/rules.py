"""The rules a sync refuses by, checked before anything on either side changes.

Owns the fast-forward-only rule (:func:`refuse`), the append-only event log
(:func:`check_events_chain`), the primary table's presence (:func:`require_primary`),
partial transfers that would drop changes (:func:`check_partial`) and strict bootstrap
ids. Each raises a :class:`usr.errors.UsrError` that names what and why. May import
:mod:`usr.sync.history`, :mod:`usr.sync.trees`, :mod:`usr.sync.options`,
:mod:`usr.sync.audit`.
"""

from __future__ import annotations

from typing import Any

from usr.errors import ConflictError, InputError, UsageError
from usr.layout import RECORDS_FILE
from usr.sync.audit import Comparison
from usr.sync.history import parents, short
from usr.sync.options import SyncOptions
from usr.sync.target import Target
from usr.sync.trees import blob_bytes, event_lines, events_blob, top_blob


def check_events_chain(store: Any, commits: list[str]) -> None:
    """Refuse states whose ``.events.log`` is not a line-prefix extension of a parent's.

    A merge state must extend at least one parent (the remote-side parent, by the merge
    rules), so the shared copy consumers tail only ever grows.
    """
    lines: dict[str, list[bytes]] = {}

    def events_at(commit: str) -> list[bytes]:
        if commit not in lines:
            blob = events_blob(store, commit)
            lines[commit] = event_lines(blob_bytes(store, blob)) if blob else []
        return lines[commit]

    for commit in commits:
        mine = events_at(commit)
        above = parents(store, commit)
        if not above:
            continue
        ok = False
        for parent in above:
            theirs = events_at(parent)
            if mine[: len(theirs)] == theirs:
                ok = True
                break
        if not ok:
            raise ConflictError(
                f"state {short(commit)} rewrites .events.log instead of appending to it",
                ".events.log is append-only; restore the removed or changed lines and record again",
            )


def require_primary(store: Any, commit: str, where: str) -> None:
    """A state without ``records.parquet`` is never transferred (found by path)."""
    if top_blob(store, commit, RECORDS_FILE) is None:
        raise InputError(
            f"{where} state {short(commit)} has no {RECORDS_FILE}",
            "a dataset without its primary table is never transferred; restore it on that side, "
            "e.g. usr checkout DATASET HEAD~1",
        )


def bootstrap_id_check(target: Target, options: SyncOptions) -> None:
    if options.strict_bootstrap_id and "/" not in target.dataset:
        raise UsageError(
            f"refusing to bootstrap {target.dataset!r}: strict bootstrap ids need NAMESPACE/NAME",
            "use a namespace-qualified id, or drop --strict-bootstrap-id / "
            "USR_SYNC_STRICT_BOOTSTRAP_ID",
        )


def refuse(action: str, cmp: Comparison) -> None:
    """The fast-forward-only rule: refuse (nothing changed yet) unless it fast-forwards."""
    relation = cmp.relation
    heads = f"local {short(cmp.local.head)}, remote {short(cmp.remote_side.head)}"
    if relation == "diverged" and cmp.merge_base is None:
        raise ConflictError(
            f"local and remote histories are unrelated (no common state): {heads}",
            "nothing was changed on either side; keep one copy (move the other aside) and "
            "pull or push again",
        )
    if relation == "diverged":
        raise ConflictError(
            f"local and remote have diverged: merge base {short(cmp.merge_base)}, {heads}",
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


def left_out(options: SyncOptions) -> set[str]:
    """The sections a reduced-fidelity transfer leaves out."""
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
    skipped = left_out(options)
    if not skipped:
        return  # nothing left out: no need to read the (spooled) changes
    dropped = sorted({c.section for c in cmp.changes if c.section in skipped})
    if dropped:
        flag = "--primary-only" if options.primary_only else "--skip-snapshots"
        raise UsageError(
            f"{flag} would leave out changed sections: {', '.join(dropped)}",
            "a state moves with all its files; rerun without " + flag,
        )
