"""Dataset lifecycle commands: namespace, init, import, attach, ls, info, head, schema,
events tail, validate, export.

Each command is a thin layer over :mod:`usr.dataset` and :mod:`usr.registry`: it parses
flags, calls one library function, and prints. Read commands print through ``emit`` so
``--format json`` is the versioned envelope and nothing else.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from porcelain.options import (
    Settings,
    dataset_argument,
    emit,
    format_option,
    pass_settings,
    warn,
    yes_option,
)
from usr import registry as reg
from usr.dataset import Dataset, list_datasets
from usr.errors import UsageError, VerifyError
from usr.importers import FORMATS

_KEY_CHOICES = click.Choice(["id", "sequence"])


def _cell(value: Any, width: int = 24) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def render_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """Rows as aligned text columns (long values cut), for people, never for scripts."""
    if not columns:
        return "(no columns)"
    cells = [[_cell(c) for c in columns]] + [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


# -- namespace -----------------------------------------------------------------------------


@click.group("namespace")
def namespace() -> None:
    """Register and inspect overlay namespaces (registry.toml under the root)."""


@namespace.command("register")
@click.argument("name", metavar="NS")
@click.option(
    "--columns",
    required=True,
    help="Typed columns, e.g. 'ns__a:float64,ns__v:list<float64>'.",
)
@click.option("--owner", default="", help="Who owns the namespace.")
@click.option("--description", default="", help="What its columns mean.")
@format_option
@pass_settings
def namespace_register(
    settings: Settings, name: str, columns: str, owner: str, description: str, fmt: str
) -> None:
    """Register namespace NS and its column contract."""
    reg.validate_namespace(name)
    parsed = reg.parse_columns(name, columns)
    ns, created = reg.register(settings.root, name, parsed, owner=owner, description=description)
    verb = "registered" if created else "already registered (same columns)"
    emit(fmt, {**ns.to_dict(), "created": created}, f"namespace {name} {verb}")


@namespace.command("list")
@format_option
@pass_settings
def namespace_list(settings: Settings, fmt: str) -> None:
    """List the namespaces registered in <root>/registry.toml, with column counts."""
    registry = reg.Registry.load(settings.root)
    items = [ns.to_dict() for _, ns in sorted(registry.namespaces.items())]
    rows = [
        {"namespace": i["namespace"], "columns": len(i["columns"]), "owner": i["owner"]}
        for i in items
    ]
    text = render_table(rows, ["namespace", "columns", "owner"]) if rows else "(no namespaces)"
    emit(fmt, items, text)


@namespace.command("show")
@click.argument("name", metavar="NS")
@format_option
@pass_settings
def namespace_show(settings: Settings, name: str, fmt: str) -> None:
    """Show one namespace's contract."""
    ns = reg.Registry.load(settings.root).get(name)
    data = ns.to_dict()
    lines = [
        f"namespace: {ns.name}",
        f"owner: {ns.owner}",
        f"description: {ns.description}",
        f"created_at: {ns.created_at}",
        f"contract_hash: {data['contract_hash']}",
        "columns:",
        *[f"  {n}: {t}" for n, t in ns.columns],
    ]
    emit(fmt, data, "\n".join(lines))


# -- dataset lifecycle -------------------------------------------------------------------


@click.command("init")
@dataset_argument
@click.option("--source", default="", help="Where the data comes from (goes to meta.md).")
@click.option("--notes", default="", help="Free text for meta.md.")
@format_option
@pass_settings
def init(settings: Settings, dataset: str, source: str, notes: str, fmt: str) -> None:
    """Create an empty dataset (records.parquet, meta.md, .events.log, .usr/)."""
    ds = Dataset.init(settings.root, dataset, source=source, notes=notes)
    emit(fmt, {"dataset": ds.id, "path": str(ds.path)}, f"initialized {ds.id} at {ds.path}")


@click.command("import")
@dataset_argument
@click.option(
    "--from",
    "src_fmt",
    type=click.Choice(FORMATS),
    default=None,
    help="Input format (default: from the file's suffix).",
)
@click.option(
    "--path",
    "path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Input file with a 'sequence' column.",
)
@click.option(
    "--bio-type",
    type=click.Choice(["dna", "rna", "protein"]),
    default=None,
    help="For rows without a bio_type column (default dna).",
)
@click.option(
    "--alphabet",
    default=None,
    help="For rows without an alphabet column: dna_4, dna_5, rna_4, rna_5, protein_20, "
    "protein_21 (default: dna_4, rna_4 or protein_20).",
)
@click.option("--source", default=None, help="Source text for rows without a source column.")
@click.option(
    "--on-duplicate",
    type=click.Choice(["error", "skip"]),
    default="error",
    show_default=True,
    help="Ids already in the dataset or repeated in the file: error refuses the import, "
    "skip keeps the first.",
)
@format_option
@pass_settings
def import_(
    settings: Settings,
    dataset: str,
    src_fmt: str | None,
    path: str,
    bio_type: str | None,
    alphabet: str | None,
    source: str | None,
    on_duplicate: str,
    fmt: str,
) -> None:
    """Append the records of a csv/tsv/parquet/jsonl file (needs a 'sequence' column)."""
    ds = Dataset.open(settings.root, dataset)
    from usr.progress import Waiting

    with Waiting(f"importing {Path(path).name} into {ds.id}"):
        result = ds.import_file(
            path,
            src_fmt,
            bio_type=bio_type,
            alphabet=alphabet,
            source=source,
            on_duplicate=on_duplicate,
            event_args={"bio_type": bio_type, "alphabet": alphabet, "on_duplicate": on_duplicate},
        )
    data = {"dataset": ds.id, "added": result.added, "skipped": result.skipped}
    data["rows"] = result.rows
    if result.ignored:
        data["ignored_columns"] = result.ignored
    if "id" in result.ignored:
        warn(
            f"{path}: its 'id' column was not used: record ids are sha1(bio_type|sequence), "
            "computed by usr (keep your own ids in an overlay: usr attach)"
        )
    emit(
        fmt,
        data,
        f"imported {result.added} record(s) into {ds.id} "
        f"({result.skipped} skipped, {result.rows} total)",
    )


@click.command("attach")
@dataset_argument
@click.option(
    "--path",
    "path",
    required=True,
    type=click.Path(dir_okay=False),
    help="File with a key column and the overlay columns (csv/tsv/parquet/jsonl).",
)
@click.option("--namespace", "ns", required=True, help="Registered namespace.")
@click.option(
    "--key",
    type=_KEY_CHOICES,
    default="id",
    show_default=True,
    help="Join on the record id, or on the sequence text.",
)
@click.option("--key-col", default=None, help="Input column holding the key (default: --key).")
@click.option("--columns", default=None, help="Columns to attach, A,B (default: all matching).")
@click.option(
    "--from",
    "src_fmt",
    type=click.Choice(FORMATS),
    default=None,
    help="Input format (default: from the file's suffix).",
)
@click.option("--allow-missing", is_flag=True, help="Skip keys that are not in the dataset.")
@click.option("--allow-overwrite", is_flag=True, help="Replace existing overlay values.")
@format_option
@pass_settings
def attach(
    settings: Settings,
    dataset: str,
    path: str,
    ns: str,
    key: str,
    key_col: str | None,
    columns: str | None,
    src_fmt: str | None,
    allow_missing: bool,
    allow_overwrite: bool,
    fmt: str,
) -> None:
    """Attach overlay columns of a registered namespace as a new part under _derived/."""
    ds = Dataset.open(settings.root, dataset)
    chosen = [c.strip() for c in columns.split(",") if c.strip()] if columns else None
    result = ds.attach(
        path,
        namespace=ns,
        key=key,
        key_col=key_col,
        columns=chosen,
        allow_missing=allow_missing,
        allow_overwrite=allow_overwrite,
        fmt=src_fmt,
        event_args={"path": path},
    )
    data = {
        "dataset": ds.id,
        "namespace": ns,
        "part": result.part.relative_to(ds.path).as_posix(),
        "rows": result.rows,
        "missing": result.missing,
        "columns": result.columns,
    }
    emit(
        fmt,
        data,
        f"attached {', '.join(result.columns)} for {result.rows} record(s) to {ds.id} "
        f"({result.missing} missing key(s) skipped)",
    )


@click.command("ls")
@format_option
@pass_settings
def ls(settings: Settings, fmt: str) -> None:
    """List the datasets under the root."""
    ids = list_datasets(settings.root)
    emit(fmt, ids, "\n".join(ids) if ids else f"(no datasets under {settings.root})")


@click.command("info")
@dataset_argument
@format_option
@pass_settings
def info(settings: Settings, dataset: str, fmt: str) -> None:
    """Rows, sizes, overlay namespaces, events and the recorded head of a dataset."""
    data = Dataset.open(settings.root, dataset).info()
    lines = [
        f"dataset: {data['dataset']}",
        f"path: {data['path']}",
        f"rows: {data['rows']}",
        f"records.parquet: {data['records_bytes']} bytes, {data['columns']} columns",
        f"events: {data['events']}",
        f"head: {data['head'] or '(no recorded state)'}",
        "overlays:" if data["namespaces"] else "overlays: none",
    ]
    for name, ns in data["namespaces"].items():
        lines.append(
            f"  {name}: {ns['parts']} part(s), {ns['rows']} row(s), {', '.join(ns['columns'])}"
        )
    emit(fmt, data, "\n".join(lines))


@click.command("head")
@dataset_argument
@click.option(
    "-n", "n", type=click.IntRange(min=0), default=5, show_default=True, help="Rows to show."
)
@format_option
@pass_settings
def head(settings: Settings, dataset: str, n: int, fmt: str) -> None:
    """The first N rows of the overlay view (records plus overlay columns)."""
    table = Dataset.open(settings.root, dataset).head(n)
    rows = table.to_pylist()
    emit(fmt, {"columns": table.column_names, "rows": rows}, render_table(rows, table.column_names))


@click.command("schema")
@dataset_argument
@format_option
@pass_settings
def schema(settings: Settings, dataset: str, fmt: str) -> None:
    """Columns of the overlay view with their types and origin."""
    cols = Dataset.open(settings.root, dataset).schema()
    emit(fmt, cols, render_table(cols, ["name", "type", "origin"]))


@click.group("events")
def events() -> None:
    """Read a dataset's .events.log."""


@events.command("tail")
@dataset_argument
@click.option(
    "--n",
    "-n",
    "n",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="Events to show.",
)
@format_option
@pass_settings
def events_tail(settings: Settings, dataset: str, n: int, fmt: str) -> None:
    """The last N events, oldest first."""
    items = Dataset.open(settings.root, dataset).events_tail(n)
    lines = [f"{e.get('timestamp_utc')}  {e.get('action')}  {e.get('actor')}" for e in items]
    emit(fmt, items, "\n".join(lines) if lines else "(no events)")


@click.command("validate")
@dataset_argument
@click.option("--strict", is_flag=True, help="Treat warnings as errors.")
@format_option
@pass_settings
def validate(settings: Settings, dataset: str, strict: bool, fmt: str) -> None:
    """Check records, overlays, events and meta; exit 5 when a check fails."""
    report = Dataset.open(settings.root, dataset).validate(strict=strict)
    lines = [f"error: {e}" for e in report["errors"]]
    lines += [f"warning: {w}" for w in report["warnings"]]
    lines.append(f"{report['dataset']}: {'ok' if report['ok'] else 'FAILED'}")
    emit(fmt, report, "\n".join(lines))
    if not report["ok"]:
        raise VerifyError(
            f"dataset {dataset!r} failed validation with {len(report['errors'])} error(s)",
            report["errors"][0],
        )


@click.command("export")
@dataset_argument
@click.option(
    "--fmt",
    "out_fmt",
    type=click.Choice(["csv", "parquet"]),
    required=True,
    help="File format to write.",
)
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(file_okay=False),
    help="Directory to write into (created if missing).",
)
@yes_option
@format_option
@pass_settings
def export(settings: Settings, dataset: str, out_fmt: str, out: str, yes: bool, fmt: str) -> None:
    """Write the overlay view to DIR/<dataset>.<fmt> (ids with / become __)."""
    ds = Dataset.open(settings.root, dataset)
    target = Path(out) / f"{ds.id.replace('/', '__')}.{out_fmt}"
    overwrite = yes
    if target.exists() and not yes:
        if not sys.stdin.isatty():
            raise UsageError(f"{target} exists", "pass -y to overwrite it")
        overwrite = click.confirm(f"overwrite {target}?", err=True)
        if not overwrite:
            raise UsageError(f"{target} exists; not overwritten")
    written = ds.export(out_fmt, out, overwrite=overwrite)
    emit(fmt, {"dataset": ds.id, "path": str(written)}, f"exported {ds.id} to {written}")


COMMANDS: list[click.Command] = [
    namespace,
    init,
    import_,
    attach,
    ls,
    info,
    head,
    schema,
    events,
    validate,
    export,
]
