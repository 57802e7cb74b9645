"""Overlay parts: annotation columns attached to records, kept beside them, never inside.

An attach writes one immutable part, ``_derived/<namespace>/part-<utc>-<rand>.parquet``,
holding ``id`` plus ``<namespace>__<field>`` columns in their registered types. Each part
carries Parquet key/value stamps (namespace, key, created_at, registry hash, contract hash)
so a reader can tell where and under which contract it was written. The overlay view is the
base rows plus every overlay column; for each key the newest part that has the column wins.
Parts are written whole and with page checksums, so a damaged part is caught on read.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from usr.atomic import atomic_writer
from usr.errors import InputError, VerifyError
from usr.layout import DERIVED_DIR, NAMESPACE_RE
from usr.registry import Namespace, Registry, qualify, type_name

STAMP_KEYS = ("namespace", "key", "key_col", "created_at", "registry_hash", "contract_hash")
_PREFIX = "usr:"


@dataclass(frozen=True)
class Part:
    path: Path
    namespace: str
    created_at: str
    columns: tuple[str, ...]
    stamps: dict[str, str]
    num_rows: int


def read_part_info(path: Path, source: Any = None) -> Part:
    """The stamps and columns of one part, from its footer only; ``source`` (a seekable
    file, e.g. over a store entry) is read instead of ``path`` when given."""
    try:
        meta = pq.read_metadata(path if source is None else source)
    except (pa.ArrowInvalid, OSError) as exc:
        raise VerifyError(f"overlay part {path} is unreadable: {exc}") from exc
    raw = meta.metadata or {}
    stamps = {
        k.decode()[len(_PREFIX) :]: v.decode()
        for k, v in raw.items()
        if k.decode(errors="replace").startswith(_PREFIX)
    }
    names = tuple(n for n in meta.schema.to_arrow_schema().names if n != "id")
    return Part(
        path=path,
        namespace=stamps.get("namespace", path.parent.name),
        created_at=stamps.get("created_at", ""),
        columns=names,
        stamps=stamps,
        num_rows=meta.num_rows,
    )


def list_parts(dataset_dir: Path) -> dict[str, list[Part]]:
    """Parts per namespace directory, oldest first (by stamp, then by file name)."""
    base = dataset_dir / DERIVED_DIR
    out: dict[str, list[Part]] = {}
    if not base.is_dir():
        return out
    for ns_dir in sorted(p for p in base.iterdir() if p.is_dir() and not p.is_symlink()):
        if not NAMESPACE_RE.match(ns_dir.name):
            continue
        parts = [read_part_info(p) for p in sorted(ns_dir.glob("*.parquet")) if p.is_file()]
        if parts:
            out[ns_dir.name] = sorted(parts, key=lambda p: (p.created_at, p.path.name))
    return out


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t)


def conform(arr: pa.Array, target: pa.DataType, name: str, from_text: bool) -> pa.Array:
    """``arr`` in the registered type ``target``, or an InputError naming the column.

    Lossless numeric widening and nulls are accepted; text is parsed only when the input
    format is text (CSV/TSV), where every value arrives as a string. Anything else is a
    contract violation rather than something to guess about.
    """
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    if pa.types.is_dictionary(arr.type):  # e.g. a categorical written by pandas
        arr = arr.dictionary_decode()
    if arr.type == target:
        return arr
    mismatch = InputError(
        f"column {name!r} is {arr.type}, not its registered type {_show(target)}",
        "fix the input or register a namespace with matching types",
    )
    try:
        if pa.types.is_null(arr.type):
            return arr.cast(target)
        if from_text and _is_text(arr.type):
            if _is_text(target):
                return arr.cast(target)
            arr = pc.if_else(pc.equal(pc.utf8_trim_whitespace(arr), ""), None, arr)
            if pa.types.is_list(target):
                values = [None if v is None else json.loads(v) for v in arr.to_pylist()]
                return pa.array(values, type=target)
            return arr.cast(target, safe=True)
        if _numeric(arr.type) and _numeric(target):
            if pa.types.is_floating(arr.type) and pa.types.is_integer(target):
                raise mismatch
            return arr.cast(target, safe=True)
        if pa.types.is_list(arr.type) and pa.types.is_list(target):
            inner = conform(arr.flatten(), target.value_type, name, from_text=False)
            offsets = arr.offsets
            return pa.ListArray.from_arrays(offsets, inner, mask=arr.is_null()).cast(target)
    except (
        pa.ArrowInvalid,
        pa.ArrowNotImplementedError,
        pa.ArrowTypeError,
        ValueError,
        TypeError,
    ) as exc:
        raise InputError(
            f"column {name!r} does not fit its registered type {_show(target)}: "
            f"{' '.join(str(exc).split())[:160]}",
            "fix the input values",
        ) from exc
    raise mismatch


def _show(t: pa.DataType) -> str:
    try:
        return type_name(t)
    except InputError:
        return str(t)


def _first_of_each(ids: pa.Array) -> pa.Array:
    """Mask of the first row of each run of equal ``ids`` (``ids`` sorted)."""
    n = len(ids)
    if n == 0:
        return pa.array([], type=pa.bool_())
    prev = pa.concat_arrays([pa.array([None], type=ids.type), ids.slice(0, n - 1)])
    return pc.fill_null(pc.not_equal(ids, prev), True)


def resolve_keys(
    table: pa.Table,
    key: str,
    key_col: str,
    records: pa.Table,
    allow_missing: bool,
) -> tuple[pa.Table, int]:
    """Map the key column to record ids; returns (table with ``id`` first, rows dropped).

    Refuses null keys, keys repeated within the part, and keys absent from the dataset
    (unless ``allow_missing``, which drops them), so a part never points at nothing.
    """
    if key not in ("id", "sequence"):
        raise InputError(f"unknown key {key!r}", "use --key id or --key sequence")
    if key_col not in table.column_names:
        raise InputError(
            f"key column {key_col!r} is not in the input",
            f"columns are: {', '.join(table.column_names)}",
        )
    if table.num_rows == 0:
        raise InputError("input has no rows")
    keys = table.column(key_col).combine_chunks()
    if pa.types.is_dictionary(keys.type):
        keys = keys.dictionary_decode()
    if pa.types.is_null(keys.type):
        raise InputError(f"key column {key_col!r} has empty keys")
    if not _is_text(keys.type):
        raise InputError(f"key column {key_col!r} must be text, not {keys.type}")
    keys = pc.utf8_trim_whitespace(keys.cast(pa.string()))
    if keys.null_count or pc.any(pc.equal(keys, "")).as_py():
        raise InputError(f"key column {key_col!r} has empty keys")
    counts = pa.table({"k": keys}).group_by("k").aggregate([("k", "count")])
    dups = counts.filter(pc.greater(counts.column("k_count"), 1)).column("k").to_pylist()
    if dups:
        raise InputError(
            f"{len(dups)} key(s) repeat within the part, e.g. {sorted(dups)[0]!r}",
            "each key may appear once per attach",
        )
    if key == "id":
        ids = keys
        present = pc.is_in(ids, value_set=records.column("id").combine_chunks())
    else:
        seqs = records.column("sequence").combine_chunks()
        hits = records.filter(pc.is_in(seqs, value_set=keys))
        hc = hits.group_by("sequence").aggregate([("id", "count")])
        amb = hc.filter(pc.greater(hc.column("id_count"), 1)).column("sequence").to_pylist()
        if amb:
            raise InputError(
                f"sequence key is ambiguous: {len(amb)} sequence(s) belong to several records",
                "attach with --key id",
            )
        idx = pc.index_in(keys, value_set=hits.column("sequence").combine_chunks())
        ids = pc.take(hits.column("id").combine_chunks(), idx)
        present = pc.is_valid(ids)
    missing = len(keys) - (pc.sum(present.cast(pa.int64())).as_py() or 0)
    if missing and not allow_missing:
        first = keys.filter(pc.invert(present))[0].as_py()
        raise InputError(
            f"{missing} key(s) are not in the dataset, e.g. {first!r}",
            "pass --allow-missing to attach only the keys that exist",
        )
    out = table.append_column("__usr_id", ids).filter(present)
    if out.num_rows == 0:
        raise InputError("none of the keys are in the dataset")
    return out, missing


def build_part(
    table: pa.Table,
    namespace: Namespace,
    columns: list[str] | None,
    key_col: str,
    from_text: bool,
) -> pa.Table:
    """The part table: ``id`` then the chosen overlay columns in their registered types."""
    registered = namespace.arrow_types()
    chosen = columns or [
        c
        for c in table.column_names
        if c not in (key_col, "__usr_id") and _safe_qualify(namespace.name, c) in registered
    ]
    if not chosen:
        raise InputError(
            f"no columns of namespace {namespace.name!r} to attach",
            f"registered: {', '.join(registered)}",
        )
    arrays, names = [table.column("__usr_id").combine_chunks()], ["id"]
    for col in chosen:
        qualified = qualify(namespace.name, col)
        if qualified not in registered:
            raise InputError(
                f"column {qualified!r} is not registered in namespace {namespace.name!r}",
                f"registered: {', '.join(registered)}",
            )
        source = col if col in table.column_names else qualified
        if source not in table.column_names:
            raise InputError(
                f"column {col!r} is not in the input",
                f"columns are: {', '.join(table.column_names)}",
            )
        if qualified in names:
            raise InputError(f"column {qualified!r} given twice")
        arrays.append(conform(table.column(source), registered[qualified], qualified, from_text))
        names.append(qualified)
    return pa.Table.from_arrays(arrays, names=names)


def _safe_qualify(namespace: str, name: str) -> str | None:
    try:
        return qualify(namespace, name)
    except InputError:
        return None


def write_part(
    dataset_dir: Path,
    part: pa.Table,
    namespace: Namespace,
    registry: Registry,
    key: str,
    key_col: str,
) -> Path:
    """Write ``part`` as a new, stamped, checksummed file; returns its path."""
    now = datetime.now(UTC)
    stamps = {
        "namespace": namespace.name,
        "key": key,
        "key_col": key_col,
        "created_at": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "registry_hash": registry.hash(),
        "contract_hash": namespace.contract_hash(),
    }
    name = f"part-{now.strftime('%Y%m%dT%H%M%S%fZ')}-{secrets.token_hex(4)}.parquet"
    path = dataset_dir / DERIVED_DIR / namespace.name / name
    schema = part.schema.with_metadata({f"{_PREFIX}{k}": v for k, v in stamps.items()})
    with atomic_writer(path) as fh:
        pq.write_table(
            part.cast(schema),
            fh,
            compression="zstd",
            write_page_checksum=True,
            store_schema=True,
        )
    return path


def read_part(part: Part, columns: list[str]) -> pa.Table:
    try:
        return pq.read_table(part.path, columns=columns, page_checksum_verification=True)
    except (pa.ArrowInvalid, OSError) as exc:
        raise VerifyError(f"overlay part {part.path} is unreadable: {exc}") from exc


def resolve_column(
    parts: list[Part],
    column: str,
    ids: pa.Array,
    read: Callable[[Part, list[str]], pa.Table] | None = None,
) -> pa.Array:
    """Values of ``column`` for ``ids`` (same order); the newest part with a key wins.
    ``read`` reads a part's columns (default: the working file; the record diff reads
    parts of a recorded state from the store)."""
    read = read or read_part
    pieces = []
    for rank, part in enumerate(parts):
        if column not in part.columns:
            continue
        t = read(part, ["id", column])
        t = t.filter(pc.is_in(t.column("id"), value_set=ids))
        pieces.append(t.append_column("__rank", pa.array([rank] * t.num_rows, pa.int32())))
    if not pieces:
        return pa.nulls(len(ids))
    try:
        both = pa.concat_tables(pieces, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise VerifyError(f"parts of {column!r} disagree on its type: {exc}") from exc
    both = both.sort_by([("id", "ascending"), ("__rank", "descending")])
    latest = both.filter(_first_of_each(both.column("id").combine_chunks()))
    idx = pc.index_in(ids, value_set=latest.column("id").combine_chunks())
    return pc.take(latest.column(column).combine_chunks(), idx)


def overlay_columns(parts_by_ns: dict[str, list[Part]]) -> list[tuple[str, list[Part]]]:
    """Every overlay column, in namespace order then first-appearance order."""
    cols: list[tuple[str, list[Part]]] = []
    for ns in sorted(parts_by_ns):
        seen: list[str] = []
        for part in parts_by_ns[ns]:
            seen += [c for c in part.columns if c not in seen]
        cols += [(c, parts_by_ns[ns]) for c in seen]
    return cols


def apply_overlays(base: pa.Table, dataset_dir: Path) -> pa.Table:
    """``base`` rows with every overlay column appended (the overlay view)."""
    ids = base.column("id").combine_chunks()
    out = base
    for column, parts in overlay_columns(list_parts(dataset_dir)):
        if column in out.column_names:
            continue
        out = out.append_column(column, resolve_column(parts, column, ids))
    return out
