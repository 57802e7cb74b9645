"""What a diff, pull or push was asked to do: the validated flags of one sync command.

Owns :class:`SyncOptions` (the flags, the verify profile they give, the confirmation asked
before anything is overwritten). May import :mod:`usr.errors` and :mod:`usr.sync.audit`
only: every other sync module reads its options from here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from usr.errors import UsageError
from usr.sync import audit as audit_mod
from usr.sync.audit import VerifyProfile


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
    #: ``--no-validate``: let a state that fails the gate (usr.sync.gate) through; the
    #: audit records it.
    no_validate: bool = False
    #: ``diff --rows``: add the record diff of both working trees (``data.records``,
    #: usr.record_diff), listing at most ``max_ids`` ids.
    rows: bool = False
    max_ids: int = 20

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


def confirm(options: SyncOptions, action: str, data: dict[str, Any]) -> None:
    """Ask (through the caller's ``confirm``) before anything is overwritten."""
    if options.confirm is None:
        return
    summary = "\n".join(audit_mod.header_lines(data) + audit_mod.section_lines(data))
    if not options.confirm(summary):
        raise UsageError(f"{action} cancelled; nothing was changed")
