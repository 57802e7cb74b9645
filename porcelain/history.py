"""History porcelain: snapshot, status, log, show, checkout, gc, fsck.

Each command is a thin layer over :class:`usr.store.Store`; what changed is always computed
by the store's one tree comparison, so these agree with ``diff-tree`` and the sync audit.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

import click

from porcelain.options import (
    Later,
    complete_dataset,
    emit,
    emit_stream,
    format_option,
    max_ids_option,
    output_level,
    paint,
    pass_settings,
    remotes_config_option,
    stderr_is_terminal,
)
from porcelain.targets import dataset_from_cwd, resolve_dataset
from usr.errors import VerifyError
from usr.layout import RECORDS_FILE, SECTIONS
from usr.locks import events_lock
from usr.store import FileChange, LogEntry, Store
from usr.store.parquet_footer import num_rows

_STATUS_WORD = {"A": "added", "M": "modified", "D": "deleted"}


def _here_if_none(ctx: click.Context, param: click.Parameter, value: str | None) -> str:
    """No DATASET: the dataset the working directory is in (git finds its repository so)."""
    return value if value is not None else str(dataset_from_cwd())


#: DATASET, optional for the history commands: inside a dataset directory it is that one.
here_or_dataset = click.argument(
    "dataset",
    metavar="[DATASET]",
    required=False,
    callback=_here_if_none,
    shell_complete=complete_dataset,
)


def open_store(settings, dataset: str) -> Store:
    """The store of DATASET (an id under --root, or a directory), adopting a plain dir.

    When stderr is a terminal, hashing large files shows progress there.
    """
    store = Store.open(resolve_dataset(settings, dataset), create=True)
    if stderr_is_terminal():
        store.progress = _terminal_progress()
    return store


def _terminal_progress():
    last = [0.0]

    def show(path: str, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - last[0] < 0.2:
            return
        last[0] = now
        pct = 100 * done // total if total else 100
        end = "\n" if done >= total else ""
        click.echo(
            f"\rhashing {path}: {_size(done)} / {_size(total)} ({pct}%)\x1b[K{end}",
            err=True,
            nl=False,
        )

    return show


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _when(entry: LogEntry) -> str:
    stamp = time.gmtime(entry.time + entry.offset * 60)
    sign = "+" if entry.offset >= 0 else "-"
    hh, mm = divmod(abs(entry.offset), 60)
    return time.strftime("%Y-%m-%d %H:%M:%S", stamp) + f" {sign}{hh:02d}{mm:02d}"


def section_summary(changes: Iterable[FileChange]) -> dict[str, dict]:
    """Per section: changed flag and counts by status (every section listed)."""
    report = ChangeReport()
    for c in changes:
        report.add(c)
    return report.sections()


def row_delta(store: Store, changes: list[FileChange]) -> dict | None:
    """Row counts of records.parquet before and after, from the Parquet footers only."""
    for c in changes:
        if c.path == RECORDS_FILE:
            old = num_rows(store, c.old_id) if c.old_id else 0
            new = num_rows(store, c.new_id) if c.new_id else 0
            delta = new - old if old is not None and new is not None else None
            return {"rows_before": old, "rows_after": new, "rows_delta": delta}
    return None


#: Past this many changed files in a section, status and snapshot show directories with
#: counts (git collapses an untracked directory); ``-v`` lists every file.
FILES_SHOWN = 20


def _changes_text(changes: Iterable[FileChange], indent: str = "  ") -> list[str]:
    report = ChangeReport()
    for c in changes:
        report.add(c)
    return report.text(indent)


class _Section:
    """One section's changes as a report needs them, whatever their number: the counts,
    the first lines (every line with ``-v``) and the first directories' groups."""

    def __init__(self, verbose: bool) -> None:
        self.verbose = verbose
        self.files = 0
        self.counts: dict[str, int] = {}
        self.lines: list[str] = []  # "<status> <path>  (<sizes>)", indent added later
        #: (directory, status) -> [files, bytes, the first change]: the first FILES_SHOWN
        #: groups in path order; the others are only counted.
        self.groups: dict[tuple[str, str], list] = {}
        self.more: set[tuple[str, str]] = set()

    def add(self, c: FileChange) -> None:
        self.files += 1
        word = _STATUS_WORD[c.status]
        self.counts[word] = self.counts.get(word, 0) + 1
        if self.verbose or len(self.lines) <= FILES_SHOWN:
            self.lines.append(f"{_status_word(c)} {c.path}  ({_sizes(c)})")
        parent = c.path.rsplit("/", 1)[0] + "/" if "/" in c.path else c.path
        key = (parent, c.status)
        group = self.groups.get(key)
        if group is None and len(self.groups) >= FILES_SHOWN:
            self.more.add(key)
            return
        if group is None:
            group = self.groups[key] = [0, 0, c]
        group[0] += 1
        group[1] += (c.old_size if c.status == "D" else c.new_size) or 0

    def text(self, indent: str) -> list[str]:
        if self.files <= FILES_SHOWN or self.verbose:
            return [f"{indent}{line}" for line in self.lines]
        lines = []
        for (where, _), (files, size, first) in self.groups.items():
            what = f"{files} files, {_size(size)}" if files > 1 else _sizes(first)
            lines.append(f"{indent}{_status_word(first)} {where}  ({what})")
        if self.more:
            lines.append(f"{indent}... and {len(self.more)} more directories (-v lists every file)")
        return lines


class ChangeReport:
    """What status, snapshot, log and show print of a comparison, gathered one change at a
    time (a million changes are never a list): the section summary and the text, which
    collapses a section of more than FILES_SHOWN files to one line per directory."""

    def __init__(self) -> None:
        verbose = output_level().verbose
        self.total = 0
        self._sections = {section: _Section(verbose) for section in SECTIONS}

    def add(self, c: FileChange) -> None:
        self.total += 1
        section = self._sections.get(c.section)
        if section is not None:
            section.add(c)

    def feed(self, changes: Iterable[FileChange]) -> Iterator[dict]:
        """Each change's JSON object, counting it as it goes by."""
        for c in changes:
            self.add(c)
            yield c.as_dict()

    def sections(self) -> dict[str, dict]:
        return {
            name: {"changed": bool(s.files), "files": s.files, **s.counts}
            for name, s in self._sections.items()
        }

    def text(self, indent: str = "  ") -> list[str]:
        lines = []
        for name, s in self._sections.items():
            if s.files:
                lines.append(f"{indent}{name}:")
                lines += s.text(indent + "  ")
        return lines


def _status_word(c: FileChange) -> str:
    word = _STATUS_WORD[c.status]
    return paint(f"{word:<9}", word)


def _sizes(c: FileChange) -> str:
    if c.status == "A":
        return _size(c.new_size)
    if c.status == "D":
        return _size(c.old_size)
    return f"{_size(c.old_size)} -> {_size(c.new_size)}"


def _stat_text(store: Store, changes: list[FileChange]) -> list[str]:
    lines = []
    for section, info in section_summary(changes).items():
        if not info["changed"]:
            continue
        parts = [f"{info[w]} {w}" for w in ("added", "modified", "deleted") if info.get(w)]
        lines.append(f"    {section}: {', '.join(parts)}")
    rows = row_delta(store, changes)
    if rows is not None:
        delta = rows["rows_delta"]
        shown = "?" if delta is None else f"{delta:+d}"
        lines.append(
            f"    {RECORDS_FILE} rows: {rows['rows_before']} -> {rows['rows_after']} ({shown})"
        )
    return lines


def _parent_changes(store: Store, entry: LogEntry) -> list[FileChange]:
    return store.diff(entry.parents[0] if entry.parents else None, entry.id)


@click.command("snapshot")
@here_or_dataset
@click.option("-m", "--message", default=None, help="Say why (kept in the commit message).")
@format_option
@pass_settings
def snapshot_cmd(settings, dataset: str, message: str | None, fmt: str) -> None:
    """Record the working state of DATASET as a new state (no-op if unchanged).

    A plain directory without a store is adopted: its files become the first state.
    """
    store = open_store(settings, dataset)
    before = store.head()
    recorded = store.record("snapshot", message=message)
    # Streamed, not listed: 1,000,000 added files are never a list of changes or dicts.
    changes = store.iter_diff(before, recorded.commit) if recorded.created else iter(())
    report = ChangeReport()
    data = {
        "dataset": dataset,
        "created": recorded.created,
        "commit": recorded.commit,
        "parent": before,
        "changes": report.feed(changes),
        "sections": Later(report.sections),
    }
    if fmt == "json":
        emit_stream(data)
        return
    for _ in data["changes"]:
        pass
    if recorded.created:
        text = [f"recorded {recorded.commit[:12]} snapshot of {dataset}: {report.total} files"]
        text += report.text()
    elif recorded.commit is None:
        text = [f"nothing to record: {dataset} has no files"]
    else:
        text = [f"nothing to record: {dataset} matches {recorded.commit[:12]}"]
    emit(fmt, None, "\n".join(text))


@click.command("status")
@here_or_dataset
@click.argument("remote", required=False, default=None)
@remotes_config_option
@format_option
@pass_settings
def status_cmd(
    settings, dataset: str, remote: str | None, remotes_config: str | None, fmt: str
) -> None:
    """Working files of DATASET against its last recorded state, by section and file.

    Records nothing (usr snapshot does). Then how far local and each remote are apart
    (ahead/behind counts and the relation): as last seen by the last diff/pull/push, with
    no network; or, when REMOTE is given, asked live (heads and history only, no file
    contents; moves refs/remotes/REMOTE/main as git fetch does)."""
    # The no-network case needs only usr.sync.status (the engine's import costs 30 ms).
    from usr.sync.status import last_seen_status, status_text

    store = open_store(settings, dataset)
    if remote is None:
        apart = last_seen_status(store)
    else:
        from usr.sync import engine

        target = engine.resolve_target(settings.root, dataset)
        apart = engine.remote_status(
            target, remote, engine.SyncOptions(remotes_config=remotes_config)
        )
    head = store.head()
    changes = store.iter_diff(head, store.working_tree())  # streamed, as snapshot's
    report = ChangeReport()
    data = {
        "dataset": dataset,
        "head": head,
        "clean": Later(lambda: report.total == 0),
        "changes": report.feed(changes),
        "sections": Later(report.sections),
        "remotes": apart,
    }
    if fmt == "json":
        emit_stream(data)
        return
    for _ in data["changes"]:
        pass
    where = f"HEAD {head[:12]}" if head else "no recorded state yet"
    if not report.total:
        text = [f"{dataset}: clean ({where})"]
    else:
        text = [f"{dataset}: {report.total} unrecorded changes against {where}"]
        text += report.text()
        clean = [s for s, info in report.sections().items() if not info["changed"]]
        text.append(f"  unchanged: {', '.join(clean) or '-'}")
        text.append(f"(run 'usr snapshot {dataset}' to record them)")
    text += status_text(apart)
    emit(fmt, None, "\n".join(text))


def subject(entry: LogEntry) -> str:
    """What one line says of a state: the action that recorded it (``snapshot``, ``pull
    bu-scc``, ``merge bu-scc``) and the first line of its message when it has one (``-m``),
    as git's one-line log shows the subject."""
    first = entry.message.strip().splitlines()[0] if entry.message.strip() else ""
    return f"{entry.action}: {first}" if first else entry.action


@click.command("log")
@here_or_dataset
@click.option("--oneline", is_flag=True, help="One line per state.")
@click.option(
    "-n", "--max-count", "limit", type=int, default=None, metavar="N", help="Show at most N."
)
@click.option(
    "--stat",
    is_flag=True,
    help="Per-section file counts and records.parquet rows before -> after.",
)
@click.option("--graph", is_flag=True, help="Draw the history as lanes (merges join them).")
@click.option(
    "--remote",
    default=None,
    metavar="REMOTE",
    help="REMOTE's history as the last diff/pull/push saw it (no network; exit 4 before).",
)
@format_option
@pass_settings
def log_cmd(
    settings,
    dataset: str,
    oneline: bool,
    limit: int | None,
    stat: bool,
    graph: bool,
    remote: str | None,
    fmt: str,
) -> None:
    """Recorded states of DATASET, newest first: id, time, actor, action.

    --graph draws one line per state with lanes, so a merge shows both its parents.
    --remote REMOTE shows what the last diff/pull/push saw on REMOTE instead."""
    store = open_store(settings, dataset)
    if remote:
        from usr.sync.engine import remote_log

        entries = remote_log(store, remote, limit)
    else:
        entries = store.log(limit=limit)
    docs, lines = [], []
    for e in entries:
        doc = e.as_dict()
        changes = _parent_changes(store, e) if stat else []
        if stat:
            doc["sections"] = section_summary(changes)
            doc["records"] = row_delta(store, changes)
            doc["changes"] = [c.as_dict() for c in changes]
        docs.append(doc)
        if oneline:
            lines.append(f"{paint(e.id[:12], 'id')} {_when(e)} {subject(e)} ({e.actor})")
        else:
            lines += [paint(f"state {e.id}", "id"), f"Date:   {_when(e)}", f"Actor:  {e.actor}"]
            lines.append(f"Action: {e.action}")
            if e.message:
                lines += [""] + [f"    {line}" for line in e.message.splitlines()]
        if stat:
            lines += _stat_text(store, changes)
        if not oneline:
            lines.append("")
    if graph:
        from porcelain.merge import graph_rows

        by_id = {e.id: e for e in entries}
        lines = []
        for prefix, cid in graph_rows([(e.id, e.parents) for e in entries]):
            e = by_id[cid] if cid else None
            shown = (
                f"{prefix} {paint(e.id[:12], 'id')} {_when(e)} {subject(e)} ({e.actor})"
                if e
                else prefix
            )
            lines.append(shown)
    if not entries:
        lines = [f"{dataset}: no recorded states yet"]
    emit(fmt, {"dataset": dataset, "states": docs}, "\n".join(lines).rstrip("\n"), page=True)


@click.command("show")
@here_or_dataset
@click.argument("commit", default="HEAD")
@click.option(
    "--rows",
    is_flag=True,
    help="Also the records it added, removed or changed, and overlay values it set.",
)
@max_ids_option
@format_option
@pass_settings
def show_cmd(settings, dataset: str, commit: str, rows: bool, max_ids: int, fmt: str) -> None:
    """One recorded state of DATASET and what it changed against its parent.

    --rows adds the record diff against the first parent: records added and removed by
    id, records changed, overlay values set, changed or cleared per namespace and column
    (records.parquet read by row group; unchanged row groups are skipped)."""
    store = open_store(settings, dataset)
    entry = store.log_entry(store.resolve(commit))
    record_doc = None
    if rows:
        from usr.record_diff import diff_states

        parent = entry.parents[0] if entry.parents else None
        labels = (f"{entry.id[:12]}^" if parent else "(none)", entry.id[:12])
        record_doc = diff_states(store, parent, entry.id, max_ids, labels=labels).to_json()
    changes = _parent_changes(store, entry)
    doc = entry.as_dict()
    doc["changes"] = [c.as_dict() for c in changes]
    doc["sections"] = section_summary(changes)
    doc["records"] = row_delta(store, changes)
    lines = [f"state {entry.id}", f"Parents: {' '.join(p[:12] for p in entry.parents) or '-'}"]
    lines += [f"Date:    {_when(entry)}", f"Actor:   {entry.actor}", f"Action:  {entry.action}"]
    if entry.message:
        lines += [""] + [f"    {line}" for line in entry.message.splitlines()]
    lines.append("")
    lines += _changes_text(changes) or ["  (no file changes)"]
    lines += _stat_text(store, changes)
    data = {"dataset": dataset, "state": doc}
    if record_doc is not None:
        from usr.record_diff import render_text

        data["records"] = record_doc
        lines += render_text(record_doc, indent="  ")
    emit(fmt, data, "\n".join(lines))


@click.command("checkout")
@here_or_dataset
@click.argument("commit")
@click.option("--force", is_flag=True, help="Record unrecorded changes first, then go on.")
@format_option
@pass_settings
def checkout_cmd(settings, dataset: str, commit: str, force: bool, fmt: str) -> None:
    """Restore the working files of DATASET to recorded state COMMIT.

    Files are staged and verified before any working file is replaced; a crash part-way is
    completed by the next usr command. Unrecorded changes are refused unless --force, which
    records them first (nothing is lost). States left behind stay under refs/usr/saved/.
    """
    store = open_store(settings, dataset)
    before = store.head()
    target = store.resolve(commit)
    # Dataset lock, then events lock (every writer's order): an event line a batch job
    # appends meanwhile waits and lands after the promoted .events.log, not under it.
    what = f"checkout {target[:12]}"
    with store.lock(what), events_lock(store.path, what=what):
        store.checkout(target, force=force)
    data = {"dataset": dataset, "from": before, "to": target, "moved": "refs/heads/main"}
    text = f"checked out {target[:12]} in {dataset} (was {(before or '-')[:12]})"
    if before and before != target:
        # Like git reset --hard, not a detached checkout: say so, and the way back.
        text += (
            f"\nrefs/heads/main moved from {before[:12]} to {target[:12]}; "
            f"undo with: usr checkout {dataset} {before}"
        )
    emit(fmt, data, text)


@click.command("gc")
@here_or_dataset
@click.option(
    "--prune-age",
    type=float,
    default=3600.0,
    show_default=True,
    metavar="SECONDS",
    help="Keep unreachable data younger than this (transfers in flight); 0 prunes now.",
)
@format_option
@pass_settings
def gc_cmd(settings, dataset: str, prune_age: float, fmt: str) -> None:
    """Remove objects, chunks and crash leftovers that no recorded state reaches."""
    store = open_store(settings, dataset)
    report = store.gc(prune_age=prune_age)
    text = (
        f"gc {dataset}: removed {report.objects_removed} objects, {report.chunks_removed} "
        f"chunks, {report.temp_removed} leftovers; rewrote {report.packs_rewritten} packs; "
        f"freed {_size(report.bytes_freed)}"
    )
    emit(fmt, {"dataset": dataset, **report.as_dict()}, text)


@click.command("fsck")
@here_or_dataset
@format_option
@pass_settings
def fsck_cmd(settings, dataset: str, fmt: str) -> None:
    """Verify every reachable object and chunk of DATASET by hash, and that .events.log
    only ever grew by appended lines. Exit 5 if anything is wrong."""
    store = open_store(settings, dataset)
    problems = store.fsck()
    counts = getattr(store, "fsck_counts", {})
    data = {"dataset": dataset, "ok": not problems, "problems": [p.as_dict() for p in problems]}
    data.update(counts)
    lines = [f"{p.kind} {p.id}{(' at ' + p.path) if p.path else ''}: {p.message}" for p in problems]
    lines.append(
        f"fsck {dataset}: {counts.get('commits', 0)} states, {counts.get('objects', 0)} objects,"
        f" {counts.get('chunks', 0)} chunks checked; {len(problems)} problems"
    )
    emit(fmt, data, "\n".join(lines))
    if problems:
        first = problems[0]
        raise VerifyError(
            f"fsck found {len(problems)} problems in {dataset}; first: {first.kind} {first.id}"
            f"{(' at ' + first.path) if first.path else ''}",
            "restore the damaged objects from a remote (usr pull) or a backup",
        )


COMMANDS = [snapshot_cmd, status_cmd, log_cmd, show_cmd, checkout_cmd, gc_cmd, fsck_cmd]
