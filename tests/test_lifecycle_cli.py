"""The lifecycle CLI contract, through the real ``usr`` process: output, exit codes, and
files left byte-identical when a command refuses bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from usr import registry as reg
from usr.dataset import Dataset
from usr.layout import is_runtime_path
from usr.store import Store

DS = "densegen/my_dataset"


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not is_runtime_path(p.relative_to(root).as_posix())
    }


def one_line_error(r, code: int, text: str) -> None:
    assert r.returncode == code, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("usr: error: "), r.stderr
    assert text in lines[0], lines[0]


def data(r) -> object:
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["usr_output_version"] == 1
    return doc["data"]


def test_operator_walk_register_init_import_attach_head(usr, root, tmp_path):
    R = ("--root", str(root))
    r = usr(*R, "namespace", "register", "infer", "--columns", "infer__ll:float64,v:list<float64>")
    assert r.returncode == 0 and "registered" in r.stdout
    assert usr(*R, "init", DS, "--source", "densegen run 7").returncode == 0
    (tmp_path / "in.csv").write_text("sequence,note\nACGT,a\nGGCC,b\nTTAA,c\n")
    r = usr(*R, "import", DS, "--from", "csv", "--path", str(tmp_path / "in.csv"), "--bio-type",
            "dna", "--alphabet", "dna_4", "--source", "batch", "--format", "json")  # fmt: skip
    assert data(r) == {"dataset": DS, "added": 3, "skipped": 0, "rows": 3}
    (tmp_path / "s.csv").write_text('seq,ll,v\nACGT,0.5,"[1, 2]"\nTTAA,2.5,\n')
    r = usr(*R, "attach", DS, "--path", str(tmp_path / "s.csv"), "--namespace", "infer",
            "--key", "sequence", "--key-col", "seq", "--columns", "ll,v")  # fmt: skip
    assert r.returncode == 0 and "for 2 record(s)" in r.stdout, r.stderr

    view = data(usr(*R, "head", DS, "-n", "5", "--format", "json"))
    assert view["columns"][-2:] == ["infer__ll", "infer__v"]
    assert [row["infer__ll"] for row in view["rows"]] == [0.5, None, 2.5]
    assert view["rows"][0]["infer__v"] == [1.0, 2.0]
    text = usr(*R, "head", DS, "-n", "2")
    assert text.returncode == 0 and "infer__ll" in text.stdout and "GGCC" in text.stdout

    evs = data(usr(*R, "events", "tail", DS, "--n", "5", "--format", "json"))
    assert [e["action"] for e in evs] == ["init", "import", "attach infer"]
    info = data(usr(*R, "info", DS, "--format", "json"))
    assert info["rows"] == 3 and info["namespaces"]["infer"]["parts"] == 1
    assert info["head"] == Store.open(root / DS, create=False).head()
    assert len(list(Store.open(root / DS).log(info["head"]))) == 3

    schema = data(usr(*R, "schema", DS, "--format", "json"))
    assert {"name": "infer__v", "type": "list<float64>", "origin": "infer"} in schema
    r = usr(*R, "validate", DS, "--strict")
    assert r.returncode == 0 and f"{DS}: ok" in r.stdout
    assert data(usr(*R, "ls", "--format", "json")) == [DS]
    ns = data(usr(*R, "namespace", "show", "infer", "--format", "json"))
    assert ns["columns"][1] == {"name": "infer__v", "type": "list<float64>"}

    out = tmp_path / "out"
    r = usr(*R, "export", DS, "--fmt", "parquet", "--out", str(out))
    assert r.returncode == 0
    exported = pq.read_table(out / "densegen__my_dataset.parquet")
    assert exported.column("infer__ll").to_pylist() == [0.5, None, 2.5]
    one_line_error(usr(*R, "export", DS, "--fmt", "parquet", "--out", str(out)), 2, "-y")


@pytest.fixture
def prepared(root: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    """A dataset with three records and a registered ``infer`` namespace."""
    ds = Dataset.init(root, DS)
    ds.append_records([{"sequence": s} for s in ("ACGT", "GGCC", "TTAA")])
    reg.register(root, "infer", [("infer__ll", "float64")])
    return root, ds.to_table(False).column("id").to_pylist()


def _truncated_parquet(path: Path) -> None:
    pq.write_table(pa.table({"sequence": ["ACGT"] * 100}), path)
    path.write_bytes(path.read_bytes()[:-30])


BAD_INPUTS = {
    # name: (file name, content or writer, command after --root, exit code, message)
    "truncated parquet": (
        "t.parquet", _truncated_parquet, ["import", DS, "--from", "parquet"], 3, "cannot read"
    ),
    "ragged csv": ("r.csv", "sequence,x\nACGT,1\nGGGG\n", ["import", DS], 3, "cannot read"),
    "no sequence column": ("n.csv", "seq\nACGT\n", ["import", DS], 3, "no 'sequence' column"),
    "outside alphabet": ("a.csv", "sequence\nACGX\n", ["import", DS], 3, "'X' outside alphabet"),
    "duplicate ids": ("d.csv", "sequence\nACGT\n", ["import", DS], 3, "already in the dataset"),
    "unregistered namespace": (
        "u.csv", "id,ll\n{0},1\n", ["attach", DS, "--namespace", "nope"], 4, "not registered"
    ),
    "reserved namespace": (
        "u.csv", "id,ll\n{0},1\n", ["attach", DS, "--namespace", "usr"], 3, "reserved"
    ),
    "type mismatch": (
        "m.csv", "id,ll\n{0},high\n", ["attach", DS, "--namespace", "infer"], 3, "does not fit"
    ),
    "duplicate join keys": (
        "k.csv", "id,ll\n{0},1\n{0},2\n", ["attach", DS, "--namespace", "infer"], 3, "repeat"
    ),
    "absent keys": (
        "x.csv", "id,ll\n{0},1\nfeedface,2\n", ["attach", DS, "--namespace", "infer"], 3,
        "not in the dataset",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_and_changes_nothing(usr, prepared, tmp_path, case):
    root, ids = prepared
    name, content, args, code, message = BAD_INPUTS[case]
    path = tmp_path / name
    if callable(content):
        content(path)
    else:
        path.write_text(content.format(ids[0]))
    before, head = snapshot(root), Store.open(root / DS).head()
    r = usr("--root", str(root), *args, "--path", str(path))
    one_line_error(r, code, message)
    assert "Traceback" not in r.stderr
    assert snapshot(root) == before
    assert Store.open(root / DS).head() == head


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["init", "../x"], 3, "bad dataset id"),
        (["init", "/abs"], 3, "bad dataset id"),
        (["init", "a/b/c"], 3, "more than two parts"),
        (["init", ""], 3, "bad dataset id"),
        (["head", "linked"], 3, "symlink"),
        (["info", "missing"], 4, "not found"),
        (["namespace", "register", "usr", "--columns", "a:int64"], 3, "reserved"),
        (["namespace", "register", "ok", "--columns", "a:decimal"], 3, "unknown column type"),
        (["attach", DS, "--path", "x.csv", "--namespace", "infer", "--key", "name"], 2, "key"),
    ],
)
def test_bad_ids_names_and_flags(usr, prepared, tmp_path, args, code, message):
    root, _ = prepared
    (root / "linked").symlink_to(root / DS, target_is_directory=True)
    before = snapshot(root)
    one_line_error(usr("--root", str(root), *args), code, message)
    assert snapshot(root) == before
