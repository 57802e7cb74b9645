"""The history porcelain as a user runs it: snapshot, status, log, show, checkout, gc, fsck."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from porcelain.cli import main
from tests.conftest import Result, run_usr


def run_inproc(capsys: pytest.CaptureFixture[str], *args: str) -> Result:
    """Run the real CLI entry point in this process (fast; same code path as the console
    script, including the one place errors become exit codes)."""
    capsys.readouterr()
    code = 0
    try:
        main(list(args))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out = capsys.readouterr()
    return Result(code, out.out, out.err)


def _records(path: Path, n: int) -> None:
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(n)]}), path)


def _json(result) -> dict:
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["usr_output_version"] == 1
    return doc["data"]


def test_history_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "root"
    ds = root / "ns" / "ds"
    ds.mkdir(parents=True)
    _records(ds / "records.parquet", 100)
    (ds / "meta.md").write_text("# ds\n")

    def usr(*args: str) -> Result:
        return run_inproc(capsys, "--root", str(root), *args)

    first = usr("snapshot", "ns/ds", "-m", "first import")
    assert first.returncode == 0 and first.stdout.startswith("recorded "), first.stderr
    assert "nothing to record" in usr("snapshot", "ns/ds").stdout
    assert "clean" in usr("status", "ns/ds").stdout

    _records(ds / "records.parquet", 130)
    (ds / "_derived" / "ns").mkdir(parents=True)
    (ds / "_derived/ns/part-0.parquet").write_bytes(b"d")
    status = usr("status", "ns/ds")
    assert "primary:" in status.stdout and "derived:" in status.stdout
    assert "unchanged: meta, events, snapshots, auxiliary" in status.stdout
    doc = _json(usr("status", "ns/ds", "--format", "json"))
    assert not doc["clean"] and doc["sections"]["primary"]["changed"]
    assert {c["path"]: c["status"] for c in doc["changes"]} == {
        "_derived/ns/part-0.parquet": "A",
        "records.parquet": "M",
    }
    # A dataset directory path works as well as an id.
    assert usr("snapshot", str(ds)).returncode == 0

    log = _json(usr("log", "ns/ds", "--stat", "--format", "json"))
    states = log["states"]
    assert [s["action"] for s in states] == ["snapshot", "snapshot"]
    assert states[1]["message"] == "first import"
    assert states[0]["records"] == {"rows_before": 100, "rows_after": 130, "rows_delta": 30}
    assert states[0]["sections"]["derived"]["added"] == 1
    text = usr("log", "ns/ds", "--stat").stdout
    assert "records.parquet rows: 100 -> 130 (+30)" in text
    oneline = usr("log", "ns/ds", "--oneline", "-n", "1").stdout.splitlines()
    assert len(oneline) == 1 and oneline[0].startswith(states[0]["id"][:12])

    show = usr("show", "ns/ds", "HEAD~1")
    assert states[1]["id"] in show.stdout and "added     records.parquet" in show.stdout

    (ds / "meta.md").write_text("unrecorded\n")
    refused = usr("checkout", "ns/ds", "HEAD~1")
    assert refused.returncode == 8 and "unrecorded changes" in refused.stderr
    forced = usr("checkout", "ns/ds", states[1]["id"][:10], "--force")
    assert forced.returncode == 0, forced.stderr
    assert (ds / "meta.md").read_text() == "# ds\n"
    assert not (ds / "_derived/ns/part-0.parquet").exists()
    assert pq.ParquetFile(ds / "records.parquet").metadata.num_rows == 100

    assert _json(usr("fsck", "ns/ds", "--format", "json"))["ok"] is True
    gc = _json(usr("gc", "ns/ds", "--prune-age", "0", "--format", "json"))
    assert "refs/heads/main" in gc["kept_refs"]
    assert usr("fsck", "ns/ds").returncode == 0

    missing = usr("status", "nope")
    assert missing.returncode == 4 and missing.stderr.startswith("usr: error:")
    bad = usr("show", "ns/ds", "deadbeef")
    assert bad.returncode == 4


def test_symlink_refused_cleanly_in_a_real_process(tmp_path: Path) -> None:
    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "meta.md").write_text("m")
    (ds / "link").symlink_to("/etc/hostname")
    result = run_usr("snapshot", str(ds))
    assert result.returncode == 3
    assert "link" in result.stderr and "symlink" in result.stderr
    assert "Traceback" not in result.stderr
