"""Reading operator-supplied tables (csv, tsv, parquet, jsonl) into Arrow, or refusing.

Every reader failure -- truncated Parquet, ragged CSV, invalid JSON, an empty file -- becomes
one :class:`InputError` naming the file, before anything in a dataset is touched.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.json as pjson
import pyarrow.parquet as pq

from usr.errors import InputError, NotFoundError

FORMATS = ("csv", "tsv", "parquet", "jsonl")
_SUFFIXES = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}
#: Formats that carry text only; values must be parsed into their registered types.
TEXT_FORMATS = frozenset({"csv", "tsv"})


def format_of(path: Path, fmt: str | None = None) -> str:
    """``fmt`` if given, else the format named by the file's suffix."""
    if fmt:
        if fmt not in FORMATS:
            raise InputError(f"unknown input format {fmt!r}", f"use one of {', '.join(FORMATS)}")
        return fmt
    found = _SUFFIXES.get(path.suffix.lower())
    if found is None:
        raise InputError(
            f"cannot tell the format of {path.name}", "name it *.csv, *.tsv, *.parquet or *.jsonl"
        )
    return found


def read_table(
    path: Path | str,
    fmt: str | None = None,
    text_columns: list[str] | None = None,
) -> pa.Table:
    """Read ``path`` whole. ``text_columns`` are read as strings (never type-guessed)."""
    path = Path(path)
    fmt = format_of(path, fmt)
    if not path.is_file():
        raise NotFoundError(f"input file {path} not found")
    if path.stat().st_size == 0:
        raise InputError(f"input file {path} is empty")
    try:
        if fmt == "parquet":
            return pq.read_table(path)
        if fmt in TEXT_FORMATS:
            return pcsv.read_csv(
                path,
                parse_options=pcsv.ParseOptions(delimiter="\t" if fmt == "tsv" else ","),
                convert_options=pcsv.ConvertOptions(
                    column_types={c: pa.string() for c in text_columns or []},
                    strings_can_be_null=False,
                ),
            )
        return pjson.read_json(path)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError, ValueError) as exc:
        reason = " ".join(str(exc).split())
        if len(reason) > 200:
            reason = reason[:200] + "..."
        raise InputError(f"cannot read {path} as {fmt}: {reason}") from exc
