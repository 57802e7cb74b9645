"""Plumbing output is a contract: exact columns, -z, --format json, one meaning per exit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_history_cli import run_inproc
from usr.store import Store

ZERO = "0" * 40


@pytest.fixture
def dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[str]]:
    monkeypatch.setenv("USR_INLINE_LIMIT", "4096")
    ds = tmp_path / "root" / "ds"
    ds.mkdir(parents=True)
    (ds / "records.parquet").write_bytes(bytes(range(256)) * 100)
    (ds / "meta.md").write_bytes(b"m\n")
    store = Store.open(ds)
    ids = [store.record("import").commit]
    (ds / "meta.md").write_bytes(b"m2\n")
    (ds / "_derived/ns").mkdir(parents=True)
    (ds / "_derived/ns/a b.parquet").write_bytes(b"tab\there")
    (ds / "records.parquet").unlink()
    ids.append(store.record("snapshot").commit)
    return ds, ids


def test_diff_tree_by_id_and_from_inside(dataset, capsys, monkeypatch) -> None:
    ds, (a, b) = dataset
    store = Store.open(ds)
    root = str(ds.parent)
    out = run_inproc(capsys, "--root", root, "plumbing", "diff-tree", "ds", a, b)
    assert out.returncode == 0, out.stderr
    rows = [line.split("\t") for line in out.stdout.splitlines()]
    rec = {p: o for p, o, _ in store.ls_tree(a)}
    new = {p: o for p, o, _ in store.ls_tree(b)}
    assert rows == [
        ["A", "derived", "-", new["_derived/ns/a b.parquet"], "-", "8", "_derived/ns/a b.parquet"],
        ["M", "meta", rec["meta.md"], new["meta.md"], "2", "3", "meta.md"],
        ["D", "primary", rec["records.parquet"], "-", "25600", "-", "records.parquet"],
    ]
    monkeypatch.chdir(ds / "_derived")
    inside = run_inproc(capsys, "plumbing", "diff-tree", "HEAD~1", "HEAD")
    assert inside.stdout == out.stdout
    z = run_inproc(capsys, "plumbing", "diff-tree", "-z", "HEAD~1", "HEAD")
    assert z.stdout.split("\0")[:-1] == out.stdout.splitlines()
    doc = json.loads(run_inproc(capsys, "plumbing", "diff-tree", a, b, "--format", "json").stdout)
    assert doc["usr_output_version"] == 1
    assert [c["status"] for c in doc["data"]["changes"]] == ["A", "M", "D"]
    assert doc["data"]["changes"][2]["old_size"] == 25600


def test_ls_tree_rev_parse_rev_list_cat_file(dataset, capsys, monkeypatch) -> None:
    ds, (a, b) = dataset
    monkeypatch.chdir(ds)
    store = Store.open(ds)
    top = run_inproc(capsys, "plumbing", "ls-tree", a).stdout.splitlines()
    rec = dict((p, o) for p, o, _ in store.ls_tree(a))
    assert top == [
        f"100644 blob {rec['meta.md']} 2\tmeta.md",
        f"100644 blob {rec['records.parquet']} 25600\trecords.parquet",
    ]
    deep = run_inproc(capsys, "plumbing", "ls-tree", "-r", "-z").stdout.split("\0")[:-1]
    assert [r.split("\t")[1] for r in deep] == ["_derived/ns/a b.parquet", "meta.md"]
    assert (
        run_inproc(capsys, "plumbing", "ls-tree").stdout.splitlines()[0].startswith("040000 tree")
    )
    doc = json.loads(run_inproc(capsys, "plumbing", "ls-tree", "-r", "--format", "json").stdout)
    assert [e["path"] for e in doc["data"]["entries"]] == ["_derived/ns/a b.parquet", "meta.md"]

    rp = run_inproc(capsys, "plumbing", "rev-parse", "HEAD", "HEAD~1", "main", a[:8])
    assert rp.stdout.split() == [b, a, b, a]
    assert run_inproc(capsys, "plumbing", "rev-parse", "nope").returncode == 4
    assert run_inproc(capsys, "plumbing", "rev-list", "HEAD").stdout.split() == [b, a]
    assert run_inproc(capsys, "plumbing", "rev-list", "HEAD", f"^{a}").stdout.split() == [b]
    objs = run_inproc(capsys, "plumbing", "rev-list", "--objects", "HEAD", "^HEAD~1").stdout
    assert objs.split()[-1] == b and a not in objs

    assert run_inproc(capsys, "plumbing", "cat-file", "-t", "HEAD").stdout == "commit\n"
    manifest_id = rec["records.parquet"]
    assert run_inproc(capsys, "plumbing", "cat-file", "-t", manifest_id).stdout == "blob\n"
    assert (
        run_inproc(capsys, "plumbing", "cat-file", "--file-size", manifest_id).stdout == "25600\n"
    )
    printed = run_inproc(capsys, "plumbing", "cat-file", "-p", manifest_id).stdout
    assert printed.startswith("\x00usr-manifest v1\nsize 25600\n")
    assert run_inproc(capsys, "plumbing", "cat-file", "-p", rec["meta.md"]).stdout == "m\n"
    hashed = run_inproc(capsys, "plumbing", "hash-object", "meta.md").stdout.strip()
    assert hashed == dict((p, o) for p, o, _ in store.ls_tree(b))["meta.md"]


def test_write_tree_commit_tree_update_ref(dataset, capsys, monkeypatch) -> None:
    ds, (a, b) = dataset
    root = str(ds.parent)

    def plumb(*args: str):
        return run_inproc(capsys, "--root", root, "plumbing", *args)

    (ds / "meta.md").write_bytes(b"m3\n")
    tree = plumb("write-tree", "ds").stdout.strip()
    commit = plumb("commit-tree", "ds", tree, "-p", "HEAD", "-m", "scripted").stdout.strip()
    assert Store.open(ds).head() == b, "write-tree and commit-tree move no ref"
    stale = plumb("update-ref", "ds", "refs/heads/main", commit, a)
    assert stale.returncode == 8 and "moved" in stale.stderr
    assert plumb("update-ref", "ds", "refs/heads/main", commit, b).returncode == 0
    store = Store.open(ds)
    assert store.head() == commit and store.log_entry(commit).action == "scripted"
    assert plumb("update-ref", "ds", "refs/remotes/hpc/main", a, ZERO).returncode == 0
    assert plumb("update-ref", "ds", "refs/remotes/hpc/main", ZERO, a).returncode == 0
    assert store.head("refs/remotes/hpc/main") is None
    bad = plumb("update-ref", "ds", "refs/heads/../x", a, ZERO)
    assert bad.returncode == 3


def test_qualified_id_alone_names_the_dataset(tmp_path: Path, capsys, monkeypatch) -> None:
    root = tmp_path / "root"
    ds = root / "ns" / "ds"
    ds.mkdir(parents=True)
    (ds / "meta.md").write_bytes(b"m\n")
    Store.open(ds).record("import")
    monkeypatch.chdir(tmp_path)
    out = run_inproc(capsys, "--root", str(root), "plumbing", "ls-tree", "ns/ds")
    assert out.returncode == 0, out.stderr
    assert out.stdout.endswith("\tmeta.md\n")
    outside = run_inproc(capsys, "plumbing", "diff-tree", "HEAD", "HEAD")
    assert outside.returncode == 4 and "not inside a dataset" in outside.stderr


def test_cat_file_takes_rev_colon_path(dataset, capsys) -> None:
    """``REV:PATH`` names the entry at PATH in a state (``REV:`` its tree), as in git."""
    ds, (a, b) = dataset
    root = str(ds.parent)

    def cat(*args: str):
        return run_inproc(capsys, "--root", root, "plumbing", "cat-file", "ds", *args)

    assert cat("-p", "HEAD:meta.md").stdout == "m2\n"
    assert cat("-p", f"{a}:meta.md").stdout == "m\n"
    assert cat("-p", "HEAD~1:meta.md").stdout == "m\n"
    assert cat("-t", "HEAD:").stdout == "tree\n"
    assert cat("-t", "HEAD:_derived/ns").stdout == "tree\n"
    assert cat("--file-size", "HEAD~1:records.parquet").stdout == "25600\n"
    missing = cat("-p", "HEAD:records.parquet")  # removed in the second state
    assert missing.returncode == 4
    assert "'records.parquet' is not in state HEAD" in missing.stderr
