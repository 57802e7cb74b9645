"""usr.unique_ids: a duplicate id is found exactly, in one pass or several, whether the ids
are core sha1 hex (keys decoded at once) or anything else (hashed one by one)."""

from __future__ import annotations

import hashlib
import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from usr import unique_ids
from usr.unique_ids import first_duplicate


def _file(ids: list[str | None], row_group_size: int = 1000) -> pq.ParquetFile:
    out = io.BytesIO()
    pq.write_table(pa.table({"id": pa.array(ids, pa.string())}), out, row_group_size=row_group_size)
    out.seek(0)
    return pq.ParquetFile(out)


def _sha(n: int) -> list[str]:
    return [hashlib.sha1(str(i).encode()).hexdigest() for i in range(n)]


@pytest.mark.parametrize("per_pass", [10_000_000, 700, 37])
def test_core_ids_unique_and_duplicated(per_pass: int) -> None:
    ids = _sha(5000)
    assert first_duplicate(_file(ids), per_pass=per_pass) is None
    twice = ids[:3000] + [ids[4321]] + ids[3000:]  # the copy lands in another row group
    assert first_duplicate(_file(twice), per_pass=per_pass) == ids[4321]


def test_ids_sharing_a_key_are_not_taken_for_duplicates() -> None:
    """Two different sha1-shaped ids with the same first 16 hex digits: same key, not the
    same id; a real duplicate after them is still found."""
    a = "0123456789abcdef" + "0" * 24
    b = "0123456789abcdef" + "1" * 24
    assert first_duplicate(_file([a, b] + _sha(100))) is None
    assert first_duplicate(_file([a, b, b] + _sha(100))) == b


@pytest.mark.parametrize("per_pass", [10_000_000, 3])
def test_other_ids_are_hashed(per_pass: int) -> None:
    ids = [f"seq-{i}" for i in range(50)] + ["ABCDEF" * 7]  # not core ids, one 42 long
    assert first_duplicate(_file(ids), per_pass=per_pass) is None
    assert first_duplicate(_file([*ids, "seq-7"]), per_pass=per_pass) == "seq-7"


def test_a_missing_id_and_an_empty_table() -> None:
    assert first_duplicate(_file(["a", None])) == "null"
    assert first_duplicate(_file([])) is None


@pytest.mark.parametrize("read_rows", [1, 250, 2_000, 10_000_000])
def test_row_groups_read_together_or_apart_find_the_same(monkeypatch, read_rows: int) -> None:
    """Row groups are read in batches of about ``READ_ROWS`` rows: a duplicate in the first
    and the last row group is found however they are batched (a batch boundary inside,
    at, or beyond the table)."""
    monkeypatch.setattr(unique_ids, "READ_ROWS", read_rows)
    ids = _sha(3000)
    assert first_duplicate(_file(ids, row_group_size=200)) is None
    assert first_duplicate(_file([*ids, ids[5]], row_group_size=200)) == ids[5]


def test_a_core_id_key_is_its_first_sixteen_hex_digits() -> None:
    """The key is the number the first 16 digits spell (the first digit most significant),
    so keys of core ids sort and partition as those digits do."""
    ids = _sha(500) + ["f" * 40, "0" * 40, "8000000000000000" + "a" * 24]
    keys = unique_ids._keys(pa.array(ids))
    assert [int(k) for k in keys] == [int(i[:16], 16) for i in ids]


def test_a_pass_holding_more_than_its_share_of_the_keys() -> None:
    """A pass's keys go into one array sized for an even share of the rows; ids whose keys
    all fall in one pass (even keys, two passes) overflow it: it grows, and a duplicate
    among them is still found."""
    ids = [i for i in _sha(6000) if int(i[15], 16) % 2 == 0]
    assert first_duplicate(_file(ids), per_pass=-(-len(ids) // 2)) is None
    twice = [*ids, ids[17]]
    assert first_duplicate(_file(twice), per_pass=-(-len(twice) // 2)) == ids[17]


def _twins(ids: list[str | None]) -> tuple[pq.ParquetFile, pq.ParquetFile]:
    """Two readers of the same table's bytes (one reader is not safe on two threads)."""
    out = io.BytesIO()
    pq.write_table(pa.table({"id": pa.array(ids, pa.string())}), out, row_group_size=500)
    data = out.getvalue()
    return pq.ParquetFile(io.BytesIO(data)), pq.ParquetFile(io.BytesIO(data))


@pytest.mark.parametrize("per_pass", [10_000_000, 2_000])
def test_two_readers_on_two_threads_give_the_same_answers(monkeypatch, per_pass: int) -> None:
    """With a twin reader the batches are decoded and keyed on two worker threads: the
    same keys in the same order (one pass or spooled), so the same duplicate, null and
    clean answers as one reader."""
    monkeypatch.setattr(unique_ids, "READ_ROWS", 500)  # a batch per row group: 24 batches
    ids = _sha(12_000)
    cases = {
        "clean": ids,
        "twice": [*ids[:7_000], ids[11_999], *ids[7_000:]],
        "null": [*ids[:9_000], None, *ids[9_000:]],
        "other ids": [f"seq-{i}" for i in range(11_000)] + ["seq-10999"],
    }
    for name, table in cases.items():
        alone = first_duplicate(_twins(table)[0], per_pass=per_pass)
        pf, twin = _twins(table)
        assert first_duplicate(pf, per_pass=per_pass, twin=twin) == alone, name
    pf, twin = _twins(ids)
    batches = list(unique_ids.id_keys(pf, "id", 0, None, twin))
    assert [k.tolist() for k, _ in batches] == [
        k.tolist() for k, _ in unique_ids.id_keys(_twins(ids)[0], "id", 0, None)
    ]
    assert len(batches) == 24 and all(core for _, core in batches)
