"""The gate's check of a pushed table on its staged copy (``usr.sync.gate.StagedCheck``).

A push sends ``records.parquet`` first among the files; the receiver stages it as its
chunks land and, once the copy is verified whole, checks it on a thread while the rest of
the stream arrives. These tests hold what that answer may stand for: a refusal or a pass
for that blob only, given only for the file the stream verified, and taken by
``check_state`` in place of reading the table from the store. The crash sweep kills a
receiver at ``gate.staged-check`` (tests/test_reliability_crash.py), and a push over both
transports is refused or passes on it (tests/test_safety_gates.py).
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from usr.dataset import Dataset
from usr.errors import UsrError
from usr.layout import RECORDS_FILE
from usr.store import Store, revlist
from usr.store.streamstage import StreamStager
from usr.sync import packstream, pushplan
from usr.sync import protocol as p
from usr.sync.gate import GateRefused, StagedCheck, check_state

DS = "demo/staged"
WHERE = "the push of state 0123456789ab"


@pytest.fixture(autouse=True)
def chunked_tables(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables of a few KB are chunked files (manifests), as a big table is; and this
    process's memo of passed blobs starts empty and is dropped after."""
    from usr.sync import gate

    monkeypatch.setenv("USR_INLINE_LIMIT", "1024")
    monkeypatch.setattr(gate, "_PASSED", set())


def _dataset(root: Path, rows: int = 50) -> Path:
    ds = Dataset.init(root, DS, source="test")
    seqs = ["".join("ACGT"[(i * 7 + j) % 4] for j in range(12 + i % 5)) for i in range(rows)]
    records = [{"sequence": s} for s in dict.fromkeys(seqs)]
    ds.append_records(records, bio_type="dna", alphabet="dna_4")
    return ds.path


def _duplicated(table_path: Path) -> None:
    """Rewrite the table with its first row twice (a duplicate id)."""
    table = pq.read_table(table_path)
    import pyarrow as pa

    pq.write_table(pa.concat_tables([table, table.slice(0, 1)]), table_path)


def _check(directory: Path, blob: str = "ab" * 20) -> StagedCheck:
    path = directory / RECORDS_FILE
    return StagedCheck(directory, blob, str(path), os.stat(path))


def test_a_passing_copy_answers_for_its_blob_only(tmp_path: Path) -> None:
    check = _check(_dataset(tmp_path))
    assert check.answer("cd" * 20, WHERE) is False  # another blob: no answer
    assert check.answer("ab" * 20, WHERE) is True


def test_a_refused_copy_raises_the_gates_refusal_naming_the_state(tmp_path: Path) -> None:
    directory = _dataset(tmp_path)
    _duplicated(directory / RECORDS_FILE)
    check = _check(directory)
    with pytest.raises(GateRefused) as exc:
        check.answer("ab" * 20, WHERE)
    assert exc.value.check == "unique-ids" and exc.value.path == RECORDS_FILE
    assert exc.value.message.startswith(f"refusing {WHERE}: {RECORDS_FILE} fails")
    assert exc.value.exit_code == 5


def test_a_copy_changed_or_gone_since_it_was_verified_gives_no_answer(tmp_path: Path) -> None:
    """The stat the stream took when it verified the copy must still hold: a file written
    since (even a refused one made good) or removed is not answered for."""
    directory = _dataset(tmp_path)
    path = directory / RECORDS_FILE
    verified = os.stat(path)
    _duplicated(path)
    assert StagedCheck(directory, "ab" * 20, str(path), verified).answer("ab" * 20, WHERE) is False
    gone = os.stat(path)
    path.unlink()
    assert StagedCheck(directory, "ab" * 20, str(path), gone).answer("ab" * 20, WHERE) is False


def test_check_state_takes_the_staged_answer_for_the_pushed_table(tmp_path: Path) -> None:
    """The answer stands for the table's blob: a state whose stored table is good is
    refused when the staged copy's check refused (only the stream's verification ties the
    two together), and passes from the staged answer without the store."""
    directory = _dataset(tmp_path / "a")
    store = Store.open(directory)
    commit = store.record("first").commit
    blob = str(store.repo[store.tree_of(commit)][RECORDS_FILE].id)
    bad = _dataset(tmp_path / "b")
    _duplicated(bad / RECORDS_FILE)
    bad_check = StagedCheck(bad, blob, str(bad / RECORDS_FILE), os.stat(bad / RECORDS_FILE))
    with pytest.raises(GateRefused, match="unique-ids"):
        check_state(store, commit, None, WHERE, bad_check)
    shutil.rmtree(store.gitdir / "chunks")  # the stored table can no longer be read
    good = _dataset(tmp_path / "c")
    good_check = StagedCheck(good, blob, str(good / RECORDS_FILE), os.stat(good / RECORDS_FILE))
    with pytest.raises(UsrError):  # from the store, the table is unreadable now
        check_state(store, commit, None, WHERE)
    assert RECORDS_FILE in check_state(store, commit, None, WHERE, good_check)["checked"]


def test_a_push_sends_the_table_before_the_other_files(tmp_path: Path) -> None:
    """Commits and trees first, then the records table, then every other blob in plan order
    (``_artifacts/`` sorts before it by path, so it would come last)."""
    directory = _dataset(tmp_path)
    (directory / "_artifacts").mkdir()
    for i in range(5):
        (directory / "_artifacts" / f"part-{i}.json").write_text(f'{{"part": {i}}}\n')
    store = Store.open(directory)
    new = store.record("first").commit
    table = str(store.repo[store.tree_of(new)][RECORDS_FILE].id)
    listed = revlist.missing_typed(store.repo, [new], [])
    plan = pushplan.plan_push(store, listed.oids(), None, first=table)
    order = [plan.oid(i) for i in plan.sending_order(bytearray([1]) * len(plan))]
    blobs = [o for o in order if plan.is_blob(o)]
    assert order[: len(plan.others)] == [o for o in order if not plan.is_blob(o)]
    assert blobs[0] == table and len(blobs) > 5
    unordered = pushplan.plan_push(store, revlist.missing_typed(store.repo, [new], []).oids(), None)
    rest = [unordered.oid(i) for i in unordered.sending_order(bytearray([1]) * len(plan))]
    assert [o for o in rest if o != table] == [o for o in order if o != table]


def test_the_stream_tells_of_the_table_once_it_is_verified_whole(tmp_path: Path) -> None:
    """A receive of a manifests-first stream tells its watcher of each chunked file it
    staged and verified: the path, the manifest's blob id, the staged file and its stat."""
    src = Store.open(_dataset(tmp_path / "src"))
    new = src.record("first").commit
    table = str(src.repo[src.tree_of(new)][RECORDS_FILE].id)
    dst = Store.open(tmp_path / "dst" / "ds")
    listed = revlist.missing_typed(src.repo, [new], [])
    plan = pushplan.plan_push(src, listed.oids(), None, first=table)
    out = io.BytesIO()
    fio = p.FrameIO(p.FileChannel(io.BytesIO(), out), peer="test")
    for i in plan.sending_order(bytearray([1]) * len(plan)):
        oid = plan.oid(i)
        packstream.send_objects(src, fio, [oid])
        for cid in plan.chunks_of.get(oid, []):
            fio.send_chunk(cid, src.chunks.get(cid))
    fio.send_message("end")
    fio.flush()
    told: list[tuple[str, str, str, os.stat_result]] = []
    stager = StreamStager(dst, chunked=True, on_verified=lambda *a: told.append(a))
    back = p.FrameIO(p.FileChannel(io.BytesIO(out.getvalue()), io.BytesIO()), peer="test")
    packstream.receive(dst, back, "test", stage=stager, manifests_first=True)
    assert [(rel, oid) for rel, oid, _, _ in told] == [(RECORDS_FILE, table)]
    _, _, path, st = told[0]
    assert Path(path).read_bytes() == (src.path / RECORDS_FILE).read_bytes()
    assert os.stat(path).st_ino == st.st_ino
    stager.discard()
