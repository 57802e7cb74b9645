"""The sync audit: what differs between a local dataset and its remote, per section.

This is the ONE place the audit is computed. ``usr diff``, ``usr pull``, ``usr push``, their
``--audit-json-out`` files and their text summaries all come from :func:`build` over the
store's exact tree comparison (``Store.diff`` results), so the JSON and the text can never
disagree. Nothing here touches disk or the network: the engine gathers the inputs.

Vocabulary (also in docs/cli.md, "Sync: diff, pull, push"):

* ``local_only`` / ``remote_only`` (per file section): paths whose *current content* exists
  only on that side. With a merge base, a differing path is ``local_only`` when the local
  side changed it since the base (added, modified or deleted locally) and ``remote_only``
  when the remote side did; a path both sides changed is in both lists. Without a merge
  base (bootstrap, unrelated histories) a path present on one side only is listed for that
  side and a path present on both sides with different content is in both lists.
* ``files[].status`` is written in the direction of the action: for ``pull`` and ``diff``
  old = local, new = remote (what a pull would apply locally); for ``push`` old = remote,
  new = local (what a push would apply remotely).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

from usr import OUTPUT_VERSION
from usr.events import redact_text
from usr.layout import SECTIONS
from usr.store import FileChange
from usr.sync.auditrows import Spool, SpooledList
from usr.sync.changelist import by_path

ACTIONS = ("diff", "pull", "push")
TRANSFER_STATES = ("DIFF-ONLY", "DRY-RUN", "TRANSFERRED", "NO-OP", "FAILED")
RELATIONS = (
    "equal",
    "local-ahead",
    "remote-ahead",
    "diverged",
    "remote-missing",
    "local-missing",
    "both-missing",
)

#: Audit key of each section (the runbooks' jq queries read these names).
SECTION_KEYS: dict[str, str] = {
    "primary": "primary",
    "meta": "meta",
    "events": ".events.log",
    "snapshots": "_snapshots",
    "derived": "_derived",
    "auxiliary": "_auxiliary",
}
#: Label of each section in text output.
SECTION_LABELS: dict[str, str] = {
    "primary": "Primary",
    "meta": "meta.md",
    "events": ".events.log",
    "snapshots": "_snapshots",
    "derived": "_derived",
    "auxiliary": "_auxiliary",
}
_STATUS_WORDS = {"A": "added", "M": "modified", "D": "deleted"}
_FILE_SECTIONS = ("snapshots", "derived", "auxiliary")
_SINGLE_FILE_SECTIONS = ("primary", "meta")


@dataclass(frozen=True)
class VerifyProfile:
    """How strictly a transfer is verified; printed in every audit.

    ``primary``: hash|size|parquet|auto (the ``--verify`` level for ``records.parquet`` and
    the post-checkout re-check); ``sidecars``: strict|off (``meta.md``, ``.events.log``,
    ``_snapshots``); ``content_hashes``: on|off (``_derived`` and ``_auxiliary`` checked by
    blake3 rather than size). File mode has one file and no sections: :data:`FILE_MODE`.
    """

    primary: str = "hash"
    sidecars: str = "strict"
    content_hashes: str = "on"

    def to_json(self) -> dict[str, str]:
        return {
            "primary": self.primary,
            "sidecars": self.sidecars,
            "content_hashes": self.content_hashes,
        }


#: The profile of a file-mode transfer, as it is: its one file checked by blake3 (every
#: piece, the whole file, and again after landing); no sidecars, no content sections.
FILE_MODE = VerifyProfile(primary="hash", sidecars="none", content_hashes="none")


@dataclass
class Side:
    """One side of the comparison, as the engine observed it.

    ``files`` is the listing of the compared tree (``Store.diff(None, tree)``), which is the
    working tree for ``diff``/``--dry-run`` and the recorded head after recording. With
    ``counts`` (files per section) it need only hold the single files the audit names
    (``records.parquet``, ``meta.md``, ``.events.log``): a full listing is an object per
    file, held for the whole command. ``dirty`` says the working files differ from
    ``head`` (a state not yet recorded).
    """

    exists: bool
    head: str | None = None
    tree: str | None = None
    dirty: bool = False
    states: int = 0
    events_lines: int = 0
    files: list[FileChange] = field(default_factory=list)
    counts: dict[str, int] | None = None

    def count(self, section: str) -> int:
        """Files of ``section`` in the compared tree."""
        if self.counts is not None:
            return self.counts.get(section, 0)
        return _count(self.files, section)


@dataclass
class Comparison:
    """Everything the audit is computed from; gathered by ``usr.sync.engine``."""

    dataset: str
    remote: str
    local: Side
    remote_side: Side
    relation: str
    merge_base: str | None = None
    #: ``Store.diff(local_tree, remote_tree)``: old = local, new = remote (spooled, a
    #: ``usr.sync.changelist.ChangeList``, from the planner).
    changes: Sequence[FileChange] = field(default_factory=list)
    #: Paths changed since the merge base on each side (None when there is no base).
    local_changed: set[str] | None = None
    remote_changed: set[str] | None = None
    #: Remote states the local history lacks, and local states the remote lacks.
    newer_than_local: int = 0
    newer_than_remote: int = 0
    #: ``.events.log`` line relation: equal|local-extends|remote-extends|diverged|absent.
    events_relation: str = "equal"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _side_of_change(path: str, status: str, cmp: Comparison) -> tuple[bool, bool]:
    """(local_only, remote_only) for one differing path; see the module docstring."""
    if cmp.local_changed is not None and cmp.remote_changed is not None:
        loc = path in cmp.local_changed
        rem = path in cmp.remote_changed
        if loc or rem:
            return loc, rem
    # No base (or neither side's history explains it): decide by presence.
    if status == "D":  # present locally only
        return True, False
    if status == "A":  # present remotely only
        return False, True
    return True, True


def _file_entry(change: FileChange, action: str, loc: bool, rem: bool) -> dict[str, Any]:
    if action == "push":
        status = {"A": "D", "D": "A"}.get(change.status, change.status)
        old_id, new_id = change.new_id, change.old_id
        old_size, new_size = change.new_size, change.old_size
    else:
        status = change.status
        old_id, new_id = change.old_id, change.new_id
        old_size, new_size = change.old_size, change.new_size
    changed_by = "both" if loc and rem else "local" if loc else "remote"
    return vars(_FileEntry(change, _STATUS_WORDS.get(status, status), old_id, new_id,
                           old_size, new_size, changed_by))  # fmt: skip


def _row_entry(action: str, row: list[Any]) -> dict[str, Any]:
    """The ``files`` entry of one spooled row (a FileChange's fields, then loc and rem)."""
    return _file_entry(FileChange(*row[:7]), action, row[7], row[8])


class _FileEntry:
    """Builds one ``files`` entry of the audit as an instance's attribute dict: every such
    dict shares one key table (CPython's key-sharing dicts, PEP 412), ~220 bytes a file
    where a dict literal of its 12 keys takes ~500. A bootstrap lists every file; the dict
    is a plain ``dict`` to every reader and to JSON, with the keys in this order."""

    def __init__(
        self,
        change: FileChange,
        status: str,
        old_id: str | None,
        new_id: str | None,
        old_size: int | None,
        new_size: int | None,
        changed_by: str,
    ) -> None:
        self.path = change.path
        self.section = change.section
        self.status = status
        self.old_id = old_id
        self.new_id = new_id
        self.old_size = old_size
        self.new_size = new_size
        self.local_id = change.old_id
        self.remote_id = change.new_id
        self.local_size = change.old_size
        self.remote_size = change.new_size
        self.changed_by = changed_by


def _count(files: Iterable[FileChange], section: str) -> int:
    return sum(1 for f in files if f.section == section)


def _single(files: list[FileChange], section: str) -> FileChange | None:
    for f in files:
        if f.section == section:
            return f
    return None


def _transfer_estimate(cmp: Comparison, action: str) -> dict[str, Any]:
    """Files and bytes a transfer in ``action``'s direction would write on the receiver.

    An upper bound from tree entry sizes; the engine replaces ``bytes``/``objects`` with
    the negotiated figures (chunks and objects the receiver really lacks) when it has them.
    """
    pull_dir = action != "push"
    n = 0
    size = 0
    for c in cmp.changes:
        target_size = c.new_size if pull_dir else c.old_size
        if target_size is None:
            continue
        n += 1
        size += target_size
    return {
        "direction": "remote-to-local" if pull_dir else "local-to-remote",
        "files": n,
        "bytes": size,
        "objects": None,
        "chunks": None,
        "basis": "file-sizes",
    }


def _single_file_section(
    cmp: Comparison,
    section: str,
    changed: dict[str, bool],
    per_section: dict[str, dict[str, SpooledList]],
) -> dict[str, Any]:
    """The audit entry of a one-file section (primary, meta): who changed it, both ids."""
    lf = _single(cmp.local.files, section)
    rf = _single(cmp.remote_side.files, section)
    loc_only = bool(per_section[section]["local_only"])
    rem_only = bool(per_section[section]["remote_only"])
    return {
        "changed": changed[section],
        "changed_by": (
            None
            if not changed[section]
            else "both"
            if loc_only and rem_only
            else "local"
            if loc_only
            else "remote"
        ),
        "local_present": lf is not None,
        "remote_present": rf is not None,
        "local_id": lf.new_id if lf else None,
        "remote_id": rf.new_id if rf else None,
        "local_size": lf.new_size if lf else None,
        "remote_size": rf.new_size if rf else None,
    }


def _file_section(
    cmp: Comparison,
    section: str,
    changed: dict[str, bool],
    per_section: dict[str, dict[str, SpooledList]],
) -> dict[str, Any]:
    """The audit entry of a many-file section: counts and the paths only one side has."""
    entry: dict[str, Any] = {
        "changed": changed[section],
        "local_files": cmp.local.count(section),
        "remote_files": cmp.remote_side.count(section),
        "local_only": per_section[section]["local_only"],
        "remote_only": per_section[section]["remote_only"],
    }
    if section == "snapshots":
        entry.update(
            remote_count=cmp.remote_side.states,
            local_count=cmp.local.states,
            newer_than_local=cmp.newer_than_local,
            newer_than_remote=cmp.newer_than_remote,
        )
    return entry


def build(cmp: Comparison, action: str, verify: VerifyProfile) -> dict[str, Any]:
    """The audit ``data`` dict (without timing/transfer_state; see :class:`AuditRun`)."""
    if action not in ACTIONS:
        raise ValueError(f"unknown sync action {action!r}")
    # Spooled as packed rows, not dicts: a bootstrap lists every file (see auditrows).
    spools = {s: {"local_only": Spool(), "remote_only": Spool()} for s in SECTIONS}
    rows = Spool()
    changed = {s: False for s in SECTIONS}
    for c in by_path(cmp.changes):  # in order already: no list of every change
        loc, rem = _side_of_change(c.path, c.status, cmp)
        changed[c.section] = True
        if loc:
            spools[c.section]["local_only"].append(c.path)
        if rem:
            spools[c.section]["remote_only"].append(c.path)
        rows.append((c.path, c.status, c.section, c.old_id, c.new_id, c.old_size, c.new_size,
                     loc, rem))  # fmt: skip
    per_section = {s: {k: SpooledList(v) for k, v in two.items()} for s, two in spools.items()}
    files = SpooledList(rows, partial(_row_entry, action))
    if cmp.newer_than_local or cmp.newer_than_remote:
        changed["snapshots"] = True

    data: dict[str, Any] = {
        "action": action,
        "dataset": cmp.dataset,
        "remote": cmp.remote,
        "relation": cmp.relation,
        "heads": {"local": cmp.local.head, "remote": cmp.remote_side.head},
        "merge_base": cmp.merge_base,
        "trees": {"local": cmp.local.tree, "remote": cmp.remote_side.tree},
        "exists": {"local": cmp.local.exists, "remote": cmp.remote_side.exists},
        "unrecorded": {"local": cmp.local.dirty, "remote": cmp.remote_side.dirty},
        "verify": verify.to_json(),
    }
    for section in _SINGLE_FILE_SECTIONS:
        data[SECTION_KEYS[section]] = _single_file_section(cmp, section, changed, per_section)
    data[".events.log"] = {
        "changed": changed["events"],
        "local": cmp.local.events_lines,
        "remote": cmp.remote_side.events_lines,
        "relation": cmp.events_relation,
        "append_only": cmp.events_relation != "diverged",
    }
    for section in _FILE_SECTIONS:
        data[SECTION_KEYS[section]] = _file_section(cmp, section, changed, per_section)
    flags = dict(changed)
    flags["any"] = any(changed.values())
    data["changes"] = flags
    data["status"] = "CHANGES" if flags["any"] or cmp.relation != "equal" else "up-to-date"
    data["files"] = files
    data["transfer"] = _transfer_estimate(cmp, action)
    return data


class AuditRun:
    """Timing, observed bytes and the final state of one diff/pull/push.

    Created when the command starts (so a failure before any comparison still yields an
    audit file naming the dataset, remote, times and error), filled as the engine learns.
    """

    def __init__(self, action: str, dataset: str, remote: str, verify: VerifyProfile) -> None:
        self.action = action
        self.dataset = redact_text(dataset)  # both are echoed input (a pasted URL, say)
        self.remote = redact_text(remote)
        self.verify = verify
        self.started_at = now_iso()
        self._t0 = time.monotonic()
        self.data: dict[str, Any] | None = None
        self.bytes_sent = 0
        self.bytes_received = 0
        self.options: dict[str, Any] = {}
        self.notes: list[str] = []

    def set_comparison(self, cmp: Comparison) -> dict[str, Any]:
        self.data = build(cmp, self.action, self.verify)
        return self.data

    def finish(self, state: str, error: Exception | None = None) -> dict[str, Any]:
        """The full audit document ``{"usr_output_version", "data", "changes"}``."""
        if state not in TRANSFER_STATES:
            raise ValueError(f"unknown transfer state {state!r}")
        data = dict(self.data) if self.data is not None else _empty_data(self)
        data["transfer_state"] = state
        data["started_at"] = self.started_at
        data["finished_at"] = now_iso()
        data["duration"] = round(time.monotonic() - self._t0, 6)
        data["bytes_moved"] = {
            "sent": self.bytes_sent,
            "received": self.bytes_received,
            "total": self.bytes_sent + self.bytes_received,
        }
        data["options"] = dict(self.options)
        if self.notes:
            data["notes"] = list(self.notes)
        if error is not None:
            to_json = getattr(error, "to_json", None)
            data["error"] = (
                to_json()
                if callable(to_json)
                else {"kind": "internal", "exit_code": 1, "message": str(error), "hint": None}
            )
        return {
            "usr_output_version": OUTPUT_VERSION,
            "data": data,
            "changes": dict(data["changes"]),
        }


def _empty_data(run: AuditRun) -> dict[str, Any]:
    """The data of an audit that failed before both sides were compared."""
    data: dict[str, Any] = {
        "action": run.action,
        "dataset": run.dataset,
        "remote": run.remote,
        "relation": None,
        "heads": {"local": None, "remote": None},
        "merge_base": None,
        "verify": run.verify.to_json(),
        "primary": {"changed": False},
        "meta": {"changed": False},
        ".events.log": {"changed": False, "local": None, "remote": None},
        "_snapshots": {"changed": False, "remote_count": None, "newer_than_local": None},
        "files": [],
        "status": "unknown",
    }
    for section in ("derived", "auxiliary"):
        data[SECTION_KEYS[section]] = {
            "changed": False,
            "local_files": None,
            "remote_files": None,
            "local_only": [],
            "remote_only": [],
        }
    flags = {s: False for s in SECTIONS}
    flags["any"] = False
    data["changes"] = flags
    return data


# ---------------------------------------------------------------------------- text


def _short(oid: str | None) -> str:
    return oid[:12] if oid else "(none)"


def _size(n: int | None) -> str:
    if n is None:
        return "absent"
    step = 1024.0
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < step or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= step
    return f"{n} B"  # pragma: no cover


def _word(changed: bool) -> str:
    return "changed" if changed else "unchanged"


def section_lines(data: dict[str, Any]) -> list[str]:
    """One line per section, in the order of ``layout.SECTIONS``."""
    lines = []
    for section in SECTIONS:
        key = SECTION_KEYS[section]
        label = SECTION_LABELS[section]
        s = data.get(key, {})
        changed = bool(s.get("changed"))
        if section in _SINGLE_FILE_SECTIONS:
            detail = f"local {_size(s.get('local_size'))}, remote {_size(s.get('remote_size'))}"
            if changed and s.get("changed_by"):
                detail += f"; changed by {s['changed_by']}"
        elif section == "events":
            detail = f"local {s.get('local')} lines, remote {s.get('remote')} lines"
            if s.get("relation") not in (None, "equal"):
                detail += f"; {s['relation']}"
        else:
            detail = (
                f"local {s.get('local_files')} files, remote {s.get('remote_files')} files; "
                f"local-only {len(s.get('local_only', []))}, "
                f"remote-only {len(s.get('remote_only', []))}"
            )
            if section == "snapshots":
                detail += (
                    f"; remote states {s.get('remote_count')}, "
                    f"newer than local {s.get('newer_than_local')}"
                )
        lines.append(f"{label + ':':<13} {_word(changed):<9} ({detail})")
    return lines


def header_lines(data: dict[str, Any]) -> list[str]:
    heads = data.get("heads") or {}
    unrec = data.get("unrecorded") or {}
    local = _short(heads.get("local")) + (" + unrecorded changes" if unrec.get("local") else "")
    remote = _short(heads.get("remote")) + (" + unrecorded changes" if unrec.get("remote") else "")
    relation = data.get("relation") or "unknown"
    if data.get("merge_base") and relation == "diverged":
        relation += f" (merge base {_short(data['merge_base'])})"
    lines = [
        f"Dataset:     {data.get('dataset')}",
        f"Remote:      {data.get('remote')}",
        f"Local head:  {local}",
        f"Remote head: {remote}",
        f"Relation:    {relation}",
    ]
    if data.get("mergeable") is not None:  # diverged: what a merge would do (usr.merge)
        conflicts = data.get("conflicts") or []
        paths = ", ".join(c["path"] for c in conflicts[:3]) + (", ..." if conflicts[3:] else "")
        why = "yes" if data["mergeable"] else f"no ({len(conflicts)} conflicts: {paths})"
        lines.append(f"Mergeable:   {why}")
    return lines


#: How many changed paths the text of a diff lists before it counts the rest.
PATHS_SHOWN = 20


def _plain(text: str, _kind: str) -> str:
    return text


def render_text(
    doc: dict[str, Any],
    paths: int | None = PATHS_SHOWN,
    style: Callable[[str, str], str] = _plain,
) -> str:
    """The human summary of an audit document (``diff`` or a pull/push audit).

    A diff lists the changed paths, the first ``paths`` of them (None: all) and a count of
    the rest (git's ``--stat``, rsync's ``-i``); sizes are in human units, the exact
    numbers are in the JSON. ``style(text, kind)`` may colour a path's status (``added``,
    ``deleted``, ``modified``) and the status (``changes``, ``up-to-date``)."""
    data = doc["data"]
    action = data["action"]
    lines: list[str] = []
    if action != "diff":
        lines.append(f"{action.upper()} audit: {data['transfer_state']}")
    lines.extend(header_lines(data))
    lines.extend(section_lines(data))
    if action == "diff":
        lines.extend(path_lines(data, paths, style))
    if action != "diff":
        moved = data.get("bytes_moved", {})
        lines.append(
            f"Moved:       {_size(moved.get('total', 0))} "
            f"(sent {_size(moved.get('sent', 0))}, received {_size(moved.get('received', 0))}) "
            f"in {data.get('duration', 0):.2f}s"
        )
        v = data.get("verify", {})
        lines.append(
            f"Verify:      primary {v.get('primary')}, sidecars {v.get('sidecars')}, "
            f"content hashes {v.get('content_hashes')}"
        )
    if data.get("records") is not None:  # diff --rows: old = local, new = remote
        from usr.record_diff import render_text as record_lines

        lines.extend(record_lines(data["records"]))
    for note in data.get("notes", []):
        lines.append(f"Note:        {note}")
    if action == "diff":
        status = data.get("status", "unknown")
        lines.append(f"Status: {style(status, status.lower())}")
    return "\n".join(lines)


def path_lines(
    data: dict[str, Any],
    limit: int | None = PATHS_SHOWN,
    style: Callable[[str, str], str] = _plain,
) -> list[str]:
    """One line per changed path: who changed it, how, the path (as ``local`` and ``remote``
    see it: ``added`` means the remote has it and local does not)."""
    files = data.get("files") or []
    if not files:
        return []
    shown = files if limit is None else files[:limit]
    lines = [f"Paths:       {len(files)} changed (by, status, path)"]
    for f in shown:
        status = str(f.get("status", "?"))
        by = f.get("changed_by") or "?"
        lines.append(f"  {by:<7}{style(f'{status:<9}', status)}{f.get('path')}")
    if len(files) > len(shown):
        lines.append(f"  ... and {len(files) - len(shown)} more (-v lists every one)")
    return lines
