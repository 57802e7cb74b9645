"""The append-friendly records writer and the recorded states lifecycle calls leave."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from usr.dataset import Dataset
from usr.records import ROW_GROUP_ROWS, build_records, write_records


def _dna(n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    return [{"sequence": "".join(rng.choices("ACGT", k=rng.randint(100, 200)))} for _ in range(n)]


def _group_bytes(path: Path) -> list[bytes]:
    """The raw bytes of each row group, by the column-chunk offsets in the footer."""
    md = pq.read_metadata(path)
    data = path.read_bytes()
    out = []
    for g in range(md.num_row_groups):
        rg = md.row_group(g)
        cols = [rg.column(c) for c in range(rg.num_columns)]
        start = min(
            c.dictionary_page_offset if c.has_dictionary_page else c.data_page_offset for c in cols
        )
        out.append(data[start : start + sum(c.total_compressed_size for c in cols)])
    return out


def test_appending_rows_keeps_earlier_row_groups_byte_identical(root):
    ds = Dataset.init(root, "append")
    base = int(ROW_GROUP_ROWS * 2.5)
    ds.append_records(_dna(base, 1), source="run 1")
    before = _group_bytes(ds.records_path)
    old_bytes = ds.records_path.read_bytes()
    ds.append_records(_dna(base // 100, 2), source="run 2")
    after = _group_bytes(ds.records_path)

    md = pq.read_metadata(ds.records_path)
    assert md.num_rows == base + base // 100
    assert [md.row_group(g).num_rows for g in range(md.num_row_groups - 1)] == [ROW_GROUP_ROWS] * (
        md.num_row_groups - 1
    )
    assert md.row_group(0).column(2).compression == "ZSTD"
    # Every full row group written before the append is unchanged, at the same offset.
    full = base // ROW_GROUP_ROWS
    assert after[:full] == before[:full]
    # ...so the file's leading bytes (magic + full groups) are a shared prefix.
    prefix = 4 + sum(len(b) for b in before[:full])
    assert prefix > len(old_bytes) // 2
    assert ds.records_path.read_bytes()[:prefix] == old_bytes[:prefix]
    assert ds.to_table(False).column("source").to_pylist()[-1] == "run 2"


def test_the_writer_is_deterministic_and_checksummed(tmp_path):
    table = build_records(
        pa.Table.from_pylist(_dna(500, 3)), created_at=datetime(2026, 1, 1, tzinfo=UTC)
    )
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    write_records(a, table.to_batches(max_chunksize=7), table.schema)
    write_records(b, table.to_batches(), table.schema)
    assert a.read_bytes() == b.read_bytes()
    assert pq.read_table(a, page_checksum_verification=True).equals(table)
    # Damage one byte inside a data page: the checksum catches it on read.
    data = bytearray(a.read_bytes())
    col = pq.read_metadata(a).row_group(0).column(2)
    data[col.data_page_offset + col.total_compressed_size // 2] ^= 0xFF
    a.write_bytes(bytes(data))
    with pytest.raises(OSError, match="(?i)crc|checksum"):
        pq.read_table(a, page_checksum_verification=True)


def test_every_lifecycle_mutation_records_a_state(root, tmp_path):
    from usr.store import Store

    ds = Dataset.init(root, "densegen/recorded")
    store = Store.open(ds.path, create=False)
    first = store.head()
    assert first is not None
    ds.append_records([{"sequence": "ACGT"}])
    second = Store.open(ds.path).head()
    assert second not in (None, first)
    from usr import registry as reg

    reg.register(root, "infer", [("infer__ll", "float64")])
    (tmp_path / "s.csv").write_text(f"id,ll\n{ds.to_table(False).column('id')[0]},1.5\n")
    ds.attach(tmp_path / "s.csv", namespace="infer")
    third = Store.open(ds.path).head()
    assert third not in (None, second)
    assert len(list(Store.open(ds.path).log(third))) == 3
