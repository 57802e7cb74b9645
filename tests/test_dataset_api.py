"""The dataset Python API batch writers call: init, append, attach, events, views, export.

Library calls on real Parquet/CSV files; the CLI contract is tested in test_lifecycle_cli.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from usr import registry as reg
from usr.dataset import Dataset, list_datasets
from usr.errors import InputError, NotFoundError, UsageError, VerifyError
from usr.events import REDACTED
from usr.layout import is_runtime_path
from usr.records import CORE_SCHEMA, record_id


def snapshot(root: Path) -> dict[str, bytes]:
    """Every recorded file under ``root`` and its bytes (runtime state excluded)."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not is_runtime_path(p.relative_to(root).as_posix())
    }


def register_infer(root: Path) -> None:
    cols = reg.parse_columns("infer", "infer__ll:float64,infer__v:list<float64>,label:string")
    reg.register(root, "infer", cols, owner="ops", description="scores")


@pytest.fixture
def ds(root: Path) -> Dataset:
    d = Dataset.init(root, "densegen/demo", source="unit test")
    d.append_records(
        [
            {"sequence": "ACGT"},
            {"sequence": "  GGCC\n"},
            {"sequence": "MKV", "bio_type": "protein"},
        ],
        source="batch 1",
    )
    register_infer(root)
    return d


def test_init_creates_core_files_and_refuses_a_second_init(root):
    d = Dataset.init(root, "densegen/my_dataset", source="densegen run 7")
    assert pq.read_schema(d.records_path).remove_metadata().equals(CORE_SCHEMA)
    assert "densegen run 7" in (d.path / "meta.md").read_text()
    [event] = d.events_tail(5)
    assert event["action"] == "init" and event["dataset"] == "densegen/my_dataset"
    Dataset.init(root, "flat")
    before = snapshot(root)
    with pytest.raises(InputError, match="already exists"):
        Dataset.init(root, "densegen/my_dataset")
    with pytest.raises(InputError, match="is a dataset"):
        Dataset.init(root, "flat/x")
    with pytest.raises(InputError, match="not an empty directory"):
        Dataset.init(root, "densegen")
    assert snapshot(root) == before
    assert list_datasets(root) == ["densegen/my_dataset", "flat"]


@pytest.mark.parametrize("bad", ["../x", "/abs", "a/b/c", "", "a/..", ".hidden"])
def test_bad_ids_are_refused_before_touching_disk(root, bad):
    with pytest.raises(InputError, match="bad dataset id"):
        Dataset.init(root, bad)
    assert list(root.iterdir()) == []


def test_open_unknown_and_symlinked_datasets(root, tmp_path):
    with pytest.raises(NotFoundError):
        Dataset.open(root, "nope")
    real = Dataset.init(tmp_path / "elsewhere", "real")
    (root / "linked").symlink_to(real.path)
    with pytest.raises(InputError, match="symlink"):
        Dataset.open(root, "linked")
    with pytest.raises(InputError, match="symlink"):
        Dataset.init(root, "linked/sub")
    inner = Dataset.init(root, "inner")
    (inner.path / ".events.log").unlink()
    (inner.path / ".events.log").symlink_to(tmp_path / "elsewhere.log")
    with pytest.raises(InputError, match="events.log is a symlink"):
        Dataset.open(root, "inner")
    assert not (tmp_path / "elsewhere.log").exists()


def test_append_applies_the_id_rule_and_defaults(ds):
    rows = ds.to_table(overlay=False).to_pylist()
    assert [r["sequence"] for r in rows] == ["ACGT", "GGCC", "MKV"]
    assert rows[1]["id"] == hashlib.sha1(b"dna|GGCC").hexdigest()
    assert rows[2]["id"] == record_id("protein", "MKV")
    assert [r["alphabet"] for r in rows] == ["dna_4", "dna_4", "protein_20"]
    assert [r["length"] for r in rows] == [4, 4, 3]
    assert {r["source"] for r in rows} == {"batch 1"}
    assert rows[0]["created_at"].tzinfo is not None


def test_duplicates_error_by_default_and_skip_on_request(ds):
    before = snapshot(ds.root)
    with pytest.raises(InputError, match="already in the dataset"):
        ds.append_records([{"sequence": "TTTT"}, {"sequence": "ACGT"}])
    with pytest.raises(InputError, match="repeat within the input"):
        ds.append_records([{"sequence": "TTTT"}, {"sequence": "TTTT"}])
    assert snapshot(ds.root) == before
    result = ds.append_records(
        [{"sequence": "TTTT"}, {"sequence": "ACGT"}, {"sequence": "CCCC"}, {"sequence": "TTTT"}],
        on_duplicate="skip",
    )
    assert (result.added, result.skipped, result.rows) == (2, 2, 5)
    assert ds.to_table(False).column("sequence").to_pylist()[-2:] == ["TTTT", "CCCC"]
    with pytest.raises(UsageError):
        ds.append_records([{"sequence": "A"}], on_duplicate="replace")


@pytest.mark.parametrize(
    ("rows", "kwargs", "message"),
    [
        ([{"seq": "ACGT"}], {}, "no 'sequence' column"),
        ([{"sequence": "ACGU"}], {}, "character 'U' outside alphabet dna_4"),
        ([{"sequence": "ACGN"}], {"alphabet": "dna_4"}, "'N' outside alphabet dna_4"),
        ([{"sequence": "ACGT"}], {"alphabet": "rna_4"}, "does not fit bio_type"),
        ([{"sequence": "ACGT"}], {"bio_type": "xna"}, "unknown bio_type"),
        ([{"sequence": "ACGT"}], {"alphabet": "dna_9"}, "unknown alphabet"),
        ([{"sequence": "   "}], {}, "sequence is empty"),
        ([{"sequence": None}], {}, "sequence is empty"),
    ],
)
def test_bad_records_change_nothing(ds, rows, kwargs, message):
    before = snapshot(ds.root)
    with pytest.raises(InputError, match=message):
        ds.append_records(rows, **kwargs)
    assert snapshot(ds.root) == before


def test_wider_alphabets_accept_their_characters(ds):
    ds.append_records([{"sequence": "acgn"}], alphabet="dna_5")
    ds.append_records([{"sequence": "ACGU"}], bio_type="rna")
    ds.append_records([{"sequence": "MKV*"}], bio_type="protein", alphabet="protein_21")
    assert ds.to_table(False).column("alphabet").to_pylist()[-3:] == [
        "dna_5",
        "rna_4",
        "protein_21",
    ]


def test_import_files_of_each_format(root, tmp_path):
    d = Dataset.init(root, "formats")
    (tmp_path / "a.csv").write_text("sequence,name\nACGT,x\n")
    (tmp_path / "b.tsv").write_text("sequence\tbio_type\nACGU\trna\n")
    pq.write_table(pa.table({"sequence": ["GGGG"]}), tmp_path / "c.parquet")
    (tmp_path / "d.jsonl").write_text(json.dumps({"sequence": "CCCC"}) + "\n")
    for name in ("a.csv", "b.tsv", "c.parquet", "d.jsonl"):
        assert d.import_file(tmp_path / name).added == 1
    assert d.to_table(False).column("sequence").to_pylist() == ["ACGT", "ACGU", "GGGG", "CCCC"]
    assert [e["args"]["format"] for e in d.events_tail(4)] == ["csv", "tsv", "parquet", "jsonl"]


def test_register_is_idempotent_and_refuses_changes(root):
    register_infer(root)
    first = (root / "registry.toml").read_bytes()
    register_infer(root)
    assert (root / "registry.toml").read_bytes() == first
    ns = reg.Registry.load(root).get("infer")
    assert ns.columns == (
        ("infer__ll", "float64"),
        ("infer__v", "list<float64>"),
        ("infer__label", "string"),
    )
    with pytest.raises(InputError, match="already registered"):
        reg.register(root, "infer", [("infer__ll", "int64")])
    with pytest.raises(InputError, match="reserved"):
        reg.register(root, "usr", [("usr__a", "int64")])
    with pytest.raises(InputError, match="bad namespace"):
        reg.register(root, "Bad-NS", [("x", "int64")])
    with pytest.raises(InputError, match="unknown column type"):
        reg.parse_columns("infer", "a:decimal")
    with pytest.raises(InputError, match="not in namespace"):
        reg.parse_columns("infer", "other__a:float64")
    with pytest.raises(NotFoundError, match="not registered"):
        reg.Registry.load(root).get("missing")
    assert (root / "registry.toml").read_bytes() == first


def test_events_redact_secrets_and_repair_a_torn_line(ds):
    ds.append_event(
        "custom",
        {"password": "hunter2", "nested": {"api_key": "k"}, "url": "ssh://u:pw@h/x", "key": "id"},
    )
    last = ds.events_tail(1)[0]
    assert last["args"]["password"] == REDACTED
    assert last["args"]["nested"]["api_key"] == REDACTED
    assert last["args"]["url"] == f"ssh://u:{REDACTED}@h/x"
    assert last["args"]["key"] == "id"
    assert "hunter2" not in (ds.path / ".events.log").read_text()
    for k in ("event_version", "timestamp_utc", "action", "dataset", "args", "actor"):
        assert k in last
    with (ds.path / ".events.log").open("ab") as fh:
        fh.write(b'{"torn": ')
    assert ds.events_tail(1)[0]["action"] == "custom"  # a torn last line is not an event
    ds.append_event("after-tear")
    lines = (ds.path / ".events.log").read_bytes().splitlines()
    assert json.loads(lines[-1])["action"] == "after-tear"


def _scores(ds: Dataset, path: Path, ll: list[float], key: str = "id") -> Path:
    table = ds.to_table(False)
    keys = table.column(key).to_pylist()[: len(ll)]
    lines = [f"{key},ll,v"] + [f'{k},{x},"[{x}, 1]"' for k, x in zip(keys, ll, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_attach_stamps_parts_and_the_newest_part_wins(ds, tmp_path):
    r1 = ds.attach(_scores(ds, tmp_path / "a.csv", [0.5, 1.5, 2.5]), namespace="infer")
    meta = pq.read_metadata(r1.part).metadata
    registry = reg.Registry.load(ds.root)
    assert meta[b"usr:namespace"] == b"infer"
    assert meta[b"usr:key"] == b"id"
    assert meta[b"usr:registry_hash"].decode() == registry.hash()
    assert meta[b"usr:contract_hash"].decode() == registry.get("infer").contract_hash()
    assert meta[b"usr:created_at"].endswith(b"Z")
    assert r1.part.parent == ds.path / "_derived" / "infer"
    with pytest.raises(InputError, match="overwrite 1 existing value"):
        ds.attach(_scores(ds, tmp_path / "b.csv", [9.0]), namespace="infer", columns=["ll"])
    ds.attach(tmp_path / "b.csv", namespace="infer", columns=["ll"], allow_overwrite=True)
    view = ds.head(3)
    assert view.column("infer__ll").to_pylist() == [9.0, 1.5, 2.5]
    assert view.column("infer__v").to_pylist()[0] == [0.5, 1.0]
    assert view.schema.field("infer__v").type == pa.list_(pa.float64())
    assert ds.head(1).num_rows == 1
    assert [c["name"] for c in ds.schema()][-2:] == ["infer__ll", "infer__v"]
    assert ds.info()["namespaces"]["infer"]["parts"] == 2


def test_attach_by_sequence_and_allow_missing(ds, tmp_path):
    csv = tmp_path / "s.csv"
    csv.write_text("seq,infer__label\nACGT,a\nGGCC,b\nTTTTTT,c\n")
    before = snapshot(ds.root)
    with pytest.raises(InputError, match="1 key\\(s\\) are not in the dataset"):
        ds.attach(csv, namespace="infer", key="sequence", key_col="seq")
    assert snapshot(ds.root) == before
    result = ds.attach(csv, namespace="infer", key="sequence", key_col="seq", allow_missing=True)
    assert (result.rows, result.missing) == (2, 1)
    assert ds.head(3).column("infer__label").to_pylist() == ["a", "b", None]


@pytest.mark.parametrize(
    ("content", "kwargs", "error", "message"),
    [
        ("id,ll\n{0},1\n", {"namespace": "nope"}, NotFoundError, "not registered"),
        ("id,ll\n{0},1\n", {"namespace": "usr"}, InputError, "reserved"),
        ("id,ll\n{0},abc\n", {"namespace": "infer"}, InputError, "does not fit"),
        ("id,ll\n{0},1\n{0},2\n", {"namespace": "infer"}, InputError, "repeat within the part"),
        ("id,zz\n{0},1\n", {"namespace": "infer", "columns": ["zz"]}, InputError, "not regist"),
        ("id,ll\n{0},1\n", {"namespace": "infer", "key_col": "k"}, InputError, "key column"),
        ("id,ll\n{0},1\n{0}", {"namespace": "infer"}, InputError, "cannot read"),
    ],
)
def test_bad_attach_inputs_change_nothing(ds, tmp_path, content, kwargs, error, message):
    first = ds.to_table(False).column("id")[0].as_py()
    path = tmp_path / "bad.csv"
    path.write_text(content.format(first))
    before = snapshot(ds.root)
    with pytest.raises(error, match=message):
        ds.attach(path, **kwargs)
    assert snapshot(ds.root) == before


def test_parquet_types_must_match_the_contract(ds, tmp_path):
    ids = ds.to_table(False).column("id").to_pylist()
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"id": ids, "ll": ["1.0"] * 3}), path)
    with pytest.raises(InputError, match="not its registered type float64"):
        ds.attach(path, namespace="infer", columns=["ll"])
    pq.write_table(pa.table({"id": ids, "ll": [1, 2, 3]}), path)
    ds.attach(path, namespace="infer", columns=["ll"])
    assert ds.head(3).column("infer__ll").to_pylist() == [1.0, 2.0, 3.0]
    # Dictionary-encoded (categorical) keys and values decode to their registered types.
    labels = pa.array(["x", "y", "x"]).dictionary_encode()
    pq.write_table(pa.table({"id": pa.array(ids).dictionary_encode(), "label": labels}), path)
    ds.attach(path, namespace="infer", columns=["label"])
    assert ds.head(3).column("infer__label").to_pylist() == ["x", "y", "x"]


def test_validate_flags_orphans_bad_ids_and_contract_drift(ds, tmp_path):
    ds.attach(_scores(ds, tmp_path / "a.csv", [0.5]), namespace="infer")
    assert ds.validate(strict=True)["ok"]
    text = (ds.root / "registry.toml").read_text().replace('"float64"', '"float32"')
    (ds.root / "registry.toml").write_text(text)
    report = ds.validate()
    assert any("not float32" in e for e in report["errors"])
    assert any("another contract" in w for w in report["warnings"])
    table = ds.to_table(False)
    bad = table.set_column(0, "id", pa.array(["0" * 40] + table.column("id").to_pylist()[1:]))
    pq.write_table(bad, ds.records_path)
    report = ds.validate()
    assert any("does not follow" in e for e in report["errors"])
    assert any("not in the dataset" in e for e in report["errors"])


def test_export_csv_and_parquet_carry_the_overlay_view(ds, tmp_path):
    ds.attach(_scores(ds, tmp_path / "a.csv", [0.5, 1.5]), namespace="infer")
    out = ds.export("parquet", tmp_path / "out")
    assert out.name == "densegen__demo.parquet"
    assert pq.read_table(out).column("infer__ll").to_pylist() == [0.5, 1.5, None]
    csv = ds.export("csv", tmp_path / "out")
    header, first = csv.read_text().splitlines()[:2]
    assert "infer__v" in header and "[0.5, 1.0]" in first
    with pytest.raises(UsageError, match="exists"):
        ds.export("csv", tmp_path / "out")


def test_events_tail_reads_the_end_of_a_long_log(ds):
    log = ds.path / ".events.log"
    lines = [json.dumps({"action": f"step {i}", "pad": "x" * 100}) + "\n" for i in range(3000)]
    log.write_text("".join(lines))
    assert [e["action"] for e in ds.events_tail(3)] == ["step 2997", "step 2998", "step 2999"]
    assert len(ds.events_tail(2500)) == 2500
    assert len(ds.events_tail(10_000)) == 3000
    log.write_text("".join(lines[:5]) + "not json\n" + "".join(lines[5:10]))
    with pytest.raises(VerifyError, match="line 6 is not JSON"):
        ds.info()
    report = ds.validate()
    assert not report["ok"] and any("line 6" in e for e in report["errors"])


def test_meta_is_replaced_whole_logged_and_recorded(ds):
    from usr.store import Store

    head = Store.open(ds.path).head()
    ds.append_event("note", {"n": 1})
    assert Store.open(ds.path).head() == head
    ds.append_event("note", {"n": 2}, record=True)
    assert Store.open(ds.path).head() != head
    head = Store.open(ds.path).head()
    ds.write_meta("# demo\n\nPromoter library, run 7")
    assert ds.read_meta() == "# demo\n\nPromoter library, run 7\n"
    assert ds.events_tail(1)[0]["action"] == "meta"
    assert Store.open(ds.path).head() != head


def test_validate_uses_the_frozen_contract_on_a_root_without_the_namespace(ds, tmp_path):
    ds.attach(_scores(ds, tmp_path / "a.csv", [0.5]), namespace="infer")
    (ds.root / "registry.toml").unlink()  # as on a laptop root that pulled the dataset
    assert ds.validate(strict=True)["ok"]
    (ds.path / "_registry" / "registry.toml").unlink()
    report = ds.validate(strict=True)
    assert not report["ok"] and "not registered" in report["errors"][0]
