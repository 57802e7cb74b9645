"""A dataset: ``<root>/<id>/`` with its records, overlays, event log and meta.md.

This is the Python API batch writers call directly; the lifecycle CLI is a thin layer over
it. Every mutating method follows one order: validate everything, write under the dataset
lock (atomically, so a refusal leaves every file byte-identical), append one event line,
then record a state in the object store through :meth:`Dataset.record_state`.

    ds = Dataset.init(root, "densegen/my_dataset", source="densegen run 7")
    ds.append_records([{"sequence": "ACGT"}], bio_type="dna")
    ds.attach("scores.csv", namespace="infer", key="id", key_col="id", columns=["ll"])
    ds.head(5)

It sits above the records, overlays, events, registry and sidecar modules and imports the
store only when it needs one (recording a state, ``info``'s head). ``usr validate``'s
checks live in :mod:`usr.validation` (:func:`validate_dataset` is re-exported here).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from usr import events as ev
from usr import importers, overlays, records, sidecars
from usr.atomic import atomic_writer, write_text
from usr.errors import InputError, NotFoundError, UsageError
from usr.layout import (
    META_FILE,
    RECORDS_FILE,
    STORE_DIR,
    dataset_path,
    mark_root,
    refuse_symlinks,
    resolve_root,
    validate_dataset_id,
)
from usr.locks import dataset_lock
from usr.registry import Registry, type_name
from usr.validation import validate_dataset

ON_DUPLICATE = ("error", "skip")


@dataclass
class AppendResult:
    added: int
    skipped: int
    rows: int
    event: dict[str, Any] = field(default_factory=dict)
    #: Input columns that were read but not kept (an ``id`` column: ids are always
    #: ``sha1(bio_type|sequence)``, computed here), so the caller can say so.
    ignored: list[str] = field(default_factory=list)


@dataclass
class AttachResult:
    part: Path
    namespace: str
    rows: int
    missing: int
    columns: list[str]
    event: dict[str, Any] = field(default_factory=dict)


def _as_table(data: pa.Table | Iterable[Mapping[str, Any]]) -> pa.Table:
    if isinstance(data, pa.Table):
        return data
    rows = list(data)
    if not rows:
        raise InputError("input has no rows")
    names = list(dict.fromkeys(k for row in rows for k in row))
    try:
        return pa.Table.from_pydict({k: [row.get(k) for row in rows] for k in names})
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise InputError(f"rows do not form a table: {exc}") from exc


class Dataset:
    """One dataset directory. Create with :meth:`init`, reach with :meth:`open`."""

    def __init__(self, root: Path, dataset_id: str) -> None:
        self.root = resolve_root(root)
        self.id = validate_dataset_id(dataset_id)
        self.path = dataset_path(self.root, dataset_id)

    def __repr__(self) -> str:
        return f"Dataset({str(self.root)!r}, {self.id!r})"

    @property
    def records_path(self) -> Path:
        return self.path / RECORDS_FILE

    # -- lifecycle ---------------------------------------------------------------------

    @classmethod
    def open(cls, root: Path | str | None, dataset_id: str) -> Dataset:
        """The existing dataset ``dataset_id`` under ``root`` (NotFoundError otherwise)."""
        ds = cls(resolve_root(root), dataset_id)
        refuse_symlinks(ds.root, ds.id)
        if not ds.records_path.is_file():
            raise NotFoundError(
                f"dataset {dataset_id!r} not found under {ds.root}",
                f"run: usr --root {ds.root} init {dataset_id}",
            )
        return ds

    @classmethod
    def init(
        cls,
        root: Path | str | None,
        dataset_id: str,
        source: str = "",
        notes: str = "",
        actor: str | None = None,
    ) -> Dataset:
        """Create an empty dataset: records.parquet (core schema), meta.md, first event."""
        ds = cls(resolve_root(root), dataset_id)
        refuse_symlinks(ds.root, ds.id)
        if ds.records_path.exists():
            raise InputError(f"dataset {dataset_id!r} already exists at {ds.path}")
        if ds.path.exists() and (not ds.path.is_dir() or any(ds.path.iterdir())):
            raise InputError(
                f"{ds.path} exists and is not an empty directory", "pick another dataset id"
            )
        if "/" in dataset_id and (ds.root / dataset_id.split("/")[0] / RECORDS_FILE).exists():
            raise InputError(
                f"{dataset_id.split('/')[0]!r} is a dataset, not a namespace directory"
            )
        ds.path.mkdir(parents=True, exist_ok=True)
        mark_root(ds.root)
        with dataset_lock(ds.path, what="init"):
            created = records.now_utc().strftime("%Y-%m-%dT%H:%M:%SZ")
            records.write_records(ds.records_path, [], records.CORE_SCHEMA)
            # meta.md syncs to every machine: a URL password in the source stays out of it.
            shown = ev.redact_text(source)
            meta = f"# {dataset_id}\n\n- created_at: {created}\n- source: {shown}\n"
            write_text(ds.path / META_FILE, meta + (f"\n## Notes\n\n{notes}\n" if notes else ""))
            ds.append_event("init", {"source": source}, actor=actor)
        ds.record_state("init", actor=actor)
        return ds

    def record_state(self, action: str, actor: str | None = None) -> Any:
        """Record the working files as a commit: the one call every mutation ends with."""
        from usr.actor import current_actor
        from usr.store import Store

        return Store.open(self.path).record(action, actor or current_actor())

    def append_event(
        self,
        action: str,
        args: dict[str, Any] | None = None,
        actor: str | None = None,
        record: bool = False,
    ) -> dict[str, Any]:
        """Append one line to ``.events.log`` (secrets in ``args`` redacted).

        With ``record``, also record the state. It is off by default because callers
        usually log as one step of a larger write made under the dataset lock, and
        recording takes that lock; they call :meth:`record_state` once, after releasing it.
        """
        event = ev.append_event(self.path, action, self.id, args, actor)
        if record:
            self.record_state(action, actor=actor)
        return event

    def read_meta(self) -> str:
        """``meta.md``: free-form notes people keep with the dataset ('' if absent)."""
        try:
            return (self.path / META_FILE).read_text(encoding="utf-8")
        except FileNotFoundError:
            return ""

    def write_meta(self, text: str, actor: str | None = None) -> None:
        """Replace ``meta.md`` atomically, log it, and record the state."""
        with dataset_lock(self.path, what="meta"):
            write_text(self.path / META_FILE, text if text.endswith("\n") else text + "\n")
            self.append_event("meta", {"bytes": len(text.encode())}, actor=actor)
        self.record_state("meta", actor=actor)

    # -- records -----------------------------------------------------------------------

    def append_records(
        self,
        data: pa.Table | Iterable[Mapping[str, Any]],
        *,
        bio_type: str | None = None,
        alphabet: str | None = None,
        source: str | None = None,
        on_duplicate: str = "error",
        actor: str | None = None,
        action: str = "import",
        event_args: dict[str, Any] | None = None,
    ) -> AppendResult:
        """Append rows (a table or dicts with at least ``sequence``) at the end.

        Duplicate ids -- within ``data`` or against the dataset -- are refused unless
        ``on_duplicate="skip"``, which keeps the first occurrence.
        """
        if on_duplicate not in ON_DUPLICATE:
            raise UsageError(f"bad on_duplicate {on_duplicate!r}", "use error or skip")
        new = records.build_records(
            _as_table(data), bio_type=bio_type, alphabet=alphabet, source=source
        )
        with dataset_lock(self.path, what=action):
            existing = records.read_records(self.records_path, columns=["id"]).column("id")
            new, skipped = self._drop_duplicates(new, existing, on_duplicate)
            if new.num_rows:
                schema = records.read_schema(self.records_path).remove_metadata()
                if not schema.equals(records.CORE_SCHEMA):
                    raise InputError(
                        f"{self.records_path} does not have the core schema; cannot append",
                        "run: usr validate " + self.id,
                    )
                batches = _chain(records.iter_batches(self.records_path), new.to_batches())
                records.write_records(self.records_path, batches, records.CORE_SCHEMA)
            args = {"added": new.num_rows, "skipped": skipped, **(event_args or {})}
            event = self.append_event(action, args, actor=actor)
        self.record_state(action, actor=actor)
        return AppendResult(new.num_rows, skipped, len(existing) + new.num_rows, event)

    @staticmethod
    def _drop_duplicates(
        new: pa.Table, existing: pa.ChunkedArray, on_duplicate: str
    ) -> tuple[pa.Table, int]:
        dups_inside = records.duplicate_ids(new)
        clash = pc.is_in(new.column("id"), value_set=existing.combine_chunks())
        n_clash = pc.sum(clash.cast(pa.int64())).as_py() or 0
        if on_duplicate == "error" and (dups_inside or n_clash):
            first = dups_inside[0] if dups_inside else new.filter(clash).column("id")[0]
            where = "repeat within the input" if dups_inside else "are already in the dataset"
            count = len(dups_inside) if dups_inside else n_clash
            raise InputError(
                f"{count} record id(s) {where}, e.g. {str(first)!r}",
                "pass --on-duplicate skip to keep the existing rows",
            )
        before = new.num_rows
        new = new.filter(pc.invert(clash))
        if dups_inside:
            idx = pa.array(range(new.num_rows), type=pa.int64())
            firsts = (
                new.append_column("__i", idx)
                .group_by("id", use_threads=False)
                .aggregate([("__i", "min")])
                .column("__i_min")
            )
            new = new.take(pa.array(sorted(firsts.to_pylist()), type=pa.int64()))
        return new, before - new.num_rows

    def import_file(
        self,
        path: Path | str,
        fmt: str | None = None,
        **kwargs: Any,
    ) -> AppendResult:
        """Append the rows of a csv/tsv/parquet/jsonl file (see :meth:`append_records`)."""
        table = importers.read_table(
            Path(path), fmt, text_columns=["sequence", "bio_type", "alphabet", "source"]
        )
        args = {"path": str(path), "format": importers.format_of(Path(path), fmt)}
        args.update(kwargs.pop("event_args", None) or {})
        result = self.append_records(table, event_args=args, **kwargs)
        if "id" in table.column_names:
            result.ignored.append("id")
        return result

    # -- overlays ----------------------------------------------------------------------

    def attach(
        self,
        data: pa.Table | Path | str,
        *,
        namespace: str,
        key: str = "id",
        key_col: str | None = None,
        columns: list[str] | None = None,
        allow_missing: bool = False,
        allow_overwrite: bool = False,
        fmt: str | None = None,
        actor: str | None = None,
        event_args: dict[str, Any] | None = None,
    ) -> AttachResult:
        """Attach overlay columns of a registered namespace as one new part.

        ``data`` is a table or a csv/tsv/parquet/jsonl file; ``key_col`` (default: ``key``)
        holds record ids or sequences. Refused unless every column is registered and fits
        its type, keys are unique and present (or ``allow_missing``), and no existing
        overlay value would be replaced (or ``allow_overwrite``).
        """
        registry = Registry.load(self.root)
        ns = registry.get(namespace)
        key_col = key_col or key
        from_text = False
        if isinstance(data, pa.Table):
            table = data
        else:
            path = Path(data)
            fmt = importers.format_of(path, fmt)
            from_text = fmt in importers.TEXT_FORMATS
            table = importers.read_table(path, fmt, text_columns=list(_all_csv_columns(path, fmt)))
        with dataset_lock(self.path, what=f"attach {namespace}"):
            base = records.read_records(self.records_path, columns=["id", "sequence"])
            keyed, missing = overlays.resolve_keys(table, key, key_col, base, allow_missing)
            part = overlays.build_part(keyed, ns, columns, key_col, from_text)
            if not allow_overwrite:
                self._refuse_overwrite(part, namespace)
            written = overlays.write_part(self.path, part, ns, registry, key, key_col)
            # Validated and written by usr: freeze its contract, vouch for it (docs/hooks.md).
            sidecars.record_overlay_part(self.path, written, ns)
            cols = part.column_names[1:]
            args = {
                "namespace": namespace,
                "key": key,
                "key_col": key_col,
                "columns": cols,
                "rows": part.num_rows,
                "missing": missing,
                "part": written.relative_to(self.path).as_posix(),
                **(event_args or {}),
            }
            event = self.append_event(f"attach {namespace}", args, actor=actor)
        self.record_state(f"attach {namespace}", actor=actor)
        return AttachResult(written, namespace, part.num_rows, missing, cols, event)

    def _refuse_overwrite(self, part: pa.Table, namespace: str) -> None:
        parts = overlays.list_parts(self.path).get(namespace, [])
        ids = part.column("id").combine_chunks()
        for column in part.column_names[1:]:
            current = overlays.resolve_column(parts, column, ids)
            n = len(current) - current.null_count
            if n:
                raise InputError(
                    f"attach would overwrite {n} existing value(s) of {column!r}",
                    "pass --allow-overwrite to replace them",
                )

    # -- reading -----------------------------------------------------------------------

    def head(self, n: int = 5, overlay: bool = True) -> pa.Table:
        """The first ``n`` rows of the overlay view (reads only what it needs)."""
        batches = []
        have = 0
        for batch in records.iter_batches(self.records_path):
            if have >= n:
                break
            batches.append(batch.slice(0, n - have))
            have += batches[-1].num_rows
        schema = records.read_schema(self.records_path).remove_metadata()
        base = pa.Table.from_batches(batches, schema=schema) if batches else schema.empty_table()
        return overlays.apply_overlays(base, self.path) if overlay else base

    def to_table(self, overlay: bool = True) -> pa.Table:
        """Every row of the overlay view (base rows plus overlay columns)."""
        base = records.read_records(self.records_path)
        base = base.replace_schema_metadata(None)
        return overlays.apply_overlays(base, self.path) if overlay else base

    def schema(self) -> list[dict[str, Any]]:
        """Columns of the overlay view, each with its origin (core, extra, or namespace)."""
        out = []
        for f in records.read_schema(self.records_path):
            origin = "core" if f.name in records.CORE_COLUMNS else "extra"
            out.append({"name": f.name, "type": str(f.type), "origin": origin})
        for column, parts in overlays.overlay_columns(overlays.list_parts(self.path)):
            newest = next(p for p in reversed(parts) if column in p.columns)
            dtype = pq.read_schema(newest.path).field(column).type
            out.append({"name": column, "type": _type_text(dtype), "origin": newest.namespace})
        return out

    def events_tail(self, n: int = 5) -> list[dict[str, Any]]:
        return ev.tail(self.path, n)

    def info(self) -> dict[str, Any]:
        parts = overlays.list_parts(self.path)
        return {
            "dataset": self.id,
            "path": str(self.path),
            "rows": records.num_rows(self.records_path),
            "records_bytes": self.records_path.stat().st_size,
            "columns": len(records.read_schema(self.records_path)),
            "namespaces": {
                ns: {
                    "parts": len(ps),
                    "rows": sum(p.num_rows for p in ps),
                    "columns": [c for c, _ in overlays.overlay_columns({ns: ps})],
                }
                for ns, ps in parts.items()
            },
            "events": len(ev.read_events(self.path)),
            "meta": (self.path / META_FILE).is_file(),
            "head": self._store_head(),
        }

    def _store_head(self) -> str | None:
        if not (self.path / STORE_DIR).is_dir():
            return None
        try:
            from usr.store import Store

            return Store.open(self.path, create=False).head()
        except Exception:  # noqa: BLE001 - info must work while the store is damaged
            return None

    def validate(self, strict: bool = False) -> dict[str, Any]:
        """Check records, overlays, events and meta; see :func:`validate_dataset`."""
        return validate_dataset(self, strict)

    def export(self, fmt: str, out_dir: Path | str, overwrite: bool = False) -> Path:
        """Write the overlay view to ``<out_dir>/<id with / as __>.<fmt>`` atomically."""
        if fmt not in ("csv", "parquet"):
            raise InputError(f"unknown export format {fmt!r}", "use csv or parquet")
        out = Path(out_dir) / f"{self.id.replace('/', '__')}.{fmt}"
        if out.exists() and not overwrite:
            raise UsageError(f"{out} exists", "pass -y to overwrite it")
        table = self.to_table()
        with atomic_writer(out) as fh:
            if fmt == "parquet":
                pq.write_table(table, fh, compression="zstd")
            else:
                pcsv.write_csv(_csv_ready(table), fh)
        return out


def _type_text(dtype: pa.DataType) -> str:
    try:
        return type_name(dtype)
    except InputError:
        return str(dtype)


def _chain(*iterables: Iterable[Any]) -> Iterable[Any]:
    for it in iterables:
        yield from it


def _all_csv_columns(path: Path, fmt: str) -> list[str]:
    """Header names of a CSV/TSV, so attach can read every value as text and parse it into
    the registered type itself (rather than trusting a reader's guess)."""
    if fmt not in importers.TEXT_FORMATS:
        return []
    try:
        with path.open("r", encoding="utf-8", newline="") as fh:
            header = fh.readline()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {path} as {fmt}: {exc}") from exc
    return [
        h.strip().strip('"') for h in header.rstrip("\r\n").split("\t" if fmt == "tsv" else ",")
    ]


def _csv_ready(table: pa.Table) -> pa.Table:
    """Nested columns as JSON text, since CSV has no lists."""
    cols = []
    for column in table.columns:
        if pa.types.is_nested(column.type):
            values = [None if v is None else json.dumps(v) for v in column.to_pylist()]
            column = pa.array(values, type=pa.string())
        cols.append(column)
    return pa.Table.from_arrays(cols, names=table.column_names)


def list_datasets(root: Path | str | None) -> list[str]:
    """Ids of every dataset under ``root`` (flat and namespace-qualified), sorted."""
    base = resolve_root(root)
    found: list[str] = []
    if not base.is_dir():
        return found
    for top in sorted(base.iterdir()):
        if not top.is_dir() or top.is_symlink() or top.name.startswith((".", "_")):
            continue
        if (top / RECORDS_FILE).is_file():
            found.append(top.name)
            continue
        for sub in sorted(top.iterdir()):
            if sub.is_dir() and not sub.is_symlink() and (sub / RECORDS_FILE).is_file():
                found.append(f"{top.name}/{sub.name}")
    return found
