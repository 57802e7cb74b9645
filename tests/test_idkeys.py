"""usr.idkeys: the gate's duplicate-id check reads only the row groups an append added, and
never lets a duplicate or a null id through, whatever state its cache is in.

Tables are real Parquet files written by :func:`usr.records.write_records` (row groups of
``ROW_GROUP_ROWS``); the sync test pushes over a ``local`` remote (a real server process).
"""

from __future__ import annotations

import hashlib
import io
import random
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.test_safety_gates import fingerprint
from tests.test_sync_scenarios import DS, make_env
from usr import idkeys
from usr.dataset import Dataset
from usr.errors import VerifyError
from usr.layout import RECORDS_FILE
from usr.records import CORE_SCHEMA, ROW_GROUP_ROWS, write_records
from usr.store import Store
from usr.store.entryfile import EntryFile
from usr.sync.gate import GateRefused, check_records, check_state, check_working

G = ROW_GROUP_ROWS
NULLABLE = CORE_SCHEMA.set(0, CORE_SCHEMA.field("id").with_nullable(True))


def _ids(lo: int, hi: int) -> list[str]:
    return [hashlib.sha1(f"dna|{i}".encode()).hexdigest() for i in range(lo, hi)]


def _table(ids: list[str | None], schema: pa.Schema = CORE_SCHEMA) -> pa.Table:
    n = len(ids)
    when = datetime(2026, 1, 1, tzinfo=UTC)
    return pa.table(
        {
            "id": pa.array(ids, pa.string()),
            "bio_type": ["dna"] * n,
            "sequence": ["ACGT"] * n,
            "alphabet": ["dna_4"] * n,
            "length": pa.array([4] * n, pa.int32()),
            "source": ["test"] * n,
            "created_at": pa.array([when] * n, pa.timestamp("us", tz="UTC")),
        },
        schema=schema,
    )


def _write(path: Path, ids: list[str | None], schema: pa.Schema = CORE_SCHEMA) -> None:
    write_records(path, _table(ids, schema).to_batches(), schema)


def _check(path: Path, cache: Path) -> idkeys.Outcome:
    with path.open("rb") as fh:
        return idkeys.check(pq.ParquetFile(fh), fh, cache)


@pytest.fixture
def where(tmp_path: Path) -> tuple[Path, Path]:
    """A records file and its cache directory (created on the first write)."""
    return tmp_path / RECORDS_FILE, tmp_path / ".usr" / idkeys.CACHE_DIR


BASE = 3 * G + 500  # three full row groups and a partial one


def test_an_append_decodes_only_the_row_groups_it_added(where) -> None:
    path, cache = where
    _write(path, _ids(0, BASE))
    assert _check(path, cache) == idkeys.Outcome(None, 0, 4)  # no entry yet: all of it
    _write(path, _ids(0, BASE + 300))  # 1%: the partial group grows
    assert _check(path, cache) == idkeys.Outcome(None, 3, 1)
    _write(path, _ids(0, BASE + G))  # the fourth group fills up, a fifth begins
    assert _check(path, cache) == idkeys.Outcome(None, 3, 2)
    assert _check(path, cache) == idkeys.Outcome(None, 4, 1)  # the same table again


def test_an_appended_id_equal_to_an_old_one_is_refused(where) -> None:
    path, cache = where
    ids = _ids(0, BASE)
    _write(path, ids)
    _check(path, cache)
    _write(path, [*ids, *_ids(BASE, BASE + 100), ids[7]])
    assert _check(path, cache).duplicate == ids[7]
    with path.open("rb") as fh, pytest.raises(GateRefused) as exc:
        check_records(fh, "the push of the working files", cache)
    assert exc.value.check == "unique-ids" and exc.value.exit_code == 5
    assert f"id {ids[7]!r} appears twice" in exc.value.message
    _write(path, [*ids, *_ids(BASE, BASE + 100)])  # the refusal left the entry usable
    assert _check(path, cache) == idkeys.Outcome(None, 3, 1)


def test_an_id_twice_among_the_new_rows_is_refused(where) -> None:
    path, cache = where
    _write(path, _ids(0, BASE))
    _check(path, cache)
    new = _ids(BASE, BASE + 2 * G)  # new rows over several groups, one id in two of them
    _write(path, [*_ids(0, BASE), *new, new[5]])
    assert _check(path, cache).duplicate == new[5]


def test_a_null_id_in_the_new_rows_is_refused(where) -> None:
    path, cache = where
    ids = _ids(0, BASE)
    _write(path, ids, NULLABLE)
    assert _check(path, cache) == idkeys.Outcome(None, 0, 4)
    _write(path, [*ids, None, *_ids(BASE, BASE + 10)], NULLABLE)
    assert _check(path, cache).duplicate == "null"


def test_two_ids_sharing_a_key_are_told_apart_on_the_ids(where) -> None:
    """Keys are the first 16 hex digits: a new id with an old id's key is not a duplicate."""
    path, cache = where
    ids = _ids(0, BASE)
    _write(path, ids)
    _check(path, cache)
    twin = ids[3][:16] + "0" * 24
    assert twin != ids[3]
    _write(path, [*ids, twin])
    assert _check(path, cache).duplicate is None


DAMAGES = ["forge-key", "zero-keys", "truncate", "flip-group", "empty", "version"]


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_entry_is_ignored_and_the_answer_is_still_right(where, damage: str) -> None:
    path, cache = where
    ids = _ids(0, BASE)
    _write(path, ids)
    _check(path, cache)
    (entry,) = cache.iterdir()
    data = bytearray(entry.read_bytes())
    groups = 3 * idkeys.GROUP.size
    keys = idkeys.HEADER.size + groups
    if damage == "forge-key":  # still sorted, but ids[0]'s key is gone: only the checksum
        at = data.index(int(ids[0][:16], 16).to_bytes(8, "little"), keys)
        data[at] ^= 1
    elif damage == "zero-keys":
        data[keys:] = bytes(len(data) - keys)
    elif damage == "truncate":
        data = data[:-8]
    elif damage == "flip-group":
        data[idkeys.HEADER.size + 40] ^= 1
    elif damage == "empty":
        data = bytearray()
    else:
        data[8] = idkeys.VERSION + 1
    entry.write_bytes(bytes(data))
    _write(path, [*ids, *_ids(BASE, BASE + 50), ids[0]])
    assert _check(path, cache) == idkeys.Outcome(ids[0], 0, 4)
    _write(path, [*ids, *_ids(BASE, BASE + 50)])
    assert _check(path, cache) == idkeys.Outcome(None, 0, 4)  # full check, new entry
    assert _check(path, cache) == idkeys.Outcome(None, 3, 1)


def _entries(cache: Path) -> dict[tuple[int, int, int], Path]:
    """Each entry by (first row group, row groups, keys)."""
    return {tuple(_header(p)[3:6]): p for p in cache.iterdir()}


def test_an_append_writes_only_its_new_keys_and_folds_small_entries(where) -> None:
    path, cache = where
    _write(path, _ids(0, BASE))
    _check(path, cache)
    (root,) = cache.iterdir()
    before = root.read_bytes()
    _write(path, _ids(0, BASE + G))  # one more full group: an entry of it alone
    assert _check(path, cache) == idkeys.Outcome(None, 3, 2)
    assert set(_entries(cache)) == {(0, 3, 3 * G), (3, 1, G)}
    assert root.read_bytes() == before  # the old keys are not rewritten
    _write(path, _ids(0, BASE + 2 * G))
    assert _check(path, cache) == idkeys.Outcome(None, 4, 2)
    # G new keys fold the entry of G keys below them (G <= 2 G), then the root (3 G <= 4 G)
    assert set(_entries(cache)) == {(0, 3, 3 * G), (3, 1, G), (0, 5, 5 * G)}
    _write(path, _ids(0, BASE + 3 * G))
    assert _check(path, cache) == idkeys.Outcome(None, 5, 2)
    _write(path, [*_ids(0, BASE + 3 * G), _ids(0, 1)[0]])  # a row-0 id again, at the end
    assert _check(path, cache).duplicate == _ids(0, 1)[0]


CHAIN_DAMAGES = [
    "parent-missing",
    "parent-forged-key",
    "parent-truncated",
    "tip-first",
    "tip-parent",
]


@pytest.mark.parametrize("damage", CHAIN_DAMAGES)
def test_a_chain_with_a_damaged_link_is_not_used(where, damage: str) -> None:
    """An appended id equal to one in the parent entry's groups is found whatever happened
    to the parent or to the link; a damaged tip leaves the parent usable alone."""
    path, cache = where
    ids = _ids(0, BASE + G)
    _write(path, _ids(0, BASE))
    _check(path, cache)
    _write(path, ids)
    _check(path, cache)
    entries = _entries(cache)
    root, tip = entries[(0, 3, 3 * G)], entries[(3, 1, G)]
    if damage == "parent-missing":
        root.unlink()
    elif damage == "parent-forged-key":  # still sorted: only the checksum tells
        data = bytearray(root.read_bytes())
        at = data.index(int(ids[0][:16], 16).to_bytes(8, "little"), idkeys.HEADER.size)
        data[at] ^= 1
        root.write_bytes(bytes(data))
    elif damage == "parent-truncated":
        root.write_bytes(root.read_bytes()[:-8])
    else:
        data = bytearray(tip.read_bytes())
        field = 16 if damage == "tip-first" else 40  # the first group, the parent's name
        data[field] ^= 1
        tip.write_bytes(bytes(data))
    _write(path, [*ids, ids[0]])
    assert _check(path, cache) == idkeys.Outcome(ids[0], 0, 5)
    _write(path, [*ids, *_ids(BASE + G, BASE + G + 10)])
    reused = 3 if damage.startswith("tip") else 0
    assert _check(path, cache) == idkeys.Outcome(None, reused, 5 - reused)


def test_an_entry_is_used_only_under_the_prefix_it_was_checked_with(where) -> None:
    """Table B shares table A's fourth row group but not its first three, and one of B's
    first three holds an id of that group. A's entry of the fourth group (its keys only
    known to differ from A's first groups) must not be chained onto B's root entry."""
    path, cache = where
    first, shared = _ids(0, 3 * G), _ids(3 * G, 4 * G)
    _write(path, [*first, *_ids(9 * G, 9 * G + 100)])
    _check(path, cache)  # root of A: groups 0-2
    _write(path, [*first, *shared, *_ids(9 * G, 9 * G + 500)])
    assert _check(path, cache) == idkeys.Outcome(None, 3, 2)  # A's entry of group 3
    other = [*_ids(10 * G, 13 * G - 1), shared[5]]  # three groups, one id of the shared one
    _write(path, [*other, *_ids(9 * G, 9 * G + 100)])
    assert _check(path, cache) == idkeys.Outcome(None, 0, 4)  # root of B: groups 0-2
    _write(path, [*other, *shared, *_ids(9 * G, 9 * G + 500)])
    assert _check(path, cache).duplicate == shared[5]


def test_the_chains_of_the_most_recent_entries_are_kept_whole(where) -> None:
    path, cache = where
    grown = _ids(0, BASE + G)
    _write(path, _ids(0, BASE))
    _check(path, cache)
    _write(path, grown)
    _check(path, cache)  # a chain of two entries
    for n in range(1, idkeys.KEEP):  # other tables, up to KEEP chains in all
        _write(path, _ids(n * 10 * BASE, n * 10 * BASE + BASE))
        _check(path, cache)
    assert len(list(cache.iterdir())) == 2 + idkeys.KEEP - 1
    _write(path, [*grown, *_ids(BASE + G, BASE + G + 5)])
    assert _check(path, cache) == idkeys.Outcome(None, 4, 1)  # root and tip both still there
    _write(path, _ids(99 * BASE, 100 * BASE))  # one chain more: the least recently used goes
    _check(path, cache)
    assert len(list(cache.iterdir())) == 2 + idkeys.KEEP - 1
    _write(path, _ids(10 * BASE, 11 * BASE))  # the first other table's entry was pruned
    assert _check(path, cache).reused == 0
    _write(path, [*grown, *_ids(BASE + G, BASE + G + 6)])
    assert _check(path, cache).reused == 4


def test_a_changed_earlier_row_group_is_checked_whole(where) -> None:
    path, cache = where
    ids = _ids(0, BASE)
    _write(path, ids)
    _check(path, cache)
    changed = [ids[-1], *ids[1:]]  # not an append: row 0 now repeats the last row's id
    _write(path, changed)
    assert _check(path, cache) == idkeys.Outcome(ids[-1], 0, 4)
    _write(path, [_ids(BASE, BASE + 1)[0], *ids[1:]])
    assert _check(path, cache) == idkeys.Outcome(None, 0, 4)


def test_the_cache_keeps_only_the_most_recent_entries(where) -> None:
    path, cache = where
    for n in range(idkeys.KEEP + 3):
        _write(path, _ids(n * BASE, (n + 1) * BASE))
        assert _check(path, cache) == idkeys.Outcome(None, 0, 4)
        assert len([p for p in cache.iterdir()]) == min(n + 1, idkeys.KEEP)
    _write(path, _ids(0, BASE))  # the first table's entry was pruned
    assert _check(path, cache).reused == 0


def test_what_is_not_cached(where) -> None:
    """Ids that are not core ids (their keys are per-process hashes): the full check
    answers, and no entry is kept."""
    path, cache = where
    other = [f"seq-{i}" for i in range(BASE)]
    _write(path, other)
    assert _check(path, cache) == idkeys.Outcome(None, 0, 4)
    _write(path, [*other, "seq-9"])
    assert _check(path, cache) == idkeys.Outcome("seq-9", 0, 4)
    assert not cache.exists()
    _write(path, _ids(0, BASE))
    assert idkeys.check(pq.ParquetFile(path), path.open("rb"), None).reused == 0


@pytest.mark.parametrize("passes", [2, 5])
def test_a_table_over_one_pass_is_cached_from_its_spooled_keys(
    where, monkeypatch, passes: int
) -> None:
    """Above unique_ids.PER_PASS rows the keys are spooled in partitions (one decode of the
    ids): the entry written from them is byte for byte the one a single pass writes, an
    append reuses it, and a duplicate (old id appended, or two new ones) is refused."""
    from usr import unique_ids

    path, cache = where
    ids = _ids(0, 6 * G + 300)
    _write(path, ids)
    assert _check(path, cache) == idkeys.Outcome(None, 0, 7)
    (one_pass,) = cache.iterdir()
    expected = one_pass.read_bytes()
    one_pass.unlink()
    monkeypatch.setattr(unique_ids, "PER_PASS", -(-len(ids) // passes))
    monkeypatch.setattr(idkeys, "PER_PASS", -(-len(ids) // passes))
    assert _check(path, cache) == idkeys.Outcome(None, 0, 7)
    (spooled,) = cache.iterdir()
    assert spooled.name == one_pass.name and spooled.read_bytes() == expected
    assert not [p for p in Path(tempfile.gettempdir()).iterdir() if "usr-idkeys-" in p.name]
    grown = [*ids, *_ids(10**6, 10**6 + G)]
    _write(path, grown)
    assert _check(path, cache) == idkeys.Outcome(None, 6, 2)
    _write(path, [*grown, ids[G + 5]])
    assert _check(path, cache).duplicate == ids[G + 5]
    cache_gone = [p.unlink() for p in cache.iterdir()]
    assert cache_gone
    _write(path, [ids[-1], *ids])  # first and last partition: a duplicate across row groups
    assert _check(path, cache) == idkeys.Outcome(ids[-1], 0, 7)
    assert not cache.exists() or not list(cache.iterdir())


def test_a_temporary_directory_that_cannot_take_the_spool_is_named_not_the_table(
    where, monkeypatch, tmp_path: Path
) -> None:
    """Over one pass the keys are spooled to TMPDIR; when it cannot take them the check
    fails naming the directory and why (exit 1), never as a refusal of the table, and
    leaves no entry and no open spool behind."""
    from usr import unique_ids
    from usr.errors import UsrError

    path, cache = where
    _write(path, _ids(0, BASE))
    monkeypatch.setattr(unique_ids, "PER_PASS", G)
    bogus = tmp_path / "not-a-directory"
    bogus.write_text("a file where TMPDIR should be\n")
    monkeypatch.setattr(tempfile, "tempdir", str(bogus))
    with path.open("rb") as fh, pytest.raises(UsrError) as exc:
        check_records(fh, "the push of state test", cache)
    assert not isinstance(exc.value, GateRefused)
    assert exc.value.exit_code == 1
    assert str(bogus) in exc.value.message and "TMPDIR" in exc.value.hint
    assert "\n" not in exc.value.one_line()
    assert not cache.exists() or not list(cache.glob(f"*{idkeys.SUFFIX}"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with path.open("rb") as fh:
        check_records(fh, "the push of state test", cache)  # with room, it passes
    assert list(cache.glob(f"*{idkeys.SUFFIX}"))


def test_the_store_side_reads_the_blob_and_keeps_its_own_entry(tmp_path: Path) -> None:
    """check_state reads records.parquet through EntryFile; its entry lands in the
    dataset's own .usr/idkeys, and the next state's check reuses it."""
    ds = tmp_path / "ds"
    ds.mkdir()
    ids = _ids(0, BASE)
    _write(ds / RECORDS_FILE, ids)
    store = Store.open(ds)
    first = store.record("import").commit
    assert check_state(store, first, None, "test") == {"checked": [RECORDS_FILE]}
    (entry,) = (ds / ".usr" / idkeys.CACHE_DIR).glob(f"*{idkeys.SUFFIX}")
    _write(ds / RECORDS_FILE, [*ids, *_ids(BASE, BASE + 200)])
    second = store.record("append").commit
    blob = str(store.repo[store.tree_of(second)][RECORDS_FILE].id)
    source = EntryFile(store, blob)
    outcome = idkeys.check(pq.ParquetFile(source), source, idkeys.cache_of(ds))
    assert outcome == idkeys.Outcome(None, 3, 1)
    _write(ds / RECORDS_FILE, [*ids, *_ids(BASE, BASE + 200), ids[1]])
    third = store.record("append a duplicate").commit
    with pytest.raises(GateRefused, match="fails the unique-ids check"):
        check_state(store, third, second, "test")


class _Counted(io.RawIOBase):
    """A store entry read through, counting the bytes asked of it."""

    def __init__(self, inner: EntryFile) -> None:
        self.inner, self.read_bytes = inner, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self.inner.seek(offset, whence)

    def tell(self) -> int:
        return self.inner.tell()

    def readinto(self, buffer) -> int:
        n = self.inner.readinto(buffer)
        self.read_bytes += n
        return n

    def chunks_covering(self, start: int, end: int):
        return self.inner.chunks_covering(start, end)


def test_an_append_is_fingerprinted_from_the_memo_without_reading_its_old_groups(
    tmp_path: Path,
) -> None:
    """The fingerprints of a table whose leading chunks a checked table shares come from
    the memo (usr.idmemo) for those groups: the same group table as reading every group,
    with far fewer bytes read; a damaged memo is ignored and costs only the reading."""
    from usr import idmemo

    ds = tmp_path / "ds"
    ds.mkdir()
    ids = _ids(0, 8 * G + 300)
    _write(ds / RECORDS_FILE, ids)
    store = Store.open(ds)
    first = store.record("import").commit
    check_state(store, first, None, "test")
    cache = ds / ".usr" / idkeys.CACHE_DIR
    assert list(cache.glob(f"*{idmemo.SUFFIX}"))
    _write(ds / RECORDS_FILE, [*ids, *_ids(10**6, 10**6 + 500)])
    second = store.record("append").commit
    blob = str(store.repo[store.tree_of(second)][RECORDS_FILE].id)
    assert store.manifest_of(blob) is not None  # a chunked entry: its ranges are named

    def fingerprinted(memo_from: Path | None) -> tuple[bytes | None, int]:
        source = _Counted(EntryFile(store, blob))
        return idkeys.fingerprints(pq.ParquetFile(source), source, memo_from), source.read_bytes

    whole, read_whole = fingerprinted(None)
    memoed, read_memoed = fingerprinted(cache)
    assert memoed == whole
    assert read_memoed < read_whole // 3, (read_memoed, read_whole)
    for memo in cache.glob(f"*{idmemo.SUFFIX}"):
        raw = bytearray(memo.read_bytes())
        raw[-1] ^= 1
        memo.write_bytes(bytes(raw))
    assert idmemo.load(cache) == {}
    damaged, read_damaged = fingerprinted(cache)
    assert damaged == whole and read_damaged >= read_whole - 4096
    outcome = idkeys.check(pq.ParquetFile(EntryFile(store, blob)), EntryFile(store, blob), cache)
    assert outcome == idkeys.Outcome(None, 8, 1)


def test_the_working_check_keeps_its_entry_in_the_dataset_store_only(tmp_path: Path) -> None:
    """check_working (a sender's files) uses ``<dataset>/.usr/idkeys``; a directory without
    a store gets no cache (nothing is created in it)."""
    bare = tmp_path / "bare"
    bare.mkdir()
    _write(bare / RECORDS_FILE, _ids(0, BASE))
    assert check_working(bare, "test") == {"checked": [RECORDS_FILE]}
    assert sorted(p.name for p in bare.iterdir()) == [RECORDS_FILE]
    Store.open(bare)
    check_working(bare, "test")
    (entry,) = (bare / ".usr" / idkeys.CACHE_DIR).iterdir()
    assert _groups_of(entry) == 3
    _write(bare / RECORDS_FILE, [*_ids(0, BASE), *_ids(BASE, BASE + 9), _ids(0, 1)[0]])
    with pytest.raises(GateRefused, match="fails the unique-ids check"):
        check_working(bare, "test")


def _sequences(rng: random.Random, n: int) -> list[dict[str, str]]:
    return [{"sequence": "".join(rng.choices("ACGT", k=24))} for _ in range(n)]


def test_a_push_after_an_append_passes_and_a_duplicate_is_refused(tmp_path: Path) -> None:
    env = make_env("local", tmp_path)
    rng = random.Random(5)
    ds = Dataset.init(env.local_root, DS, source="test")
    ds.append_records(_sequences(rng, 2 * G + 700), bio_type="dna", alphabet="dna_4")
    env.push()
    ds.append_records(_sequences(rng, 400), bio_type="dna", alphabet="dna_4")  # ~1%
    env.push()
    records = env.local_dir / RECORDS_FILE
    assert (env.remote_dir / RECORDS_FILE).read_bytes() == records.read_bytes()
    for side in (env.local_dir, env.remote_dir):  # both gates kept an entry of the append
        groups = pq.ParquetFile(records).num_row_groups
        heads = [_groups_of(p) for p in (side / ".usr" / idkeys.CACHE_DIR).iterdir()]
        assert groups - 1 in heads

    table = pq.read_table(records)
    write_records(records, pa.concat_tables([table, table.slice(9, 1)]).to_batches(), CORE_SCHEMA)
    before = fingerprint(env)
    with pytest.raises(VerifyError) as exc:
        env.push()
    assert exc.value.exit_code == 5
    assert f"{RECORDS_FILE} fails the unique-ids check" in exc.value.message
    assert table.column("id")[9].as_py() in exc.value.message
    assert fingerprint(env) == before


def _header(entry: Path) -> tuple:
    return idkeys.HEADER.unpack(entry.read_bytes()[: idkeys.HEADER.size])


def _groups_of(entry: Path) -> int:
    """The row groups of its table an entry reaches: its first one plus its own."""
    head = _header(entry)
    return head[3] + head[4]


#: Traced bytes a row the check may hold at its peak: its one array of 8-byte keys, plus
#: what keying one read of row groups takes (bounded by READ_ROWS, not by the table).
BYTES_PER_ROW = 14


@pytest.mark.parametrize("how", ["no cache", "first entry", "after an append"])
def test_the_check_holds_one_key_array_not_copies_of_it(where, monkeypatch, how: str) -> None:
    """Memory: the keys of a check are gathered into one array and sorted in place, the
    entry written from it and an append's keys likewise, so numpy holds ~8 bytes a row at
    the peak (a list of pieces, its concatenation and a sorted copy held 24). tracemalloc
    sees numpy's arrays, not Arrow's decoded buffers (bounded by READ_ROWS, a row group
    here)."""
    import tracemalloc

    from usr import unique_ids

    monkeypatch.setattr(unique_ids, "READ_ROWS", G)
    rows = 24 * G  # ~400,000: one row group's temporaries are small beside the keys
    ids = _ids(0, rows + G + 100)
    _write(path := where[0], ids[:rows])
    cache = None if how == "no cache" else where[1]
    if how == "after an append":
        assert _check(path, cache).decoded == 24
        _write(path, ids)
    with path.open("rb") as fh:
        pf = pq.ParquetFile(fh)
        tracemalloc.start()
        try:
            outcome = idkeys.check(pf, fh, cache)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert outcome.duplicate is None
    assert outcome.reused == (23 if how == "after an append" else 0)  # all but the last
    assert peak / pf.metadata.num_rows < BYTES_PER_ROW, f"{peak / pf.metadata.num_rows:.1f}"
