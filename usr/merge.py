"""Three-way merge of two dataset histories: the local head, the remote head, their base.

In the chained loop a batch job appends records and events on the cluster copy while an
annotation tool attaches overlay parts and appends events on the laptop copy. Both copies
then hold states the other lacks; rather than refusing, usr merges them when the changes
cannot contradict each other, and refuses (changing nothing) when they can.

Rules, per path, comparing each side's tree with the merge base's:

* changed on one side only, or changed identically on both -> take that content;
* ``.events.log`` appended on both sides -> the remote head's log, then the local-only
  appended lines in their order (lines the remote already has are not repeated). The shared
  copy on the cluster therefore only ever grows by appends, and the result is a function of
  the three logs alone. The sidecar ledger (``_registry/sidecar-ledger.jsonl``) is an
  append-only JSON-lines log under the same contract and follows the same rule, so two
  sides that both attach overlays do not conflict over their vouches;
* ``records.parquet`` changed on both sides -> if both only appended rows to the base, the
  remote's rows then the local-only rows (by id, no duplicates), written by usr's own
  records writer, so the bytes are a function of the rows and the remote's row groups are
  reused chunk for chunk;
* the frozen registry copy (``_registry/registry.toml``) changed on both sides -> the union
  of the namespaces, merged one namespace at a time against the base (a namespace with a
  different contract on each side is a conflict), written by the registry's own writer.
  When both sides' copies were vouched for in their ledgers, the merged ledger vouches for
  the merged copy too (``via: merge``), so the merge passes ``verify-sidecars``; an
  unvouched input leaves the result unvouched (a merge never launders a file);
* anything else changed on both sides is a :class:`Conflict`: a file rewritten differently
  on both sides, a deletion against a modification, a log or table that was not only
  appended to, or overlay parts of one namespace, added on both sides, that give different
  values for the same key (the newest-part-wins view would silently pick one).

A merge state records its parents as ``[local head, remote head]`` and names the remote
side in a ``Merge-remote-parent:`` trailer: its ``.events.log`` extends that parent's, so
``usr fsck`` checks the append-only rule towards it (see :mod:`usr.store.fsck`). The remote
head is an ancestor of the merge, so the following ``usr push`` fast-forwards the remote.

Entry points: :func:`merge_trees` (pure: three trees in, a :class:`MergeResult` out),
:func:`commit_merge`, :func:`merge` (``usr merge`` = ``usr pull --merge``), and the two
hooks the sync engine calls, :func:`preview` (diff / ``--dry-run``) and :func:`merge_pull`.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3
import pyarrow as pa
import pyarrow.parquet as pq

from usr import ledger, records
from usr.atomic import TMP_PREFIX
from usr.errors import ConflictError
from usr.layout import DERIVED_DIR, EVENTS_FILE, RECORDS_FILE, section_of
from usr.ledger import LEDGER_PATH
from usr.merge_content import (
    ContentRefused,
    merge_events,
    merge_records,
    merge_registry,
    without_meta,
)
from usr.sidecars import FROZEN_REGISTRY
from usr.store.fsck import MERGE_REMOTE_TRAILER
from usr.store.objects import inline_limit
from usr.store.worktree import hash_file, walk_tree

MERGE_LOCAL_TRAILER = "Merge-local-parent"
#: Append-only JSON-lines logs merged by the events rule: the event log, and the sidecar
#: ledger (same contract: vouches are appended, never rewritten; see usr.ledger).
APPEND_LOGS = (EVENTS_FILE, LEDGER_PATH)
#: Files changed on both sides that a content rule may still merge.
CONTENT_MERGED = (*APPEND_LOGS, RECORDS_FILE, FROZEN_REGISTRY)
#: Who vouches, in the ledger, for a file the merge built (fixed, so the merged ledger and
#: tree depend on the inputs only, never on the machine that merges).
MERGE_ACTOR = "usr merge"
_REGULAR = 0o100644

#: What happened to a path, in the report (``resolution`` field).
TAKE_LOCAL = "keep-local"
TAKE_REMOTE = "take-remote"
SAME_BOTH = "same-on-both"
EVENTS_APPEND = "events-append"
RECORDS_UNION = "records-union"
REGISTRY_UNION = "registry-union"


@dataclass(frozen=True)
class Conflict:
    """One path the merge cannot decide, with the rule it breaks (``kind``) and why."""

    path: str
    kind: str
    why: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "kind": self.kind, "why": self.why}


@dataclass(frozen=True)
class Resolution:
    """One path changed since the base on either side, and what the merge does with it.

    ``local_status`` is what happens to the local working file when the merge is checked
    out (added/modified/deleted/unchanged), so a dry run says exactly what would move.
    """

    path: str
    section: str
    resolution: str
    local_status: str
    detail: str = ""

    def as_dict(self) -> dict[str, str]:
        return {
            "path": self.path,
            "section": self.section,
            "resolution": self.resolution,
            "local_status": self.local_status,
            "detail": self.detail,
        }


@dataclass
class MergeResult:
    """The outcome of :func:`merge_trees`: a tree when mergeable, conflicts otherwise."""

    base_tree: str | None
    local_tree: str
    remote_tree: str
    tree: str | None = None
    resolutions: list[Resolution] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)

    @property
    def mergeable(self) -> bool:
        return not self.conflicts

    def as_dict(self) -> dict[str, Any]:
        return {
            "mergeable": self.mergeable,
            "base_tree": self.base_tree,
            "local_tree": self.local_tree,
            "remote_tree": self.remote_tree,
            "tree": self.tree,
            "files": [r.as_dict() for r in self.resolutions],
            "conflicts": [c.as_dict() for c in self.conflicts],
        }


class MergeConflict(ConflictError):
    """A merge that was refused because of conflicts; nothing was changed on either side.

    ``report`` is the merge report (``MergeResult.as_dict()`` plus heads), ``data`` the
    audit data of the command, so a CLI can print every conflicting path before exiting.
    """

    def __init__(self, report: dict[str, Any], data: dict[str, Any] | None = None) -> None:
        conflicts = report.get("conflicts", [])
        shown = "; ".join(f"{c['path']}: {c['why']}" for c in conflicts[:3])
        more = f"; and {len(conflicts) - 3} more" if len(conflicts) > 3 else ""
        super().__init__(
            f"merge conflicts in {len(conflicts)} path(s): {shown}{more}",
            "nothing was changed on either side; see 'usr merge --dry-run' for every path",
        )
        self.report = report
        self.data = data


# ----------------------------------------------------------------------------- reading


def _files(store: Any, tree: str | None) -> dict[str, tuple[str, int]]:
    """``{path: (entry id, mode)}`` of every file in a tree (empty for None)."""
    return {rel: (oid, mode) for rel, oid, mode in walk_tree(store.repo, tree)}


def _content(store: Any, oid: str | None, path: str) -> bytes:
    """Whole file behind an entry, verified (inline blob or manifest + chunks)."""
    if oid is None:
        return b""
    return b"".join(store.open_entry(oid, path))


def _table(store: Any, oid: str, path: str) -> pa.Table:
    try:
        return pq.read_table(pa.BufferReader(_content(store, oid, path)))
    except (pa.ArrowInvalid, OSError) as exc:
        raise ContentRefused("unreadable", f"not a readable Parquet file ({exc})") from None


def _namespace_of(path: str) -> str | None:
    parts = path.split("/")
    if len(parts) >= 3 and parts[0] == DERIVED_DIR:
        return parts[1]
    return None


def _changed(base: dict, side: dict) -> set[str]:
    return {p for p in set(base) | set(side) if base.get(p, (None,))[0] != side.get(p, (None,))[0]}


def needed_blobs(
    store: Any, base_tree: str | None, local_tree: str, remote_tree: str
) -> dict[str, list[str]]:
    """Entry ids a content merge of these trees must read, per side (``base``, ``local``,
    ``remote``): the files changed on both sides and the overlay parts of namespaces both
    sides touched. Lets a caller fetch only those from the remote before :func:`merge_trees`.
    """
    b, lo, r = _files(store, base_tree), _files(store, local_tree), _files(store, remote_tree)
    lc, rc = _changed(b, lo), _changed(b, r)
    paths = lc & rc
    both_ns = {_namespace_of(p) for p in lc} & {_namespace_of(p) for p in rc} - {None}
    paths |= {p for p in lc | rc if _namespace_of(p) in both_ns}
    if FROZEN_REGISTRY in paths:
        paths.add(LEDGER_PATH)  # to vouch for the merged copy (see _vouch_registry)
    out: dict[str, list[str]] = {"base": [], "local": [], "remote": []}
    for name, files in (("base", b), ("local", lo), ("remote", r)):
        out[name] = sorted({files[p][0] for p in paths if p in files})
    return out


# ----------------------------------------------------------------------------- content rules


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def _values(store: Any, files: dict, paths: list[str]) -> dict[str, dict[str, dict]]:
    """``{column: {id: (value, path)}}`` of the overlay parts at ``paths`` (non-null only)."""
    out: dict[str, dict[str, tuple[Any, str]]] = {}
    for path in paths:
        table = _table(store, files[path][0], path)
        if "id" not in table.column_names:
            raise ContentRefused("overlay-unreadable", "overlay part has no id column")
        ids = table.column("id").to_pylist()
        for column in table.column_names:
            if column == "id":
                continue
            col = out.setdefault(column, {})
            for key, value in zip(ids, table.column(column).to_pylist(), strict=True):
                if value is not None:
                    col[key] = (value, path)
    return out


def _overlay_conflicts(
    store: Any, local: dict, remote: dict, local_paths: list[str], remote_paths: list[str]
) -> list[Conflict]:
    """Conflicts between parts of one namespace added (or changed) on both sides."""
    try:
        lv = _values(store, local, local_paths)
        rv = _values(store, remote, remote_paths)
    except ContentRefused as exc:
        why = f"cannot compare overlay values: {exc.why}"
        return [Conflict(p, "overlay-unreadable", why) for p in local_paths + remote_paths]
    found: dict[str, list[str]] = {}
    for column in sorted(set(lv) & set(rv)):
        for key in sorted(set(lv[column]) & set(rv[column])):
            (a, lpath), (b, rpath) = lv[column][key], rv[column][key]
            if _same(a, b):
                continue
            note = f"{column} of id {key[:12]}: local {a!r} vs remote {b!r}"
            found.setdefault(lpath, []).append(f"{note} (remote part {rpath})")
            found.setdefault(rpath, []).append(f"{note} (local part {lpath})")
    return [
        Conflict(
            path,
            "overlay-values",
            f"gives a different value than the other side for {len(notes)} key(s), e.g. {notes[0]}",
        )
        for path, notes in sorted(found.items())
    ]


# ----------------------------------------------------------------------------- the merge


def _write_file(store: Any, scratch: Path, name: str, writer: Any, fill) -> str:
    """Write a merged file into the store through a scratch file (chunked if large)."""
    path = scratch / name
    fill(path)
    oid, _ = hash_file(str(path), inline_limit(), store.write_blob, writer)
    path.unlink()
    return oid


def _status(before: str | None, after: str | None) -> str:
    if before == after:
        return "unchanged"
    if before is None:
        return "added"
    if after is None:
        return "deleted"
    return "modified"


def _path_clashes(files: dict[str, Any]) -> list[Conflict]:
    """A file on one side where the other side has a directory of the same name."""
    dirs: set[str] = set()
    for rel in files:
        parts = rel.split("/")
        dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
    return [
        Conflict(rel, "path-clash", "a file on one side, a directory on the other")
        for rel in sorted(dirs & set(files))
    ]


def merge_trees(
    store: Any, base_tree: str | None, local_tree: str, remote_tree: str, strict: bool = True
) -> MergeResult:
    """Three-way merge of trees (all objects, and the contents it must read, in ``store``).

    Writes the merged files and trees into the store (objects only: no ref, no working
    file moves) and returns the merged tree id, or the conflicts. Deterministic: the
    result depends on the three trees only, never on time or on which machine runs it.
    ``strict=False`` (previews) lets the merged tree name blobs not fetched yet; such a
    tree must not be committed before they are (see ``build_tree``).
    """
    result = MergeResult(base_tree, local_tree, remote_tree)
    b, lo, r = _files(store, base_tree), _files(store, local_tree), _files(store, remote_tree)
    merged: dict[str, tuple[str, int]] = {}
    content: list[str] = []
    for path in sorted(set(b) | set(lo) | set(r)):
        be, le, re_ = b.get(path), lo.get(path), r.get(path)
        bid, lid, rid = (e[0] if e else None for e in (be, le, re_))
        if lid == rid:
            if le is not None:
                merged[path] = le
            if lid != bid:
                result.resolutions.append(
                    Resolution(path, section_of(path), SAME_BOTH, "unchanged")
                )
            continue
        if lid == bid:
            if re_ is not None:
                merged[path] = re_
            result.resolutions.append(
                Resolution(path, section_of(path), TAKE_REMOTE, _status(lid, rid))
            )
            continue
        if rid == bid:
            if le is not None:
                merged[path] = le
            result.resolutions.append(Resolution(path, section_of(path), TAKE_LOCAL, "unchanged"))
            continue
        # Changed on both sides, differently.
        if bid is not None and (lid is None or rid is None):
            gone, kept = ("local", "remote") if lid is None else ("remote", "local")
            why = f"deleted on the {gone} side, modified on the {kept} side"
            result.conflicts.append(Conflict(path, "delete-modify", why))
        elif path in CONTENT_MERGED and lid is not None and rid is not None:
            content.append(path)
        elif bid is None:
            why = "added on both sides with different content"
            result.conflicts.append(Conflict(path, "both-added", why))
        else:
            why = "rewritten differently on both sides"
            result.conflicts.append(Conflict(path, "both-modified", why))
    # Scratch files carry the temp prefix so that a crash's leftovers are removed by gc.
    with tempfile.TemporaryDirectory(dir=store.gitdir, prefix=f"{TMP_PREFIX}merge-") as tmp:
        scratch = Path(tmp)
        with store.chunks.writer() as writer:
            for path in content:
                _merge_content(store, result, merged, path, b, lo, r, scratch, writer)
        # A second pack: the vouch reads the merged ledger, whose chunks (a large ledger)
        # are readable only once the first pack is finalised.
        if any(x.resolution == REGISTRY_UNION for x in result.resolutions):
            with store.chunks.writer() as writer:
                _vouch_registry(store, result, merged, lo, r, scratch, writer)
    result.conflicts.extend(_namespace_conflicts(store, b, lo, r))
    result.conflicts.extend(_path_clashes(merged))
    result.conflicts.sort(key=lambda c: (c.path, c.kind))
    result.resolutions.sort(key=lambda x: x.path)
    if not result.conflicts:
        from usr.store.worktree import build_tree

        result.tree = build_tree(store.repo, merged, strict=strict)
    return result


def _merge_content(
    store: Any,
    result: MergeResult,
    merged: dict[str, tuple[str, int]],
    path: str,
    b: dict,
    lo: dict,
    r: dict,
    scratch: Path,
    writer: Any,
) -> None:
    """Apply the events or records rule to a path changed on both sides."""
    bid = b[path][0] if path in b else None
    lid, rid = lo[path][0], r[path][0]
    mode = r[path][1]
    try:
        if path in APPEND_LOGS:
            data, added = merge_events(
                _content(store, bid, path), _content(store, lid, path), _content(store, rid, path)
            )
            oid = _write_file(store, scratch, "log", writer, lambda p: p.write_bytes(data))
            detail = f"remote log, then {added} local-only line(s)"
            rule = EVENTS_APPEND
        elif path == FROZEN_REGISTRY:
            data, detail = merge_registry(
                _content(store, bid, path) if bid else None,
                _content(store, lid, path),
                _content(store, rid, path),
                scratch,
            )
            oid = _write_file(store, scratch, "registry", writer, lambda p: p.write_bytes(data))
            rule = REGISTRY_UNION
        else:
            if bid is None:
                raise ContentRefused("both-added", "added on both sides with different content")
            table, added = merge_records(
                _table(store, bid, path), _table(store, lid, path), _table(store, rid, path)
            )
            schema = without_meta(table.schema)
            if schema.equals(records.CORE_SCHEMA):
                schema = records.CORE_SCHEMA
            oid = _write_file(
                store,
                scratch,
                "records.parquet",
                writer,
                lambda p: records.write_records(p, table.to_batches(), schema),
            )
            detail = f"remote rows, then {added} local-only row(s); {table.num_rows} rows"
            rule = RECORDS_UNION
    except ContentRefused as exc:
        kind = "records-rewritten" if exc.kind == "unreadable" else exc.kind
        if path == LEDGER_PATH and kind == "events-rewritten":
            kind = "ledger-rewritten"
        elif path == FROZEN_REGISTRY and kind == "unreadable":
            kind = "both-added" if bid is None else "both-modified"
        result.conflicts.append(Conflict(path, kind, exc.why))
        return
    merged[path] = (oid, mode)
    result.resolutions.append(Resolution(path, section_of(path), rule, "modified", detail))


def _vouch_registry(
    store: Any,
    result: MergeResult,
    merged: dict[str, tuple[str, int]],
    lo: dict,
    r: dict,
    scratch: Path,
    writer: Any,
) -> None:
    """Vouch in the merged ledger for the merged registry copy, when both inputs were.

    Each side's copy must be vouched by that side's own ledger: then the union, built by
    the merge from two validated files, is validated too. The line is a function of the
    inputs (fixed actor, ``recorded_at`` of the later input vouch), so the merged ledger
    and tree stay deterministic, and it is appended after every other line, so the ledger
    still extends the remote side's by whole lines.
    """
    path = FROZEN_REGISTRY
    vouches = []
    for side in (lo, r):
        book = ledger.parse(
            _content(store, side[LEDGER_PATH][0], LEDGER_PATH) if LEDGER_PATH in side else b""
        )
        data = _content(store, side[path][0], path)
        vouches.extend(ledger.vouching(book, path, blake3.blake3(data).hexdigest()) or [None])
    mine = _content(store, merged[path][0], path)
    old = merged.get(LEDGER_PATH)
    book_bytes = _content(store, old[0], LEDGER_PATH) if old else b""
    digest = blake3.blake3(mine).hexdigest()
    if ledger.parse(book_bytes).vouches(path, digest):
        return  # the union is one side's vouched copy
    torn = bool(book_bytes) and not book_bytes.endswith(b"\n")
    if None in vouches or torn:
        why = "an input copy was not vouched for" if None in vouches else "the ledger ends mid-line"
        _note(result, path, f"left unvouched: {why}")
        return
    when = max(v.recorded_at for v in vouches if v is not None)
    line = ledger.Entry(path, digest, len(mine), "merge", MERGE_ACTOR, when).to_line().encode()
    data = book_bytes + line
    oid = _write_file(store, scratch, "ledger", writer, lambda p: p.write_bytes(data))
    merged[LEDGER_PATH] = (oid, old[1] if old else _REGULAR)
    _note(result, LEDGER_PATH, "a line vouching for the merged registry copy", EVENTS_APPEND)


def _note(result: MergeResult, path: str, detail: str, rule: str | None = None) -> None:
    """Add ``detail`` to the resolution of ``path``; with ``rule``, the path's content was
    changed by the merge: its resolution becomes ``rule`` (and is made if there is none)."""
    for i, res in enumerate(result.resolutions):
        if res.path == path:
            joined = f"{res.detail}; {detail}" if res.detail else detail
            status = "modified" if rule else res.local_status
            result.resolutions[i] = Resolution(
                res.path, res.section, rule or res.resolution, status, joined
            )
            return
    if rule is not None:
        result.resolutions.append(Resolution(path, section_of(path), rule, "modified", detail))


def _namespace_conflicts(store: Any, b: dict, lo: dict, r: dict) -> list[Conflict]:
    """Overlay parts of a namespace added or changed on both sides must agree per key."""
    lc = {p for p in _changed(b, lo) if p in lo and _namespace_of(p)}
    rc = {p for p in _changed(b, r) if p in r and _namespace_of(p)}
    out: list[Conflict] = []
    for ns in sorted({_namespace_of(p) for p in lc} & {_namespace_of(p) for p in rc}):
        mine = sorted(p for p in lc - rc if _namespace_of(p) == ns)
        theirs = sorted(p for p in rc - lc if _namespace_of(p) == ns)
        if mine and theirs:
            out.extend(_overlay_conflicts(store, lo, r, mine, theirs))
    return out


# ----------------------------------------------------------------------------- commits


def commit_merge(
    store: Any,
    result: MergeResult,
    local_head: str,
    remote_head: str,
    remote: str,
    actor: Any = None,
) -> str:
    """Write the merge commit (no ref moves): parents ``[local head, remote head]``, a
    message naming the remote, and the trailers fsck reads to know which parent's
    ``.events.log`` this state extends."""
    if result.tree is None:
        raise ConflictError("cannot record a merge with conflicts")
    message = (
        f"Three-way merge of {remote}'s states with the local ones.\n\n"
        f"{MERGE_LOCAL_TRAILER}: {local_head}\n{MERGE_REMOTE_TRAILER}: {remote_head}"
    )
    return store.commit_tree(
        result.tree, [local_head, remote_head], f"merge {remote}", actor, message
    )


def report(
    result: MergeResult,
    local_head: str | None,
    remote_head: str | None,
    base: str | None,
    commit: str | None = None,
) -> dict[str, Any]:
    """The merge report: heads, base, per-path resolutions and conflicts."""
    doc = result.as_dict()
    doc.update(local_head=local_head, remote_head=remote_head, merge_base=base, commit=commit)
    return doc


__all__ = [
    "Conflict",
    "MergeConflict",
    "MergeResult",
    "Resolution",
    "commit_merge",
    "merge_events",
    "merge_records",
    "merge_registry",
    "merge_trees",
    "needed_blobs",
    "report",
]
