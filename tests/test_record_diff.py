"""Record-level diffs: ``usr show --rows``, ``usr diff --rows`` and ``usr plumbing
diff-records`` on real Parquet files, through the real CLI, against a ``local`` remote and
the real sshd (the diff), with the refusals that must write nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from tests.conftest import run_usr
from tests.test_sync_scenarios import DS, files_of, head, make_env
from usr import mock, records
from usr.dataset import Dataset
from usr.store import Store


def _ok(result) -> None:
    assert result.returncode == 0, result.stderr


def _json(result) -> dict:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["data"]


@pytest.mark.parametrize("kind", ["local", pytest.param("ssh", marks=pytest.mark.ssh)])
def test_diff_rows_reports_remote_batch_and_local_annotations(kind, tmp_path, request):
    env = make_env(kind, tmp_path, request)
    cfg = ["--remotes-config", str(env.config)]
    remote = ["--root", str(env.remote_root)]
    local = ["--root", str(env.local_root)]
    _ok(run_usr(*remote, "dev", "mock-batch", DS, "--rows", "30"))
    _ok(run_usr(*local, "pull", DS, "bu-scc", "-y", *cfg))
    _ok(run_usr(*remote, "dev", "mock-batch", DS, "--rows", "25"))
    _ok(run_usr(*local, "dev", "mock-infer", DS))
    before_files, before_head = files_of(env.local_dir), head(env.local_dir)
    audit = tmp_path / "diff.json"
    args = ("diff", DS, "bu-scc", "--rows", "--max-ids", "5", "--format", "json", *cfg)
    result = run_usr(*local, *args, "--audit-json-out", str(audit))
    data = _json(result)
    assert json.loads(audit.read_text()) == json.loads(result.stdout)
    rec = data["records"]
    assert (rec["added"], rec["removed"], rec["changed"]) == (25, 0, 30)
    assert len(rec["ids"]) == 5 and rec["ids_truncated"] is True
    assert rec["ids"] == rec["samples"]["added"]
    assert rec["rows"] == {"before": 30, "after": 55}
    assert rec["overlays"]["infer"]["infer__ll"] == {"set": 0, "changed": 0, "cleared": 30}
    since = rec["since_merge_base"]
    assert since["local"]["overlays"]["infer"]["infer__gc"]["set"] == 30
    assert (since["local"]["added"], since["local"]["changed"]) == (0, 30)
    assert (since["remote"]["added"], since["remote"]["changed"]) == (25, 0)
    # A diff changes no working file and no branch; the remote records are cached objects.
    assert files_of(env.local_dir) == before_files and head(env.local_dir) == before_head
    remote_store = Store.open(env.remote_dir, create=False)
    blob = str(remote_store.repo[remote_store.tree_of("HEAD")]["records.parquet"].id)
    assert Store.open(env.local_dir, create=False).has_object(blob)
    # Without --rows the audit has no record diff; the text names the records.
    plain = _json(run_usr(*local, "diff", DS, "bu-scc", "--format", "json", *cfg))
    assert "records" not in plain
    text = run_usr(*local, "diff", DS, "bu-scc", "--rows", *cfg)
    _ok(text)
    assert "Records: +25 added, -0 removed, ~30 changed" in text.stdout
    # Each side's show --rows says what its last state added.
    shown = _json(run_usr(*remote, "show", DS, "--rows", "--format", "json"))["records"]
    assert (shown["added"], shown["changed"]) == (25, 0)
    shown = _json(run_usr(*local, "show", DS, "--rows", "--format", "json"))["records"]
    assert (shown["added"], shown["changed"]) == (0, 30)
    assert shown["overlays"]["infer"]["infer__ll"]["set"] == 30


def test_plumbing_streams_every_id_and_show_reads_text(root: Path):
    mock.mock_batch(root, "ds", rows=30)
    mock.mock_batch(root, "ds", rows=25)
    out = run_usr("--root", str(root), "plumbing", "diff-records", "ds", "HEAD~1", "HEAD", "-z")
    assert out.returncode == 0, out.stderr
    lines = [r for r in out.stdout.split("\0") if r]
    assert len(lines) == 25 and all(r.startswith("A\t") and len(r) == 42 for r in lines)
    back = run_usr("--root", str(root), "plumbing", "diff-records", "ds", "HEAD", "HEAD~1")
    assert back.stdout.count("D\t") == 25 and back.stdout.endswith("\n")
    data = _json(
        run_usr(
            "--root",
            str(root),
            "plumbing",
            "diff-records",
            "ds",
            "HEAD~1",
            "HEAD",
            "--format",
            "json",
            "--max-ids",
            "0",
        )
    )
    assert data["records"]["added"] == 25 and data["records"]["ids"] == []
    text = run_usr("--root", str(root), "show", "ds", "--rows", "--max-ids", "1")
    assert "Records: +25 added" in text.stdout and "(and 24 more)" in text.stdout


def _big(root: Path, rows: int) -> Dataset:
    ds = Dataset.init(root, "big", source="test")
    seqs = mock.mock_sequences(rows, seed=3, offset=0)
    ds.append_records([{"sequence": s} for s in seqs], bio_type="dna", alphabet="dna_4")
    return ds


def test_unchanged_row_groups_are_skipped_and_core_changes_found(root: Path):
    ds = _big(root, 2 * records.ROW_GROUP_ROWS + 500)
    more = mock.mock_sequences(100, seed=4, offset=10**6)
    ds.append_records([{"sequence": s} for s in more], bio_type="dna", alphabet="dna_4")
    cmd = ("--root", str(root), "plumbing", "diff-records", "big", "HEAD~1", "HEAD")
    rec = _json(run_usr(*cmd, "--format", "json"))["records"]
    assert (rec["added"], rec["removed"], rec["changed"]) == (100, 0, 0)
    assert rec["row_groups"] == {"before": 3, "after": 3, "skipped": 2}
    # Same ids, another source on three rows: changed, nothing added.
    table = records.read_records(ds.records_path)
    source = table.column("source").to_pylist()
    source[:3] = ["rewritten"] * 3
    table = table.set_column(table.schema.get_field_index("source"), "source", pa.array(source))
    records.write_records(ds.records_path, table.to_batches(), records.CORE_SCHEMA)
    Store.open(ds.path).record("snapshot")
    rec = _json(run_usr(*cmd, "--format", "json"))["records"]
    assert (rec["added"], rec["removed"], rec["changed"]) == (0, 0, 3)
    assert rec["samples"]["changed"] == table.column("id").to_pylist()[:3]
    assert rec["row_groups"]["skipped"] == 2  # only the first group's bytes changed


def test_overlay_values_changed_and_cleared(root: Path):
    mock.mock_batch(root, "ds", rows=10)
    mock.mock_infer(root, "ds")
    ds = Dataset.open(root, "ds")
    ids = ds.to_table().column("id").slice(0, 4)
    new = pa.table({"id": ids, "infer__ll": pa.array([1.0, 2.0, None, None], pa.float64())})
    ds.attach(new, namespace="infer", columns=["ll"], allow_overwrite=True)
    cmd = ("--root", str(root), "plumbing", "diff-records", "ds", "HEAD~1", "HEAD")
    rec = _json(run_usr(*cmd, "--format", "json"))["records"]
    assert rec["overlays"]["infer"]["infer__ll"] == {"set": 0, "changed": 2, "cleared": 2}
    assert rec["overlays"]["infer"]["infer__gc"] == {"set": 0, "changed": 0, "cleared": 0}
    assert rec["changed"] == 4 and sorted(rec["samples"]["changed"]) == sorted(ids.to_pylist())
    assert pc.all(pc.is_valid(ids)).as_py()


def test_bad_input_is_one_line_and_writes_nothing(root: Path, tmp_path: Path):
    mock.mock_batch(root, "ds", rows=5)
    ds_dir = root / "ds"
    base = ("--root", str(root))

    def refused(code: int, *args: str, start: str) -> None:
        out = run_usr(*base, *args)
        assert out.returncode == code, out.stderr
        assert out.stdout == ""
        assert out.stderr.startswith(f"usr: error: {start}") and out.stderr.count("\n") == 1

    refused(4, "plumbing", "diff-records", "ds", "HEAD", "nope", start="unknown revision")
    refused(4, "show", "ds", "nope", "--rows", start="unknown revision")
    # A root commit of another tree: a state of another dataset.
    tree = run_usr(*base, "plumbing", "write-tree", "ds").stdout.strip()
    other = run_usr(*base, "plumbing", "commit-tree", "ds", tree, "-m", "other").stdout.strip()
    refused(3, "plumbing", "diff-records", "ds", "HEAD", other, start="HEAD and ")
    # A state whose records.parquet is not the core schema.
    table = records.read_records(ds_dir / "records.parquet")
    pa_path = ds_dir / "records.parquet"
    import pyarrow.parquet as pq

    pq.write_table(table.append_column("extra", pa.array([1] * table.num_rows)), pa_path)
    tree = run_usr(*base, "plumbing", "write-tree", "ds").stdout.strip()
    head_id = Store.open(ds_dir, create=False).head()
    bad = run_usr(*base, "plumbing", "commit-tree", "ds", tree, "-p", head_id, "-m", "x")
    refused(
        3,
        "plumbing",
        "diff-records",
        "ds",
        "HEAD",
        bad.stdout.strip(),
        start="records.parquet of state ",
    )
    pa_path.unlink()
    tree = run_usr(*base, "plumbing", "write-tree", "ds").stdout.strip()
    gone = run_usr(*base, "plumbing", "commit-tree", "ds", tree, "-p", head_id, "-m", "x")
    refused(3, "plumbing", "diff-records", "ds", "HEAD", gone.stdout.strip(), start="state ")
    assert Store.open(ds_dir, create=False).head() == head_id
