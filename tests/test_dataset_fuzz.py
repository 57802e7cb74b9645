"""Fuzzed imports and attaches: any input either works or is a clean usr error.

A traceback is a bug: every failure must be a :class:`UsrError` (one line, documented exit
code) and must leave the dataset's files as they were.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from usr import registry as reg
from usr.dataset import Dataset
from usr.errors import UsrError
from usr.layout import is_runtime_path

SETTINGS = settings(
    max_examples=int(os.environ.get("USR_FUZZ_EXAMPLES", "20")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
cell = st.one_of(
    st.text(alphabet="ACGTNacgu XZ*", max_size=12),
    st.text(max_size=8),
    st.sampled_from(["", '"', '""', ",", "\n", "1.5", "nan", "[1, 2]", "[", "null", "dna", "rna"]),
)
names = st.sampled_from(["sequence", "seq", "bio_type", "alphabet", "source", "id", "ll", "v"])


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not is_runtime_path(p.relative_to(root).as_posix())
    }


def csv_text(header: list[str], rows: list[list[str]], sep: str) -> str:
    def q(v: str) -> str:
        return '"' + v.replace('"', '""') + '"' if any(c in v for c in ',"\n\t') else v

    lines = [sep.join(header)] + [sep.join(q(v) for v in row) for row in rows]
    return "\n".join(lines) + "\n"


def attempt(ds: Dataset, call) -> None:
    before = snapshot(ds.root)
    try:
        call()
    except UsrError as exc:
        assert "\n" not in exc.one_line()
        assert snapshot(ds.root) == before


@SETTINGS
@given(
    header=st.lists(names, min_size=1, max_size=4, unique=True),
    rows=st.lists(st.lists(cell, min_size=0, max_size=5), max_size=6),
    sep=st.sampled_from([",", "\t"]),
)
def test_fuzzed_csv_imports_work_or_fail_cleanly(tmp_path, header, rows, sep):
    ds = _dataset(tmp_path)
    with tempfile.NamedTemporaryFile("w", suffix=".csv" if sep == "," else ".tsv") as fh:
        fh.write(csv_text(header, rows, sep))
        fh.flush()
        attempt(ds, lambda: ds.import_file(fh.name, on_duplicate="skip"))


@SETTINGS
@given(data=st.binary(max_size=300), keep=st.integers(min_value=0, max_value=4000))
def test_fuzzed_parquet_bytes_fail_cleanly(tmp_path, data, keep):
    ds = _dataset(tmp_path)
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"sequence": ["ACGT", "GG"]}), good)
    with tempfile.NamedTemporaryFile("wb", suffix=".parquet") as fh:
        blob = good.read_bytes()
        fh.write(blob[:keep] + data if keep < len(blob) else data)
        fh.flush()
        attempt(ds, lambda: ds.import_file(fh.name, on_duplicate="skip"))


@SETTINGS
@given(
    header=st.lists(st.sampled_from(["id", "ll", "v", "infer__ll", "x"]), min_size=1, max_size=3,
                    unique=True),
    rows=st.lists(st.lists(cell, min_size=0, max_size=4), max_size=5),
    use_real_ids=st.booleans(),
    flags=st.fixed_dictionaries({"allow_missing": st.booleans(), "allow_overwrite": st.booleans()}),
)  # fmt: skip
def test_fuzzed_attaches_work_or_fail_cleanly(tmp_path, header, rows, use_real_ids, flags):
    ds = _dataset(tmp_path)
    ids = ds.to_table(False).column("id").to_pylist()
    if use_real_ids and "id" in header:
        at = header.index("id")
        for i, row in enumerate(rows):
            if at < len(row):
                row[at] = ids[i % len(ids)]
    with tempfile.NamedTemporaryFile("w", suffix=".csv") as fh:
        fh.write(csv_text(header, rows, ","))
        fh.flush()
        attempt(ds, lambda: ds.attach(fh.name, namespace="infer", **flags))
    ds.head(3)  # whatever landed, the overlay view still reads


def _dataset(tmp_path: Path) -> Dataset:
    """One dataset per test function, reused across its examples."""
    root = tmp_path / "datasets"
    if (root / "fuzz" / "records.parquet").exists():
        return Dataset.open(root, "fuzz")
    ds = Dataset.init(root, "fuzz")
    ds.append_records([{"sequence": s} for s in ("ACGT", "GGCC", "TTAA")])
    reg.register(root, "infer", [("infer__ll", "float64"), ("infer__v", "list<float64>")])
    return ds


ODD_COLUMNS = {
    "ints": pa.array([1, 2]),
    "lists": pa.array([[1], [2, 3]]),
    "structs": pa.array([{"a": 1}, {"a": 2}]),
    "bad utf8": pa.array([b"AC\xff", b"GG"], type=pa.binary()),
    "nulls": pa.array([None, None], type=pa.null()),
    "floats": pa.array([1.5, float("nan")]),
}


@pytest.mark.parametrize("kind", sorted(ODD_COLUMNS))
def test_odd_parquet_column_types_fail_cleanly(tmp_path, kind):
    ds = _dataset(tmp_path)
    ids = ds.to_table(False).column("id").to_pylist()[:2]
    odd = ODD_COLUMNS[kind]
    pq.write_table(pa.table({"sequence": odd}), tmp_path / "r.parquet")
    attempt(ds, lambda: ds.import_file(tmp_path / "r.parquet"))
    for table in (pa.table({"id": odd, "ll": [1.0, 2.0]}), pa.table({"id": ids, "ll": odd})):
        pq.write_table(table, tmp_path / "o.parquet")
        attempt(ds, lambda: ds.attach(tmp_path / "o.parquet", namespace="infer"))
        pq.write_table(table.rename_columns(["id", "v"]), tmp_path / "v.parquet")
        attempt(ds, lambda: ds.attach(tmp_path / "v.parquet", namespace="infer"))
