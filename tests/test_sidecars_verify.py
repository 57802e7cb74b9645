"""``verify-sidecars``: every check on real datasets built through the Python API.

Each bad case is made the way it happens in the field (a tool rewriting a part in place,
a file dropped into ``_artifacts/``, a part written under a contract that changed, a log
rewritten by an editor) and must produce exactly the problem it is about.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from usr import ledger, registry, sidecars
from usr.dataset import Dataset
from usr.store import Store

DS = "densegen/my_dataset"


@pytest.fixture
def ds(root: Path) -> Dataset:
    """A dataset with three records and one attached overlay part (ledger-recorded)."""
    registry.register(root, "infer", [("infer__ll", "float64"), ("infer__tag", "string")])
    d = Dataset.init(root, DS, source="test")
    d.append_records([{"sequence": s} for s in ("ACGT", "GGCC", "TTAA")], bio_type="dna")
    ids = d.to_table().column("id").to_pylist()
    d.attach(pa.table({"id": ids, "ll": [0.1, 0.2, 0.3]}), namespace="infer", columns=["ll"])
    return d


def _ids(d: Dataset) -> list[str]:
    return d.to_table(overlay=False).column("id").to_pylist()


def _part(d: Dataset) -> Path:
    return next((d.path / "_derived" / "infer").glob("*.parquet"))


def _check(d: Dataset, commit: str | None = None) -> list[tuple[str, str]]:
    state = sidecars.open_state(d.path, commit)
    report = sidecars.check_state(state, d.id, d.root)
    return [(p.path, p.check) for p in report.problems]


def _record(d: Dataset, action: str = "snapshot") -> str:
    rec = Store.open(d.path).record(action)
    assert rec.commit is not None
    return rec.commit


def _write_part(
    d: Dataset, table: pa.Table, namespace: str = "infer", contract: str | None = None
) -> str:
    """A part as a foreign writer would make it, stamped like usr's, and vouched in the
    ledger (so only the check under test can fail)."""
    ns = registry.Registry.load(d.root).namespaces.get(namespace)
    stamps = {
        "usr:namespace": namespace,
        "usr:key": "id",
        "usr:contract_hash": contract or (ns.contract_hash() if ns else "0" * 64),
    }
    rel = f"_derived/{namespace}/part-foreign.parquet"
    (d.path / rel).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.replace_schema_metadata(stamps), d.path / rel)
    ledger.record(d.path, [rel], via="api")
    return rel


def test_attach_records_its_part_and_a_clean_dataset_passes(ds: Dataset) -> None:
    book = ledger.load(ds.path)
    rel = _part(ds).relative_to(ds.path).as_posix()
    assert [(e.path, e.via) for e in book.entries] == [
        (rel, "attach"),
        ("_registry/registry.toml", "attach"),
    ]
    frozen = registry.Registry.load(ds.path / "_registry")
    root_ns = registry.Registry.load(ds.root).namespaces["infer"]
    assert frozen.namespaces["infer"].contract_hash() == root_ns.contract_hash()
    assert frozen.namespaces["infer"].created_at == ""  # contract only: same bytes anywhere
    assert _check(ds) == []
    head = _record(ds)  # the ledger itself is now part of the recorded state
    assert _check(ds, head) == []
    assert _check(ds, "HEAD") == []


def test_tampered_part_fails_even_after_it_is_recorded(ds: Dataset) -> None:
    part = _part(ds)
    table = pq.read_table(part)
    pq.write_table(table.set_column(1, "infer__ll", pa.array([9.0, 9.0, 9.0])), part)
    head = _record(ds, "snapshot after tamper")
    problems = sidecars.check_state(sidecars.open_state(ds.path, head), ds.id, ds.root).problems
    assert [(p.check, p.found) for p in problems] == [
        ("ledger", problems[0].found),
    ]
    assert "other bytes were recorded" in problems[0].found


def test_unvouched_auxiliary_file_fails_until_vouched(ds: Dataset, usr) -> None:
    (ds.path / "_artifacts").mkdir()
    (ds.path / "_artifacts" / "report.txt").write_text("made by another tool\n")
    assert _check(ds) == [("_artifacts/report.txt", "ledger")]

    r = usr("--root", str(ds.root), "plumbing", "verify-sidecars", DS)
    assert r.returncode == 5
    assert r.stdout.split("\t")[:3] == ["_artifacts/report.txt", "ledger", "a recorded digest"]
    assert "1 sidecar problem in densegen/my_dataset at working" in r.stderr

    r = usr("--root", str(ds.root), "plumbing", "verify-sidecars", DS, "--record")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "recorded\t_artifacts/report.txt"
    assert ledger.load(ds.path).entries[-1].via == "vouch"
    assert _check(ds) == []

    (ds.path / "_artifacts" / "report.txt").write_text("edited in place\n")
    assert _check(ds) == [("_artifacts/report.txt", "ledger")]


def test_record_refuses_to_vouch_for_a_bad_part(ds: Dataset, usr) -> None:
    ids = _ids(ds)
    rel = "_derived/ghost/part-x.parquet"
    (ds.path / rel).parent.mkdir(parents=True)
    pq.write_table(pa.table({"id": ids, "ghost__v": [1.0, 2.0, 3.0]}), ds.path / rel)
    before = (ds.path / ledger.LEDGER_PATH).read_bytes()
    r = usr(
        "--root", str(ds.root), "plumbing", "verify-sidecars", DS, "--record", "--format", "json"
    )
    assert r.returncode == 5
    doc = json.loads(r.stdout)["data"]
    assert [(p["path"], p["check"]) for p in doc["problems"]] == [(rel, "namespace")]
    assert doc["recorded"] == []
    assert (ds.path / ledger.LEDGER_PATH).read_bytes() == before


def test_unregistered_namespace(ds: Dataset) -> None:
    rel = _write_part(ds, pa.table({"id": _ids(ds), "ghost__v": [1.0, 2.0, 3.0]}), "ghost")
    assert _check(ds) == [(rel, "namespace")]


def test_frozen_registry_copy_covers_a_namespace_the_root_lacks(ds: Dataset) -> None:
    """A dataset received on a machine whose root never registered its namespace."""
    head = _record(ds)
    elsewhere = ds.root.parent / "laptop" / DS
    shutil.copytree(ds.path, elsewhere)
    assert not (ds.root.parent / "laptop" / "registry.toml").exists()
    assert _check_at(elsewhere, ds.root.parent / "laptop", head) == []
    (elsewhere / "_registry" / "registry.toml").unlink()
    assert _check_at(elsewhere, ds.root.parent / "laptop", None) == [
        (_part(ds).relative_to(ds.path).as_posix(), "namespace")
    ]


def _check_at(path: Path, root: Path, commit: str | None) -> list[tuple[str, str]]:
    report = sidecars.check_state(sidecars.open_state(path, commit), DS, root)
    return [(p.path, p.check) for p in report.problems]


def test_stale_contract_hash(ds: Dataset) -> None:
    rel = _write_part(
        ds, pa.table({"id": _ids(ds), "infer__ll": [1.0, 2.0, 3.0]}), contract="ab" * 32
    )
    state = sidecars.open_state(ds.path)
    problems = sidecars.check_state(state, ds.id, ds.root).problems
    assert [(p.path, p.check, p.found) for p in problems] == [(rel, "contract-hash", "ab" * 32)]


def test_wrong_column_type_and_unregistered_column(ds: Dataset) -> None:
    rel = _write_part(
        ds, pa.table({"id": _ids(ds), "infer__ll": ["a", "b", "c"], "infer__extra": [1, 2, 3]})
    )
    assert sorted(_check(ds)) == [(rel, "columns"), (rel, "columns")]


def test_duplicate_and_absent_join_keys(ds: Dataset) -> None:
    ids = _ids(ds)
    rel = _write_part(ds, pa.table({"id": [ids[0], ids[0], "nope"], "infer__ll": [1.0, 2.0, 3.0]}))
    problems = sidecars.check_state(sidecars.open_state(ds.path), ds.id, ds.root).problems
    found = [(p.path, p.check, p.expected) for p in problems]
    assert found == [
        (rel, "join-key", "unique id"),
        (rel, "join-key", "every id in records.parquet"),
    ]


def test_unreadable_parquet(ds: Dataset) -> None:
    rel = "_derived/infer/part-broken.parquet"
    (ds.path / rel).write_bytes(b"PAR1 not really parquet")
    ledger.record(ds.path, [rel])
    assert _check(ds) == [(rel, "parquet")]


def test_rewritten_events_log_fails_appended_passes(ds: Dataset) -> None:
    _record(ds)
    log = ds.path / ".events.log"
    ds.append_event("note", {"k": 1})
    assert _check(ds) == []
    lines = log.read_text().splitlines(keepends=True)
    first = json.loads(lines[0])
    first["args"] = {"source": "rewritten"}
    log.write_text(json.dumps(first) + "\n" + "".join(lines[1:]))
    assert _check(ds) == [(".events.log", "events-append-only")]
    head = _record(ds, "snapshot rewritten log")
    assert _check(ds, head) == [(".events.log", "events-append-only")]


def test_events_log_line_that_is_not_json(ds: Dataset) -> None:
    with (ds.path / ".events.log").open("a") as fh:
        fh.write("not json\n")
    assert _check(ds) == [(".events.log", "events-json")]


def test_rewritten_ledger_fails(ds: Dataset) -> None:
    _record(ds)
    path = ds.path / ledger.LEDGER_PATH
    path.write_text(path.read_text().replace('"via":"attach"', '"via":"vouch"'))
    assert (ledger.LEDGER_PATH, "ledger-append-only") in _check(ds)


def test_head_compared_with_working_files(ds: Dataset) -> None:
    head = _record(ds)
    part = _part(ds)
    part.write_bytes(part.read_bytes() + b"\n")
    rel = part.relative_to(ds.path).as_posix()
    assert _check(ds, head) == [(rel, "working-hash")]


def test_symlink_sidecar_is_refused(ds: Dataset, tmp_path: Path) -> None:
    (tmp_path / "elsewhere.txt").write_text("x")
    (ds.path / "_artifacts").mkdir()
    (ds.path / "_artifacts" / "link.txt").symlink_to(tmp_path / "elsewhere.txt")
    assert _check(ds) == [("_artifacts/link.txt", "file-type")]


def test_chunked_part_is_rehashed_through_its_manifest(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("USR_INLINE_LIMIT", "1024")
    registry.register(root, "infer", [("infer__ll", "float64")])
    d = Dataset.init(root, "big")
    d.append_records(
        [{"sequence": "ACGT" * (i % 7 + 1) + "G" * i} for i in range(400)], bio_type="dna"
    )
    ids = _ids(d)
    d.attach(pa.table({"id": ids, "ll": [float(i) for i in range(len(ids))]}), namespace="infer")
    head = _record(d)
    store = Store.open(d.path)
    rel = _part(d).relative_to(d.path).as_posix()
    oid = dict((p, o) for p, o, _ in store.ls_tree(head))[rel]
    assert store.manifest_of(oid) is not None  # the part really is chunked
    assert _check(d, head) == []
    # An older state: records.parquet and the part come from chunks, not the working files.
    d.append_records([{"sequence": "ACGTACGTAAAA"}], bio_type="dna")
    assert Store.open(d.path).head() != head
    assert _check(d, head) == []
    assert _check(d, "HEAD") == []
