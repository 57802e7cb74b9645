"""The sync commands as the porcelain, demos and drills call them: diff, pull, push, merge
and status of one dataset (or, in file mode, one file) against a remote.

Every transfer is between recorded states. Before a pull or push both sides record their
working state, so nothing written on either side is ever silently lost; ``diff`` and
``--dry-run`` compute both working trees the same way without committing. With L the
local head and R the remote head: L == R is ``NO-OP``; a pull fast-forwards L to R (or
bootstraps), a push R to L; otherwise the rules refuse, naming the merge base and heads.

This module only routes: a dataset goes to the operation modules, a single file to
:mod:`usr.sync.filemode`. The house below it (see docs/architecture.md):

* :mod:`usr.sync.plan` decides (both heads, the relation, what would move);
* :mod:`usr.sync.pull`, :mod:`usr.sync.push` carry a plan out (a diff is the plan alone);
* :mod:`usr.sync.merging` merges diverged sides, asking the planner's modules;
* :mod:`usr.sync.rules`, :mod:`usr.sync.verify` refuse and check;
* :mod:`usr.sync.auditfile` writes the audit document built by :mod:`usr.sync.audit`.

Public API::

    target = resolve_target(root, "densegen/my_dataset", SyncOptions())
    doc = diff(target, "bu-scc", SyncOptions(), audit_json_out=None)
    doc = pull(target, "bu-scc", SyncOptions(confirm=lambda summary: True))
    doc = push(target, "bu-scc", SyncOptions(dry_run=True))

each returning the audit document ``{"usr_output_version", "data", "changes"}`` (also
written to ``audit_json_out``, on failure too, before the error propagates).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from usr.errors import UsageError
from usr.sync import filemode, merging
from usr.sync import pull as pull_op
from usr.sync import push as push_op
from usr.sync.audit import AuditRun
from usr.sync.auditfile import dump_audit, run_audited, write_audit
from usr.sync.history import MAIN_REF, TRACKING_REF, tracking_ref
from usr.sync.options import SyncOptions
from usr.sync.plan import preview
from usr.sync.rules import check_events_chain, check_partial
from usr.sync.status import (
    last_seen_status,
    remote_log,
    remote_status,
    status_text,
    upstream,
)
from usr.sync.target import Target, resolve_target
from usr.sync.verify import AUTO_HASH_LIMIT, verify_working


def diff(
    target: Target,
    remote: str,
    options: SyncOptions | None = None,
    audit_json_out: Path | None = None,
) -> dict[str, Any]:
    """Compare both working trees; record nothing, move no branch on either side."""
    return _operate("diff", target, remote, options, audit_json_out, None)


def pull(
    target: Target,
    remote: str,
    options: SyncOptions | None = None,
    audit_json_out: Path | None = None,
) -> dict[str, Any]:
    """Fast-forward local to the remote head (bootstrap if local is absent)."""
    return _operate("pull", target, remote, options, audit_json_out, pull_op.carry_out)


def push(
    target: Target,
    remote: str,
    options: SyncOptions | None = None,
    audit_json_out: Path | None = None,
) -> dict[str, Any]:
    """Fast-forward the remote to the local head (bootstrap if the remote is absent)."""
    return _operate("push", target, remote, options, audit_json_out, push_op.carry_out)


def _operate(
    action: str,
    target: Target,
    remote: str,
    options: SyncOptions | None,
    audit_json_out: Path | None,
    carry_out: Callable[[AuditRun, Target, str, SyncOptions], str] | None,
) -> dict[str, Any]:
    """Route one command: a single file to file mode; a dataset to the planner's preview
    (a diff, or any dry run) or to the operation that carries the plan out, under its
    audit document."""
    options = options or SyncOptions()
    if target.kind == "file":
        return getattr(filemode, action)(target, remote, options, audit_json_out)

    def body(run: AuditRun) -> str:
        if carry_out is None or options.dry_run:
            preview(run, target, remote, options, merging.preview)
            return "DIFF-ONLY" if carry_out is None else "DRY-RUN"
        return carry_out(run, target, remote, options)

    return run_audited(action, target, remote, options, audit_json_out, body)


def merge(
    target: Target, remote: str, options: SyncOptions, audit_json_out: Path | None = None
) -> dict[str, Any]:
    """``usr merge DS REMOTE`` and ``usr pull DS REMOTE --merge``: fast-forward when the
    remote is ahead, merge when diverged, nothing when local holds the remote head.

    A dry run of the merge comes first (working trees, nothing recorded): when it finds
    conflicts the command stops there, so a conflict leaves even ``refs/heads/main`` of
    both sides where they were (a real run would record unrecorded work first). Returns
    the pull audit document, whose ``data.merge`` is the merge report.
    """
    if target.kind != "dataset":
        raise UsageError("merge works on datasets, not single files (file mode)")
    options.merge = True
    if options.dry_run:
        return pull(target, remote, options, audit_json_out)
    first = pull(target, remote, replace(options, dry_run=True, confirm=None))
    rep = first["data"].get("merge")
    if rep is not None and not rep["mergeable"]:
        from usr.merge import MergeConflict

        exc = MergeConflict(rep, first["data"])
        data = dict(first["data"], transfer_state="FAILED", error=exc.to_json())
        write_audit(audit_json_out, dict(first, data=data))
        raise exc
    return pull(target, remote, options, audit_json_out)


__all__ = [
    "AUTO_HASH_LIMIT",
    "MAIN_REF",
    "TRACKING_REF",
    "SyncOptions",
    "Target",
    "check_events_chain",
    "check_partial",
    "diff",
    "dump_audit",
    "last_seen_status",
    "merge",
    "pull",
    "push",
    "remote_log",
    "remote_status",
    "resolve_target",
    "status_text",
    "tracking_ref",
    "upstream",
    "verify_working",
    "write_audit",
]
