"""``usr merge DS REMOTE``: merge diverged histories of a dataset (three-way), and the graph
that ``usr log --graph`` draws so merges are visible.

The command is ``usr pull DS REMOTE --merge`` with a merge-centred report: it fast-forwards
when the remote is ahead, does nothing when local already holds the remote head, and merges
when both sides have states the other lacks. Every decision lives in :mod:`usr.merge`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from porcelain.options import (
    Settings,
    envelope,
    format_option,
    pass_settings,
    remotes_config_option,
    yes_option,
)
from porcelain.sync import confirmer, no_validate_option
from usr import merge as merge_mod
from usr.errors import UsageError
from usr.sync import audit as audit_mod
from usr.sync import engine
from usr.sync.engine import SyncOptions, resolve_target

_WORDS = {
    merge_mod.TAKE_LOCAL: "keep local",
    merge_mod.TAKE_REMOTE: "take remote",
    merge_mod.SAME_BOTH: "same on both",
    merge_mod.EVENTS_APPEND: "append lines",
    merge_mod.RECORDS_UNION: "union rows",
    merge_mod.REGISTRY_UNION: "union names",
}


def _short(oid: str | None) -> str:
    return oid[:12] if oid else "(none)"


def report_lines(data: dict[str, Any]) -> list[str]:
    """Text for people: the heads, then one line per path the merge decides, then every
    conflict with why (or what comes next)."""
    rep = data.get("merge")
    if not rep:
        return []
    lines = [f"Merge base:  {_short(rep.get('merge_base'))}"]
    for f in rep.get("files", []):
        word = _WORDS.get(f["resolution"], f["resolution"])
        detail = f"  ({f['detail']})" if f.get("detail") else ""
        lines.append(f"  {word:<13} {f['path']}{detail}")
    for c in rep.get("conflicts", []):
        lines.append(f"  CONFLICT      {c['path'] or '(history)'}: {c['why']} [{c['kind']}]")
    if rep.get("conflicts"):
        lines.append(f"Not mergeable: {len(rep['conflicts'])} conflict(s); nothing was changed.")
    elif rep.get("mergeable") is None:
        lines.append(f"Mergeable:   unknown ({rep.get('error', 'not computed')})")
    elif rep.get("commit"):
        lines.append(f"Merged:      state {_short(rep['commit'])} (tree {_short(rep['tree'])})")
        lines.append(f"Next:        usr push {data.get('dataset')} {data.get('remote')}")
    else:
        lines.append(f"Mergeable:   yes (tree {_short(rep.get('tree'))})")
    return lines


def render(doc_data: dict[str, Any]) -> str:
    """The whole text report of ``usr merge``: audit header, merge decisions, notes."""
    state = doc_data.get("transfer_state", "")
    lines = [f"MERGE: {state}"] + audit_mod.header_lines(doc_data) + report_lines(doc_data)
    lines += [f"Note:        {n}" for n in doc_data.get("notes", [])]
    return "\n".join(lines)


def _emit(fmt: str, data: dict[str, Any]) -> None:
    if fmt == "json":
        click.echo(json.dumps(envelope(data), indent=2, sort_keys=True, default=str))
    else:
        click.echo(render(data))


@click.command("merge")
@click.argument("dataset", metavar="DATASET")
@click.argument("remote", metavar="REMOTE")
@remotes_config_option
@yes_option
@click.option("--dry-run", is_flag=True, help="Say what the merge would do; change nothing.")
@click.option(
    "--audit-json-out",
    type=click.Path(dir_okay=False),
    default=None,
    metavar="PATH",
    help="Also write the audit JSON (with its merge report) here, on failure too.",
)
@click.option(
    "--lock-timeout",
    type=float,
    default=None,
    metavar="SECONDS",
    help="Longest wait for a dataset lock (else $USR_LOCK_TIMEOUT, else 30).",
)
@no_validate_option
@format_option
@pass_settings
def merge_command(
    settings: Settings,
    dataset: str,
    remote: str,
    remotes_config: str | None,
    yes: bool,
    dry_run: bool,
    audit_json_out: str | None,
    lock_timeout: float | None,
    no_validate: bool,
    fmt: str,
) -> None:
    """Merge REMOTE's states of DATASET with the local ones (three-way, from their base).

    Changes on one side are taken; overlay parts added on both sides are kept;
    .events.log appended on both sides becomes the remote log then the local-only lines;
    records appended on both sides become the union of rows by id; the frozen registry
    copies become the union of namespaces (one with two contracts conflicts). Anything
    else is a conflict. The merge is dry-run first: on conflicts every conflicting path is reported
    with why and nothing changes on either side (exit 8). Otherwise both sides record
    their working state, the merge is recorded here with parents [local, remote] and
    checked out (staged, verified); 'usr push' then fast-forwards REMOTE. Not diverged:
    fast-forward when behind, nothing to do when ahead.
    """

    if lock_timeout is not None and lock_timeout <= 0:
        raise UsageError("--lock-timeout must be a positive number of seconds")
    options = SyncOptions(
        dry_run=dry_run,
        remotes_config=remotes_config,
        lock_timeout=lock_timeout,
        no_validate=no_validate,
    )
    if not dry_run:
        options.confirm = confirmer(yes, "merge")
    target = resolve_target(settings.root, dataset, options)
    if target.kind != "dataset":
        raise UsageError(f"{dataset!r} is a file: merge works on datasets only")
    out = Path(audit_json_out) if audit_json_out else None
    try:
        doc = engine.merge(target, remote, options, out)
    except merge_mod.MergeConflict as exc:
        data = dict(exc.data or {"merge": exc.report})
        data.update(transfer_state="FAILED", error=exc.to_json())
        _emit(fmt, data)
        raise
    _emit(fmt, doc["data"])


# ----------------------------------------------------------------------------- log --graph


def graph_rows(entries: list[tuple[str, tuple[str, ...]]]) -> list[tuple[str, str | None]]:
    """Lanes for ``usr log --graph``: ``(prefix, commit id)`` rows, newest first, with
    connector rows (commit None) where a merge opens a lane (``\\``) or lanes join (``/``).

    ``entries`` are ``(id, parents)`` in topological order, newest first (``Store.log``).
    One lane per line of history being followed; a merge's first parent continues its
    lane, further parents open lanes to its right.
    """
    lanes: list[str] = []
    rows: list[tuple[str, str | None]] = []
    for cid, parents in entries:
        hits = [i for i, lane in enumerate(lanes) if lane == cid]
        if not hits:
            lanes.append(cid)
            hits = [len(lanes) - 1]
        idx = hits[0]
        if len(hits) > 1:
            joined = set(hits[1:])
            rows.append((" ".join("/" if i in joined else "|" for i in range(len(lanes))), None))
            lanes = [lane for i, lane in enumerate(lanes) if i not in joined]
        rows.append((" ".join("*" if i == idx else "|" for i in range(len(lanes))), cid))
        if not parents:
            del lanes[idx]
            continue
        lanes[idx] = parents[0]
        for n, parent in enumerate(p for p in parents[1:] if p not in lanes):
            lanes.insert(idx + 1 + n, parent)
            marks = ["|"] * len(lanes)
            marks[idx + 1 + n] = "\\"
            rows.append((" ".join(marks), None))
    return rows


COMMANDS: list[click.Command] = [merge_command]
