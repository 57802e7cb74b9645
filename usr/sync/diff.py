"""Carrying out ``usr diff``: the planner's preview of both working trees, nothing recorded.

Owns :func:`diff` for datasets (file mode is :mod:`usr.sync.filemode`). A diff never
changes working files or ``refs/heads/*`` on either side; it may cache fetched trees and
move the remote-tracking ref, as ``git fetch`` does. May import the planner,
:mod:`usr.sync.merging` (the merge preview of diverged sides) and the audit writer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from usr.sync import merging
from usr.sync.audit import AuditRun
from usr.sync.auditfile import run_audited
from usr.sync.options import SyncOptions
from usr.sync.plan import preview
from usr.sync.target import Target


def diff(
    target: Target,
    remote: str,
    options: SyncOptions | None = None,
    audit_json_out: Path | None = None,
) -> dict[str, Any]:
    """Compare both working trees of a dataset; record nothing, move no branch."""
    options = options or SyncOptions()

    def body(run: AuditRun) -> str:
        preview(run, target, remote, options, merging.preview)
        return "DIFF-ONLY"

    return run_audited("diff", target, remote, options, audit_json_out, body)
