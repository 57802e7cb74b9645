"""The benchmark runner (benchmarks/run.py) works end to end on tiny sizes.

Only that it runs and reports: no timing is asserted (timings belong in
docs/performance.md, measured on a known machine, not in CI on a shared one).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import usr_env

pytestmark = pytest.mark.ssh

REPO = Path(__file__).resolve().parents[1]


def test_benchmark_runner_smoke(sshd, tmp_path: Path) -> None:
    # ``sshd`` only makes this skip (or fail under USR_REQUIRE_SSHD) exactly like the other
    # SSH tests when OpenSSH is missing; the runner starts its own loopback server.
    del sshd
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "run.py"),
            "--smoke",
            "--only",
            "primary_dataset",
            "--only",
            "storage",
            "--only",
            "small_files",
            "--only",
            "scale",
            "--out",
            str(out),
            "--workdir",
            str(tmp_path / "work"),
        ],
        capture_output=True,
        text=True,
        env=usr_env({"USR_BENCH_WITHOUT": "rsync,git"}),
        timeout=280,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert doc["mode"] == "smoke" and not doc["errors"]
    push = doc["results"]["initial_push"]["usr"]
    assert push["transfer_state"] == "TRANSFERRED"
    assert push["protocol_bytes"] > doc["results"]["dataset"]["records_bytes"]
    assert push["server_rss_mib"] > 0  # the remote side was measured through the probe
    assert doc["results"]["storage"]["states_after_appends"] == 3
    assert "| Figure | Target |" in proc.stdout
    assert doc["results"]["small_files"]["ssh_untar_seconds"] > 0
    assert "tar piped to ssh tar -x" in proc.stdout
    # A baseline program missing here is reported as missing, never a failure of the run
    # (a fresh machine may have no rsync or git); USR_BENCH_WITHOUT stands in for that.
    assert doc["missing"] == ["git", "rsync"]
    assert doc["results"]["initial_push"]["rsync_seconds"] is None
    assert doc["results"]["initial_push"]["time_vs_rsync"] is None
    assert "Missing on this machine: git, rsync" in proc.stdout
    # Issue 23's scale table, at the smoke's file count (run.py --scale runs 10k to 1M).
    (scale,) = doc["results"]["scale"]
    assert scale["files"] == doc["sizes"]["scale_files"][0] > 0
    for command in ("snapshot", "status_noop", "status_touched", "push", "push_noop", "pull"):
        assert scale["usr"][command]["client_rss_mib"] > 0, command
    for command in ("push", "push_noop", "pull"):
        assert scale["usr"][command]["server_rss_mib"] > 0, command
    assert scale["usr"]["push"]["transfer_state"] == "TRANSFERRED"
    assert scale["status_noop_clean"] and scale["status_touched_saw_changes"]
    assert scale["index_files"] and scale["index_bytes_per_file"] > 0
    for baseline in ("rsync_seconds", "rsync_noop_seconds", "git_add_commit_seconds"):
        assert scale[baseline] is None, baseline  # missing here: null, not a failure
    assert scale["git_status_seconds"] is None and scale["push_vs_rsync"] is None
    rows = [row for row in doc["targets"] if row["figure"].startswith(f"{scale['files']:,} files")]
    assert len(rows) == 8 and all("met" in row for row in rows)
    assert "| files | snapshot |" in proc.stdout
