"""Record-level diff of two states of a dataset: which records one state added or removed
(by ``id``), which records present in both changed, and which overlay values were set,
changed or cleared, per namespace and column.

Both states are read from the store, never as whole tables: ``records.parquet`` through a
seekable file over its store entry (:class:`usr.store.entryfile.EntryFile`), footer first,
then by row group. A row group at the same place in both files whose bytes are the same
(the same chunks cover it, else its raw bytes compare equal) holds the same records and is
skipped without decoding: after an append (usr's writer keeps every earlier row group byte
for byte) only the tail is read. (Groups are paired by index; one moved by a change before
it still pairs, its bytes being the same.) Ids are unique within a state (the gate refuses a table
that repeats one), so the records of skipped groups are in both states and the rest can be
diffed on their own: in passes over the remaining groups, each pass holding the ids of
one bucket (by their first two characters) and enough passes that a pass stays small.

Records with the same id are compared on the columns the id does not determine
(``alphabet``, ``length``, ``source``, ``created_at``; ``bio_type`` and ``sequence`` make
the id, which ``usr validate`` checks). Overlay values come from the ``_derived/<ns>/``
parts of each state, resolved as the overlay view resolves them (the newest part holding
an id wins); only ids named by a part that is in one state and not the other can resolve
differently, so only those are read. A record whose overlay values differ counts as
``changed`` when it is in both states.

Imports :mod:`usr.errors`, :mod:`usr.layout`, :mod:`usr.records`, :mod:`usr.overlays` and
:mod:`usr.store.entryfile`; no click, no sync.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from usr.errors import InputError, UsrError
from usr.layout import DERIVED_DIR, NAMESPACE_RE, RECORDS_FILE
from usr.overlays import Part, read_part_info, resolve_column
from usr.records import schema_problem
from usr.store.entryfile import EntryFile

#: Columns compared for a record in both states (the id determines bio_type and sequence).
COMPARED = ("alphabet", "length", "source", "created_at")
#: Decoded bytes one pass over the unmatched row groups may hold (both sides together).
PASS_BYTES = 48 << 20
DEFAULT_MAX_IDS = 20
KINDS = ("added", "removed", "changed")
#: The one-letter status of each kind in plumbing output (as diff-tree's A/D/M).
STATUS = {"added": "A", "removed": "D", "changed": "M"}
#: Called with ``(kind, id)`` for every id, as it is found (plumbing streams them).
OnId = Callable[[str, str], None]

_PRINTABLE = [chr(c) for c in range(0x20, 0x7F)]
_PREFIXES = pa.array([a + b for a in _PRINTABLE for b in _PRINTABLE], pa.string())


@dataclass
class RecordDiff:
    """What changed from state A to state B, record by record (counts, sample ids)."""

    max_ids: int = DEFAULT_MAX_IDS
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    samples: dict[str, list[str]] = field(default_factory=lambda: {k: [] for k in KINDS})
    #: ``{namespace: {column: {"set", "changed", "cleared"}}}`` for namespaces whose parts
    #: differ between the states.
    overlays: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=lambda: {"a": 0, "b": 0})
    row_groups: dict[str, int] = field(default_factory=lambda: {"a": 0, "b": 0, "skipped": 0})
    passes: int = 0
    on_id: OnId | None = None

    def note(self, kind: str, ids: pa.Array) -> None:
        """Count ``ids`` as ``kind``, keep the first few, and stream each to ``on_id``."""
        n = len(ids)
        if n == 0:
            return
        self.counts[kind] += n
        room = self.max_ids - len(self.samples[kind])
        if room > 0:
            self.samples[kind] += ids.slice(0, room).to_pylist()
        if self.on_id is not None:
            for value in ids.to_pylist():
                self.on_id(kind, value)

    def ids(self) -> list[str]:
        """At most ``max_ids`` ids: the added, then the removed, then the changed ones."""
        out: list[str] = []
        for kind in KINDS:
            out += self.samples[kind]
        return out[: self.max_ids]

    def to_json(self) -> dict[str, Any]:
        """The ``records`` document of ``usr show --rows``, ``usr diff --rows`` and
        ``usr plumbing diff-records --format json``."""
        total = sum(self.counts.values())
        return {
            **self.counts,
            "ids": self.ids(),
            "ids_truncated": total > len(self.ids()),
            "max_ids": self.max_ids,
            "samples": {k: list(v) for k, v in self.samples.items()},
            "overlays": self.overlays,
            "rows": {"before": self.rows["a"], "after": self.rows["b"]},
            "row_groups": {
                "before": self.row_groups["a"],
                "after": self.row_groups["b"],
                "skipped": self.row_groups["skipped"],
            },
        }


def diff_states(
    store: Any,
    a: str | None,
    b: str | None,
    max_ids: int = DEFAULT_MAX_IDS,
    on_id: OnId | None = None,
    labels: tuple[str, str] = ("A", "B"),
) -> RecordDiff:
    """The record diff from state ``a`` to state ``b`` (commits, revisions or tree ids of
    ``store``, whose objects must all be here; None is the empty state). ``labels`` name
    the two states in errors. Raises InputError when a state lacks ``records.parquet`` or
    it is not the core schema, before anything is reported."""
    if max_ids < 0:
        raise InputError(f"--max-ids must be 0 or more, got {max_ids}")
    tree_a = store.tree_of(a) if a is not None else None
    tree_b = store.tree_of(b) if b is not None else None
    pf_a = open_records(store, tree_a, labels[0])
    pf_b = open_records(store, tree_b, labels[1])
    out = RecordDiff(max_ids=max_ids, on_id=on_id)
    overlay_ids = _diff_overlays(store, tree_a, tree_b, out)
    same = _matched(store, tree_a, tree_b) if pf_a and pf_b else set()
    left = _diff_records(pf_a, pf_b, same, out, overlay_ids)
    if len(left):
        out.note("changed", left)
    return out


def open_records(store: Any, tree: str | None, label: str) -> pq.ParquetFile | None:
    """``records.parquet`` of a state as a Parquet file read through the store (None for
    the empty state), refused unless readable with the core schema."""
    if tree is None:
        return None
    blob = entry_id(store, tree, RECORDS_FILE)
    if blob is None:
        raise InputError(
            f"state {label} has no {RECORDS_FILE}",
            "a record diff needs the records table in both states",
        )
    try:
        pf = pq.ParquetFile(EntryFile(store, blob))
        schema = pf.schema_arrow.remove_metadata()
    except UsrError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parse failure is the refusal
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(
            f"{RECORDS_FILE} of state {label} is not readable Parquet: {why}"
        ) from None
    why = schema_problem(schema)
    if why is not None:
        raise InputError(
            f"{RECORDS_FILE} of state {label} is not the core schema: {why}",
            "usr validate DATASET names every problem",
        )
    return pf


def entry_id(store: Any, tree: str, path: str) -> str | None:
    """Blob id of the file at ``path`` (slash-separated) in a tree, or None; reads trees
    only, so the blob itself need not be here yet."""
    node = store.repo[tree]
    names = path.split("/")
    for depth, name in enumerate(names):
        try:
            entry = node[name]
        except KeyError:
            return None
        if depth == len(names) - 1:
            return str(entry.id) if entry.type_str == "blob" else None
        if entry.type_str != "tree":
            return None
        node = store.repo[entry.id]
    return None


def needed_blobs(store: Any, tree: str | None) -> list[str]:
    """The blobs a record diff reads from a state: ``records.parquet`` and every overlay
    part (what a diff against a remote fetches first)."""
    if tree is None:
        return []
    out = [blob for parts in _part_entries(store, tree).values() for _, blob in parts]
    records = entry_id(store, tree, RECORDS_FILE)
    return ([records] if records else []) + out


# -- records ---------------------------------------------------------------------------


def _spans(pf: pq.ParquetFile | None) -> list[tuple[int, int, int]]:
    """``(start, end, rows)`` of each row group: the bytes its column chunks occupy."""
    if pf is None:
        return []
    md = pf.metadata
    out = []
    for i in range(md.num_row_groups):
        rg = md.row_group(i)
        start, end = None, 0
        for j in range(rg.num_columns):
            col = rg.column(j)
            first = col.data_page_offset
            if col.has_dictionary_page and col.dictionary_page_offset:
                first = min(first, col.dictionary_page_offset)
            start = first if start is None else min(start, first)
            end = max(end, first + col.total_compressed_size)
        out.append((start or 0, end, rg.num_rows))
    return out


def _same_bytes(fa: EntryFile, fb: EntryFile, a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Whether ``fa[a]`` and ``fb[b]`` (byte ranges of equal length) hold the same bytes:
    equal when the same chunks cover the same place (nothing read), else by reading the
    raw bytes (never decoding). Page bytes name no file offsets, so a row group moved by
    a change before it still compares equal."""
    if a == b:
        covered = fa.chunks_covering(*a)
        if covered is not None and covered == fb.chunks_covering(*b):
            return True
    fa.seek(a[0])
    fb.seek(b[0])
    return fa.read(a[1] - a[0]) == fb.read(b[1] - b[0])


def _matched(store: Any, tree_a: str, tree_b: str) -> set[int]:
    """Indexes of the row groups holding the same bytes in both files (same index, rows
    and length; the place may differ)."""
    blob_a, blob_b = entry_id(store, tree_a, RECORDS_FILE), entry_id(store, tree_b, RECORDS_FILE)
    fa, fb = EntryFile(store, blob_a), EntryFile(store, blob_b)
    if blob_a == blob_b:
        return set(range(pq.ParquetFile(fa).metadata.num_row_groups))
    spans_a, spans_b = _spans(pq.ParquetFile(fa)), _spans(pq.ParquetFile(fb))
    return {
        i
        for i, (sa, sb) in enumerate(zip(spans_a, spans_b, strict=False))
        if sa[2] == sb[2] and sa[1] - sa[0] == sb[1] - sb[0] and _same_bytes(fa, fb, sa[:2], sb[:2])
    }


def _pass_count(pf: pq.ParquetFile | None, groups: list[int]) -> int:
    """Bytes of the compared columns in ``groups``, decoded (the footer says)."""
    if pf is None:
        return 0
    md = pf.metadata
    names = {"id", *COMPARED}
    total = 0
    for g in groups:
        rg = md.row_group(g)
        for j in range(rg.num_columns):
            if rg.column(j).path_in_schema in names:
                total += rg.column(j).total_uncompressed_size
    return total


def _bucket_mask(ids: pa.Array, bucket: int, passes: int) -> pa.Array:
    """Which ``ids`` fall in ``bucket`` of ``passes`` (by their first two characters)."""
    index = pc.fill_null(pc.index_in(pc.utf8_slice_codeunits(ids, 0, 2), value_set=_PREFIXES), 0)
    rest = pc.subtract(index, pc.multiply(pc.divide(index, passes), passes))
    return pc.equal(rest, bucket)


def _read_groups(
    pf: pq.ParquetFile | None, groups: list[int], bucket: int, passes: int
) -> pa.Table:
    """The compared columns of ``groups`` (one row group at a time), rows of one bucket."""
    pieces = []
    for g in groups if pf is not None else []:
        table = pf.read_row_group(g, columns=["id", *COMPARED])
        if passes > 1:
            table = table.filter(_bucket_mask(table.column("id").combine_chunks(), bucket, passes))
        pieces.append(table)
    if not pieces:
        return pa.table({"id": pa.array([], pa.string())})
    return pa.concat_tables(pieces).combine_chunks()


def _diff_records(
    pf_a: pq.ParquetFile | None,
    pf_b: pq.ParquetFile | None,
    same: set[int],
    out: RecordDiff,
    overlay_ids: pa.Array,
) -> pa.Array:
    """Added, removed and changed records, row groups ``same`` skipped; returns the
    ``overlay_ids`` not reported yet (records of both whose core columns did not change)."""
    out.rows = {
        "a": pf_a.metadata.num_rows if pf_a else 0,
        "b": pf_b.metadata.num_rows if pf_b else 0,
    }
    groups_a = [g for g in range(pf_a.metadata.num_row_groups if pf_a else 0) if g not in same]
    groups_b = [g for g in range(pf_b.metadata.num_row_groups if pf_b else 0) if g not in same]
    out.row_groups = {
        "a": pf_a.metadata.num_row_groups if pf_a else 0,
        "b": pf_b.metadata.num_row_groups if pf_b else 0,
        "skipped": len(same),
    }
    decoded = _pass_count(pf_a, groups_a) + _pass_count(pf_b, groups_b)
    passes = min(256, max(1, -(-2 * decoded // PASS_BYTES)))
    out.passes = passes if groups_a or groups_b else 0
    for bucket in range(out.passes):
        side_a = _read_groups(pf_a, groups_a, bucket, passes)
        side_b = _read_groups(pf_b, groups_b, bucket, passes)
        ids_a, ids_b = side_a.column("id"), side_b.column("id")
        in_b = pc.is_in(ids_a, value_set=ids_b)
        in_a = pc.is_in(ids_b, value_set=ids_a)
        added = ids_b.filter(pc.invert(in_a)).combine_chunks()
        removed = ids_a.filter(pc.invert(in_b)).combine_chunks()
        out.note("added", added)
        out.note("removed", removed)
        changed = _changed_rows(side_a.filter(in_b), side_b.filter(in_a))
        if len(overlay_ids):  # reported above, or not a record of both states
            drop = pa.concat_arrays([added, removed, changed])
            overlay_ids = overlay_ids.filter(pc.invert(pc.is_in(overlay_ids, value_set=drop)))
        out.note("changed", changed)
    return overlay_ids


def _changed_rows(a: pa.Table, b: pa.Table) -> pa.Array:
    """Ids of records in both (same ids, any order) whose compared columns differ."""
    if a.num_rows == 0:
        return pa.array([], pa.string())
    joined = a.join(b, keys="id", right_suffix="__b", join_type="inner")
    differ = pa.array([False] * joined.num_rows, pa.bool_())
    for name in COMPARED:
        x, y = joined.column(name), joined.column(name + "__b")
        equal = pc.or_(pc.fill_null(pc.equal(x, y), False), pc.and_(pc.is_null(x), pc.is_null(y)))
        differ = pc.or_(differ, pc.invert(equal))
    return joined.column("id").filter(differ).combine_chunks()


# -- overlays --------------------------------------------------------------------------


def _part_entries(store: Any, tree: str) -> dict[str, list[tuple[str, str]]]:
    """``{namespace: [(path, blob id), ...]}`` of the overlay parts in a tree."""
    root = store.repo[tree]
    try:
        derived = store.repo[root[DERIVED_DIR].id]
    except KeyError:
        return {}
    out: dict[str, list[tuple[str, str]]] = {}
    if derived.type_str != "tree":
        return out
    for ns in derived:
        if ns.type_str != "tree" or not NAMESPACE_RE.match(ns.name):
            continue
        parts = [
            (f"{DERIVED_DIR}/{ns.name}/{e.name}", str(e.id))
            for e in store.repo[ns.id]
            if e.type_str == "blob" and e.name.endswith(".parquet")
        ]
        if parts:
            out[ns.name] = sorted(parts)
    return out


def _parts(store: Any, entries: list[tuple[str, str]]) -> list[Part]:
    """Parts in resolution order (oldest first, as :func:`usr.overlays.list_parts`)."""
    parts = [read_part_info(Path(path), EntryFile(store, blob)) for path, blob in entries]
    return sorted(parts, key=lambda p: (p.created_at, p.path.name))


def _diff_overlays(store: Any, tree_a: str | None, tree_b: str | None, out: RecordDiff) -> pa.Array:
    """Per namespace and column, the values set, changed and cleared from A to B; returns
    the ids whose values differ (unique)."""
    entries_a = _part_entries(store, tree_a) if tree_a else {}
    entries_b = _part_entries(store, tree_b) if tree_b else {}
    changed: list[pa.Array] = []
    for ns in sorted(set(entries_a) | set(entries_b)):
        old, new = entries_a.get(ns, []), entries_b.get(ns, [])
        if old == new:
            continue
        read_a, read_b = _reader(store, old), _reader(store, new)
        parts_a, parts_b = _parts(store, old), _parts(store, new)
        named = [read_a(p, ["id"]).column("id") for p in parts_a if _entry(p, old) not in new]
        named += [read_b(p, ["id"]).column("id") for p in parts_b if _entry(p, new) not in old]
        ids = pc.unique(pa.chunked_array(named, pa.string()).combine_chunks())
        columns: list[str] = []
        for part in parts_a + parts_b:
            columns += [c for c in part.columns if c not in columns]
        out.overlays[ns] = {}
        for column in columns:
            va = resolve_column(parts_a, column, ids, read_a)
            vb = resolve_column(parts_b, column, ids, read_b)
            counts, differ = _compare_values(va, vb)
            out.overlays[ns][column] = counts
            changed.append(ids.filter(differ))
    if not changed:
        return pa.array([], pa.string())
    return pc.unique(pa.chunked_array(changed, pa.string()).combine_chunks())


def _reader(store: Any, entries: list[tuple[str, str]]) -> Callable[[Part, list[str]], pa.Table]:
    """Reads a part of one state from the store (its path names its blob in that state)."""
    blobs = dict(entries)

    def read(part: Part, columns: list[str]) -> pa.Table:
        return pq.read_table(EntryFile(store, blobs[part.path.as_posix()]), columns=columns)

    return read


def _entry(part: Part, entries: list[tuple[str, str]]) -> tuple[str, str]:
    path = part.path.as_posix()
    return (path, dict(entries)[path])


def _compare_values(va: pa.Array, vb: pa.Array) -> tuple[dict[str, int], pa.Array]:
    """Counts of values set, changed and cleared from ``va`` to ``vb``, and the mask of
    positions that differ."""
    valid_a, valid_b = pc.is_valid(va), pc.is_valid(vb)
    set_ = pc.and_(pc.invert(valid_a), valid_b)
    cleared = pc.and_(valid_a, pc.invert(valid_b))
    both = pc.and_(valid_a, valid_b)
    if pa.types.is_null(va.type) or pa.types.is_null(vb.type):
        changed = pa.array([False] * len(va), pa.bool_())
    else:
        try:
            changed = pc.and_(both, pc.invert(pc.fill_null(pc.equal(va, vb), True)))
        except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError):
            changed = both  # the column's type changed: every value present on both differs
    counts = {
        "set": pc.sum(set_.cast(pa.int64())).as_py() or 0,
        "changed": pc.sum(changed.cast(pa.int64())).as_py() or 0,
        "cleared": pc.sum(cleared.cast(pa.int64())).as_py() or 0,
    }
    return counts, pc.or_(pc.or_(set_, cleared), changed)


# -- text ------------------------------------------------------------------------------


def render_text(doc: dict[str, Any], indent: str = "") -> list[str]:
    """The record diff for people: counts, rows, sample ids, overlay values."""
    rows, groups = doc["rows"], doc["row_groups"]
    lines = [
        f"{indent}Records: +{doc['added']} added, -{doc['removed']} removed, "
        f"~{doc['changed']} changed (rows {rows['before']} -> {rows['after']}; "
        f"{groups['skipped']} unchanged row groups skipped)"
    ]
    for kind in KINDS:
        sample = doc["samples"][kind]
        if sample:
            more = doc[kind] - len(sample)
            tail = f" (and {more} more)" if more else ""
            lines.append(f"{indent}  {kind}: {' '.join(sample)}{tail}")
    for ns, columns in sorted(doc["overlays"].items()):
        shown = [
            f"{col} {c['set']} set, {c['changed']} changed, {c['cleared']} cleared"
            for col, c in columns.items()
        ]
        lines.append(f"{indent}  overlay {ns}: {'; '.join(shown) or 'parts moved, no values'}")
    return lines
