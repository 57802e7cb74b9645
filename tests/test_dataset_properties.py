"""Properties of the records model that must hold for any input, not just examples."""

from __future__ import annotations

import hashlib
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import given, settings
from hypothesis import strategies as st

from usr.records import build_records, write_records

STAMP = datetime(2026, 1, 1, tzinfo=UTC)
dna = st.text(alphabet="ACGTacgt", min_size=1, max_size=40)


@settings(max_examples=20, deadline=None)
@given(seqs=st.lists(dna, min_size=1, max_size=30), pad=st.sampled_from(["", " ", "\t\n"]))
def test_ids_follow_the_rule_and_ignore_surrounding_whitespace(seqs, pad):
    table = build_records(pa.table({"sequence": [pad + s + pad for s in seqs]}), created_at=STAMP)
    expected = [hashlib.sha1(f"dna|{s}".encode()).hexdigest() for s in seqs]
    assert table.column("id").to_pylist() == expected
    assert table.column("length").to_pylist() == [len(s) for s in seqs]


@settings(max_examples=15, deadline=None)
@given(
    seqs=st.lists(dna, min_size=1, max_size=60),
    cuts=st.lists(st.integers(min_value=1, max_value=59), max_size=5),
)
def test_file_bytes_depend_on_the_rows_not_on_how_they_arrived(seqs, cuts):
    table = build_records(pa.table({"sequence": seqs}), created_at=STAMP)
    bounds = sorted({0, table.num_rows, *(c for c in cuts if c < table.num_rows)})
    pieces = [
        b
        for lo, hi in zip(bounds, bounds[1:], strict=False)
        for b in table.slice(lo, hi - lo).to_batches()
    ]
    with tempfile.TemporaryDirectory() as tmp:
        whole, split = Path(tmp) / "whole.parquet", Path(tmp) / "split.parquet"
        write_records(whole, table.to_batches(), table.schema)
        write_records(split, pieces, table.schema)
        assert whole.read_bytes() == split.read_bytes()
        assert pq.read_table(split).equals(table)
