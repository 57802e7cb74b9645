"""The core records table: schema, id rule, alphabets, and the append-friendly writer.

``records.parquet`` is the file batch jobs grow and sync moves most, so its bytes matter:
the writer lays rows out in fixed-size row groups, new rows always at the end, with zstd and
Parquet content-defined page chunking, and no wall-clock anywhere in the file. Rewriting the
file after a 1% append therefore reproduces every earlier full row group byte for byte, and
the store's content-defined chunker dedupes all of them; only the tail and footer are new.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from usr.atomic import atomic_writer
from usr.errors import InputError, VerifyError

CORE_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("bio_type", pa.string(), nullable=False),
        pa.field("sequence", pa.string(), nullable=False),
        pa.field("alphabet", pa.string(), nullable=False),
        pa.field("length", pa.int32(), nullable=False),
        pa.field("source", pa.string()),
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)
CORE_COLUMNS: tuple[str, ...] = tuple(CORE_SCHEMA.names)

BIO_TYPES = ("dna", "rna", "protein")
#: Characters allowed by each alphabet (compared case-insensitively).
ALPHABETS: dict[str, str] = {
    "dna_4": "ACGT",
    "dna_5": "ACGTN",
    "rna_4": "ACGU",
    "rna_5": "ACGUN",
    "protein_20": "ACDEFGHIKLMNPQRSTVWY",
    "protein_21": "ACDEFGHIKLMNPQRSTVWY*",
}
DEFAULT_ALPHABET = {"dna": "dna_4", "rna": "rna_4", "protein": "protein_20"}

#: Rows per row group. Fixed, so earlier row groups never move when rows are appended; small
#: enough that an append rewrites little (a few MiB of 100-200 bp DNA per group).
ROW_GROUP_ROWS = 16_384
#: Content-defined page boundaries inside a row group (pyarrow >= 21), so a change in one
#: row group leaves most of its pages' bytes stable as well.
CDC_OPTIONS = {"min_chunk_size": 64 * 1024, "max_chunk_size": 256 * 1024}
#: Low-cardinality columns benefit from dictionaries; ids and sequences do not.
DICTIONARY_COLUMNS = ["bio_type", "alphabet", "source"]
STATISTICS_COLUMNS = ["bio_type", "alphabet", "length", "source", "created_at"]


def schema_problem(schema: pa.Schema) -> str | None:
    """Why ``schema`` is not the core schema (every core column with its type, no other
    column), or None. The gate and the record diff refuse a table for the same reasons."""
    for want in CORE_SCHEMA:
        if want.name not in schema.names:
            return f"core column {want.name!r} is missing"
        if schema.field(want.name).type != want.type:
            return f"column {want.name!r} is {schema.field(want.name).type}, not {want.type}"
    extra = [n for n in schema.names if n not in CORE_SCHEMA.names]
    if extra:
        return f"non-core columns {', '.join(extra)} (overlays belong in _derived/)"
    return None


def record_id(bio_type: str, sequence: str) -> str:
    """The id rule: ``sha1(bio_type|sequence.strip())`` as lowercase hex."""
    return hashlib.sha1(f"{bio_type}|{sequence.strip()}".encode()).hexdigest()


def now_utc() -> datetime:
    return datetime.now(UTC)


def _column_or_default(table: pa.Table, name: str, default: str | None, n: int) -> pa.Array:
    if name in table.column_names:
        col = table.column(name).combine_chunks()
        if not pa.types.is_string(col.type) and not pa.types.is_large_string(col.type):
            try:
                col = col.cast(pa.string())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
                raise InputError(f"column {name!r} must be text, not {col.type}") from exc
        col = col.cast(pa.string())
        if default is not None:
            col = pc.fill_null(col, default)
        return col
    return pa.array([default] * n, type=pa.string())


def _first_null(arr: pa.Array) -> int | None:
    mask = pc.is_null(arr)
    if not pc.any(mask).as_py():
        return None
    return int(pc.index(mask, True).as_py())


def _check_alphabets(bio: pa.Array, alph: pa.Array, seqs: pa.Array) -> None:
    """Refuse unknown bio types/alphabets, mismatched pairs, and foreign characters."""
    for value in pc.unique(bio).to_pylist():
        if value not in BIO_TYPES:
            raise InputError(f"unknown bio_type {value!r}", f"use one of {', '.join(BIO_TYPES)}")
    pairs = pa.table({"b": bio, "a": alph}).group_by(["b", "a"]).aggregate([]).to_pylist()
    for pair in pairs:
        if pair["a"] not in ALPHABETS:
            raise InputError(
                f"unknown alphabet {pair['a']!r}", f"use one of {', '.join(ALPHABETS)}"
            )
        if not pair["a"].startswith(pair["b"]):
            raise InputError(f"alphabet {pair['a']!r} does not fit bio_type {pair['b']!r}")
    for name, chars in ALPHABETS.items():
        rows = pc.equal(alph, name)
        if not pc.any(rows).as_py():
            continue
        ok = pc.match_substring_regex(seqs, f"^[{re.escape(chars)}]+$", ignore_case=True)
        bad = pc.and_(rows, pc.invert(ok))
        if pc.any(bad).as_py():
            i = int(pc.index(bad, True).as_py())
            seq = seqs[i].as_py()
            char = next(c for c in seq.upper() if c not in chars)
            raise InputError(
                f"row {i + 1}: sequence has character {char!r} outside alphabet {name} ({chars})",
                "fix the sequence or pass a wider --alphabet",
            )


def build_records(
    data: pa.Table,
    *,
    bio_type: str | None = None,
    alphabet: str | None = None,
    source: str | None = None,
    created_at: datetime | None = None,
) -> pa.Table:
    """Turn input rows into core-schema rows, validating everything before any write.

    ``data`` needs a ``sequence`` column; ``bio_type``, ``alphabet`` and ``source`` columns
    win over the keyword defaults where present. Other input columns are not records data
    (overlays carry annotations) and are dropped. Ids follow :func:`record_id`.
    """
    if "sequence" not in data.column_names:
        raise InputError(
            "input has no 'sequence' column",
            f"columns are: {', '.join(data.column_names) or 'none'}",
        )
    n = data.num_rows
    if n == 0:
        raise InputError("input has no rows")
    seqs = _column_or_default(data, "sequence", None, n)
    i = _first_null(seqs)
    if i is not None:
        raise InputError(f"row {i + 1}: sequence is empty")
    seqs = pc.utf8_trim_whitespace(seqs)
    empty = pc.equal(pc.utf8_length(seqs), 0)
    if pc.any(empty).as_py():
        raise InputError(f"row {int(pc.index(empty, True).as_py()) + 1}: sequence is empty")
    bio = _column_or_default(data, "bio_type", bio_type or "dna", n)
    bio = pc.utf8_lower(pc.utf8_trim_whitespace(bio))
    if alphabet is None and "alphabet" not in data.column_names:
        # Vectorised default: position of the bio type -> its default alphabet.
        defaults = pa.array([DEFAULT_ALPHABET[b] for b in BIO_TYPES] + [""], type=pa.string())
        where = pc.fill_null(pc.index_in(bio, value_set=pa.array(BIO_TYPES)), len(BIO_TYPES))
        alph = pc.take(defaults, where)
    else:
        alph = _column_or_default(data, "alphabet", alphabet, n)
        alph = pc.utf8_lower(pc.utf8_trim_whitespace(alph))
    i = _first_null(alph)
    if i is not None:
        raise InputError(f"row {i + 1}: alphabet is empty")
    _check_alphabets(bio, alph, seqs)
    ids = pa.array(_ids(bio, seqs), type=pa.string())
    src = _column_or_default(data, "source", source, n)
    stamp = created_at or now_utc()
    return pa.Table.from_arrays(
        [
            ids,
            bio,
            seqs,
            alph,
            pc.utf8_length(seqs).cast(pa.int32()),
            src,
            pa.array([stamp] * n, type=pa.timestamp("us", tz="UTC")),
        ],
        schema=CORE_SCHEMA,
    )


def _ids(bio: pa.Array, seqs: pa.Array) -> list[str]:
    """:func:`record_id` for whole columns (sequences already stripped); the hot loop of an
    import, so it hashes the joined ``bio|seq`` strings without a call per row."""
    sha1 = hashlib.sha1
    keys = pc.binary_join_element_wise(bio, seqs, "|")
    out: list[str] = []
    for start in range(0, len(keys), 65_536):  # bounded Python-object peak
        out += [sha1(k.encode()).hexdigest() for k in keys.slice(start, 65_536).to_pylist()]
    return out


def duplicate_ids(table: pa.Table) -> list[str]:
    """Ids that occur more than once in ``table`` (sorted)."""
    if len(pc.unique(table.column("id"))) == table.num_rows:
        return []
    counts = table.group_by("id").aggregate([("id", "count")])
    dup = counts.filter(pc.greater(counts.column("id_count"), 1))
    return sorted(dup.column("id").to_pylist())


def empty_records() -> pa.Table:
    return CORE_SCHEMA.empty_table()


def _writer(sink, schema: pa.Schema) -> pq.ParquetWriter:
    return pq.ParquetWriter(
        sink,
        schema,
        compression="zstd",
        compression_level=3,
        use_dictionary=[c for c in DICTIONARY_COLUMNS if c in schema.names],
        # Min/max of ids and sequences are long and useless for pruning; skip them.
        write_statistics=[c for c in STATISTICS_COLUMNS if c in schema.names],
        write_page_checksum=True,
        use_content_defined_chunking=CDC_OPTIONS,
        store_schema=True,
    )


def _regroup(batches: Iterable[pa.RecordBatch], rows: int) -> Iterator[pa.Table]:
    """Re-cut a stream of batches into tables of exactly ``rows`` rows (last one shorter)."""
    pending: list[pa.RecordBatch] = []
    have = 0
    for batch in batches:
        while batch.num_rows:
            take = min(rows - have, batch.num_rows)
            pending.append(batch.slice(0, take))
            have += take
            batch = batch.slice(take)
            if have == rows:
                yield pa.Table.from_batches(pending)
                pending, have = [], 0
    if have:
        yield pa.Table.from_batches(pending)


def write_records(path: Path, batches: Iterable[pa.RecordBatch], schema: pa.Schema) -> None:
    """Atomically (re)write ``path`` from ``batches`` in the append-friendly layout.

    Each row group holds exactly :data:`ROW_GROUP_ROWS` rows except the last, so the bytes
    of a file are a function of its rows only, and appending rows leaves every earlier full
    row group identical.
    """
    with atomic_writer(path) as fh:
        writer = _writer(fh, schema)
        try:
            for group in _regroup(batches, ROW_GROUP_ROWS):
                writer.write_table(group.cast(schema), row_group_size=ROW_GROUP_ROWS)
        finally:
            writer.close()


def iter_batches(path: Path, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    """Stream the rows of a records file, mapping a damaged file to :class:`VerifyError`."""
    try:
        pf = pq.ParquetFile(path)
        yield from pf.iter_batches(batch_size=ROW_GROUP_ROWS, columns=columns)
    except (pa.ArrowInvalid, OSError) as exc:
        raise VerifyError(f"cannot read {path}: {exc}", "restore it from a recorded state") from exc


def read_records(path: Path, columns: list[str] | None = None) -> pa.Table:
    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowInvalid, OSError) as exc:
        raise VerifyError(f"cannot read {path}: {exc}", "restore it from a recorded state") from exc


def read_schema(path: Path) -> pa.Schema:
    try:
        return pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise VerifyError(f"cannot read {path}: {exc}", "restore it from a recorded state") from exc


def num_rows(path: Path) -> int:
    """Row count from the footer alone."""
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (pa.ArrowInvalid, OSError) as exc:
        raise VerifyError(f"cannot read {path}: {exc}", "restore it from a recorded state") from exc
