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
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from usr import ledger, records
from usr.atomic import TMP_PREFIX
from usr.errors import ConflictError, InputError
from usr.layout import DERIVED_DIR, EVENTS_FILE, RECORDS_FILE, REGISTRY_FILE, section_of
from usr.ledger import LEDGER_PATH
from usr.registry import Namespace, Registry
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
        raise _Refuse("unreadable", f"not a readable Parquet file ({exc})") from None


class _Refuse(Exception):
    """A content merge that must become a conflict (kind, why)."""

    def __init__(self, kind: str, why: str) -> None:
        super().__init__(why)
        self.kind = kind
        self.why = why


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


def _line_prefix(base: bytes, side: bytes) -> bool:
    """``base`` is a whole-line prefix of ``side`` (ends at a line boundary)."""
    return side.startswith(base) and (not base or base.endswith(b"\n"))


def merge_events(base: bytes, local: bytes, remote: bytes) -> tuple[bytes, int]:
    """The remote log, then the local-only appended lines (those the remote's appended
    lines do not already hold), in order. Returns (merged bytes, local lines added).

    Raises :class:`_Refuse` when a side did not only append, or the remote log ends
    mid-line (appending to it would glue two events into one line).
    """
    for side, data in (("local", local), ("remote", remote)):
        if not _line_prefix(base, data):
            raise _Refuse(
                "events-rewritten",
                f"the {side} side changed or removed lines of the base log (not append-only)",
            )
    if remote and not remote.endswith(b"\n"):
        raise _Refuse("events-rewritten", "the remote log ends mid-line")
    already = Counter(remote[len(base) :].splitlines(keepends=False))
    added: list[bytes] = []
    for line in local[len(base) :].splitlines(keepends=False):
        if already[line]:
            already[line] -= 1
            continue
        added.append(line + b"\n")
    return remote + b"".join(added), len(added)


def _without_meta(schema: pa.Schema) -> pa.Schema:
    return schema.remove_metadata()


def merge_records(base: pa.Table, local: pa.Table, remote: pa.Table) -> tuple[pa.Table, int]:
    """The remote's rows, then the local-only appended rows whose id the remote lacks.

    Refuses (:class:`_Refuse`) unless both sides kept every base row as it was, in place,
    with the same columns: only then is "both appended" true and the union unambiguous.
    """
    schema = _without_meta(base.schema)
    for side, table in (("local", local), ("remote", remote)):
        if not _without_meta(table.schema).equals(schema):
            raise _Refuse("records-rewritten", f"the {side} side changed the table's columns")
        if table.num_rows < base.num_rows or not table.slice(0, base.num_rows).equals(base):
            raise _Refuse(
                "records-rewritten",
                f"the {side} side changed or removed rows of the base (not only appended)",
            )
    local_new = local.slice(base.num_rows)
    remote_ids = pc.is_in(local_new.column("id"), value_set=remote.column("id").combine_chunks())
    local_only = local_new.filter(pc.invert(remote_ids))
    merged = pa.concat_tables([remote.cast(schema), local_only.cast(schema)])
    return merged, local_only.num_rows


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
            raise _Refuse("overlay-unreadable", "overlay part has no id column")
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
    except _Refuse as exc:
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
                raise _Refuse("both-added", "added on both sides with different content")
            table, added = merge_records(
                _table(store, bid, path), _table(store, lid, path), _table(store, rid, path)
            )
            schema = _without_meta(table.schema)
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
    except _Refuse as exc:
        kind = "records-rewritten" if exc.kind == "unreadable" else exc.kind
        if path == LEDGER_PATH and kind == "events-rewritten":
            kind = "ledger-rewritten"
        elif path == FROZEN_REGISTRY and kind == "unreadable":
            kind = "both-added" if bid is None else "both-modified"
        result.conflicts.append(Conflict(path, kind, exc.why))
        return
    merged[path] = (oid, mode)
    result.resolutions.append(Resolution(path, section_of(path), rule, "modified", detail))


def _registry_namespaces(data: bytes | None, scratch: Path, side: str) -> dict[str, Namespace]:
    """The namespaces of one side's registry copy, parsed by the registry's own reader."""
    if data is None:
        return {}
    where = scratch / f"registry-{side}"
    where.mkdir(exist_ok=True)
    (where / REGISTRY_FILE).write_bytes(data)
    try:
        return Registry.load(where).namespaces
    except (InputError, AttributeError, TypeError) as exc:  # a table where TOML had a value
        why = str(exc).replace(str(where / REGISTRY_FILE), f"the {side} copy")
        raise _Refuse("unreadable", f"the {side} copy is not a readable registry ({why})") from None


def _columns(ns: Namespace) -> str:
    return ",".join(f"{n}:{t}" for n, t in ns.columns) or "(no columns)"


def merge_registry(
    base: bytes | None, local: bytes, remote: bytes, scratch: Path
) -> tuple[bytes, str]:
    """The union of two registry copies' namespaces, each namespace merged against the base.

    Per namespace: changed (added, altered, removed) on one side only -> that side; the same
    contract (columns) on both -> the remote's entry (the cluster's copy is the shared one);
    different contracts, or removed on one side and changed on the other -> :class:`_Refuse`
    (``registry-contract``): parts stamped under one contract would be checked against the
    other. Returns (bytes from the registry's writer, so equal inputs give equal bytes;
    a detail for the report).
    """
    b = _registry_namespaces(base, scratch, "base")
    lo = _registry_namespaces(local, scratch, "local")
    r = _registry_namespaces(remote, scratch, "remote")
    merged: dict[str, Namespace] = {}
    clashes: list[str] = []
    for name in sorted(set(b) | set(lo) | set(r)):
        bn, ln, rn = b.get(name), lo.get(name), r.get(name)
        if ln in (rn, bn):
            pick = rn
        elif rn == bn:
            pick = ln
        elif ln is not None and rn is not None and ln.columns == rn.columns:
            pick = rn
        else:
            mine = _columns(ln) if ln else "removed"
            theirs = _columns(rn) if rn else "removed"
            clashes.append(f"namespace {name!r}: local {mine} vs remote {theirs}")
            continue
        if pick is not None:
            merged[name] = pick
    if clashes:
        raise _Refuse(
            "registry-contract",
            f"a namespace has a different contract on each side: {'; '.join(clashes)}",
        )
    data = Registry(scratch, merged, b"").to_toml()
    return data, f"{len(merged)} namespace(s): {', '.join(sorted(merged))}"


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


# ----------------------------------------------------------------------------- sync hooks


def _fetch_needed(session: Any, store: Any, dataset: str, base: str | None, lt: str, rt: str):
    need = needed_blobs(store, base, lt, rt)
    missing = [oid for oid in need["remote"] if not store.has_object(oid)]
    if missing:
        session.fetch_blobs(dataset, store, missing)


def preview(session: Any, store: Any, dataset: str, st: Any) -> dict[str, Any] | None:
    """What merging the two working trees would do, for ``diff`` and ``--dry-run``.

    Called by the engine with the session open (it fetches the remote contents a content
    merge needs). None unless the sides have diverged. Records nothing, moves no ref: the
    merged objects it writes are unreferenced until a real merge (``usr gc`` drops them).
    """
    from usr.sync import engine

    if st.local_head is None or st.remote_head is None or st.remote_tree is None:
        return None
    heads_rel, base = engine._relation(store, st.local_head, st.remote_head)
    relation = engine._effective_relation(heads_rel, st.local_dirty, st.remote_dirty)
    if relation != "diverged":
        return None
    if heads_rel == "equal":
        base = st.local_head
    if base is None:
        return _unrelated(st.local_head, st.remote_head)
    base_tree = store.tree_of(base)
    _fetch_needed(session, store, dataset, base_tree, st.local_tree, st.remote_tree)
    # Files only one side changed are never read, so their blobs need not be here.
    result = merge_trees(store, base_tree, st.local_tree, st.remote_tree, strict=False)
    return report(result, st.local_head, st.remote_head, base)


def _unrelated(local_head: str, remote_head: str) -> dict[str, Any]:
    why = "the two histories share no state (no merge base)"
    return {
        "mergeable": False,
        "base_tree": None,
        "local_tree": None,
        "remote_tree": None,
        "tree": None,
        "files": [],
        "conflicts": [{"path": "", "kind": "no-merge-base", "why": why}],
        "local_head": local_head,
        "remote_head": remote_head,
        "merge_base": None,
        "commit": None,
    }


def merge_pull(
    run: Any, session: Any, store: Any, target: Any, remote: str, st: Any, cmp: Any, options: Any
) -> str:
    """``usr pull --merge`` (and ``usr merge``) once both sides are recorded and compared.

    Local already containing the remote head is a NO-OP (push shares it). Diverged: fetch
    the remote states, check their events chain, merge; on conflicts raise
    :class:`MergeConflict` having changed nothing; else record the merge commit and check
    it out here (staged, verified, promoted, HEAD moved from the local head in one locked
    step). The remote is untouched: ``usr push`` then fast-forwards it.
    """
    from usr.locks import events_lock
    from usr.sync import engine

    data = run.data
    if cmp.relation == "local-ahead":
        run.notes.append("nothing to merge: local already holds the remote head; push it")
        return "NO-OP"
    engine.check_partial(cmp, options)
    engine._require_primary(store, st.remote_head, f"remote {remote}", st.sizes)
    if cmp.merge_base is None:
        doc = _unrelated(st.local_head, st.remote_head)
        data.update(mergeable=False, conflicts=doc["conflicts"], merge=doc)
        raise MergeConflict(doc, data)
    session.fetch(target.dataset, store, [st.remote_head], engine._haves(st.local_head))
    engine.check_events_chain(store, engine._commits(store, st.remote_head, st.local_head))
    result = merge_trees(
        store, store.tree_of(cmp.merge_base), st.local_tree, store.tree_of(st.remote_head)
    )
    doc = report(result, st.local_head, st.remote_head, cmp.merge_base)
    data.update(mergeable=result.mergeable, conflicts=doc["conflicts"], merge=doc)
    if not result.mergeable:
        raise MergeConflict(doc, data)
    engine._confirm(options, "merge", data)
    commit = commit_merge(store, result, st.local_head, st.remote_head, remote, options.actor)
    doc["commit"] = commit
    moved = {c.path for c in store.diff(st.local_head, commit, sizes=False) if c.new_id}
    with (
        store.lock(f"merge {remote}", timeout=options.lock_timeout),
        events_lock(target.path, timeout=options.lock_timeout),
    ):
        store.checkout(commit, expect_head=st.local_head)
        engine.verify_working(store, target.path, commit, options, only=moved)
    run.notes.append(f"merged into {commit[:12]}; 'usr push' fast-forwards {remote}")
    return "TRANSFERRED"


def merge(
    target: Any, remote: str, options: Any, audit_json_out: Path | None = None
) -> dict[str, Any]:
    """``usr merge DS REMOTE`` and ``usr pull DS REMOTE --merge``: fast-forward when the
    remote is ahead, merge when diverged, nothing when local holds the remote head.

    A dry run of the merge comes first (working trees, nothing recorded): when it finds
    conflicts the command stops there, so a conflict leaves even ``refs/heads/main`` of
    both sides where they were (a real run would record unrecorded work first). Returns
    the pull audit document, whose ``data.merge`` is the merge report.
    """
    from dataclasses import replace

    from usr.errors import UsageError
    from usr.sync import engine

    if target.kind != "dataset":
        raise UsageError("merge works on datasets, not single files (file mode)")
    options.merge = True
    if options.dry_run:
        return engine.pull(target, remote, options, audit_json_out)
    first = engine.pull(target, remote, replace(options, dry_run=True, confirm=None))
    rep = first["data"].get("merge")
    if rep is not None and not rep["mergeable"]:
        exc = MergeConflict(rep, first["data"])
        data = dict(first["data"], transfer_state="FAILED", error=exc.to_json())
        engine._write_audit(audit_json_out, dict(first, data=data))
        raise exc
    return engine.pull(target, remote, options, audit_json_out)


__all__ = [
    "Conflict",
    "MergeConflict",
    "MergeResult",
    "Resolution",
    "commit_merge",
    "merge",
    "merge_events",
    "merge_records",
    "merge_registry",
    "merge_trees",
    "needed_blobs",
    "preview",
    "report",
]
