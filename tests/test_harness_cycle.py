"""``scripts/run_usr_harness_cycle.sh`` end to end, in its quick mode.

Under pytest the harness skips its own pytest steps (the suite must not call itself), so
this runs every other step for real: CLI help, versions, a scratch local remote and its
doctor, the sync-audit drill, a mock batch cycle with pull/push, both adversarial checks,
fsck on both sides, the final diff and ruff. The commands are this interpreter rather than
``uv run`` so the test does not depend on uv being on PATH.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, usr_env

SCRIPT = REPO / "scripts" / "run_usr_harness_cycle.sh"
MY_FILES = "usr/mock.py usr/drills.py porcelain/demo.py scripts tests/test_harness_cycle.py"


def _run(tmp_path: Path, **extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    py = shlex.quote(sys.executable)
    report = tmp_path / "harness-report.json"
    env = usr_env(
        {
            "USR_HARNESS_REPORT_PATH": str(report),
            "USR_HARNESS_USR": f"{py} -m usr",
            "USR_HARNESS_PYTHON": py,
            "USR_HARNESS_PYTEST": f"{py} -m pytest",
            "USR_HARNESS_RUFF": f"{py} -m ruff",
            "USR_HARNESS_RUFF_PATHS": MY_FILES,
            "USR_HARNESS_BATCH_CYCLES": "1",
            "USR_HARNESS_BATCH_ROWS": "20",
            "TMPDIR": str(tmp_path),
            **extra,
        }
    )
    proc = subprocess.run(
        ["bash", str(SCRIPT)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600
    )
    return proc, json.loads(report.read_text())


def test_quick_cycle_with_drill_passes_and_reports_every_step(tmp_path: Path) -> None:
    drill_report = tmp_path / "drill.json"
    proc, report = _run(
        tmp_path,
        USR_HARNESS_RUN_SYNC_AUDIT_DRILL="1",
        USR_HARNESS_SYNC_AUDIT_REPORT_PATH=str(drill_report),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert report["status"] == "passed" and report["exit_code"] == 0
    assert report["failed_step"] is None
    assert report["started_at"] <= report["finished_at"]
    names = [s["name"] for s in report["steps"]]
    assert names == [
        "preflight:cli-help",
        "preflight:environment",
        "preflight:local-remote",
        "preflight:remote-doctor",
        "preflight:focused-sync-tests",
        "run:sync-audit-drill",
        "run:cycle-1:mock-batch",
        "run:cycle-1:pull",
        "run:cycle-1:mock-infer",
        "run:cycle-1:push",
        "run:adversarial-schema-overlay",
        "run:adversarial-tampered-sidecar",
        "run:restore-after-tamper",
        "run:full-test-suite",
        "verify:fsck-local",
        "verify:fsck-remote",
        "verify:diff-up-to-date",
        "verify:ruff-check",
        "verify:ruff-format",
        "verify:docs-runbooks",
    ]
    skipped = {s["name"] for s in report["steps"] if s["status"] == "skipped"}
    assert skipped == {
        "preflight:focused-sync-tests",
        "run:full-test-suite",
        "verify:docs-runbooks",
    }
    for s in report["steps"]:
        assert set(s) >= {"name", "status", "exit_code", "seconds", "command"}
        if s["status"] == "passed":
            assert s["exit_code"] == 0 and s["seconds"] >= 0 and s["command"]
    assert json.loads(drill_report.read_text())["ok"] is True
    assert "harness: passed" in proc.stdout
    # The temp work dir is removed on success; only the reports remain.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["drill.json", "harness-report.json"]


def test_stops_at_the_first_failing_step(tmp_path: Path) -> None:
    proc, report = _run(tmp_path, USR_HARNESS_FOCUSED_TESTS="tests/no_such_test_file.py")
    assert proc.returncode == 4  # pytest's "file not found"
    assert report["status"] == "failed" and report["exit_code"] == 4
    assert report["failed_step"] == "preflight:focused-sync-tests"
    assert [s["status"] for s in report["steps"]] == ["passed"] * 4 + ["failed"]
    assert report["steps"][-1]["exit_code"] == 4
    assert "no_such_test_file.py" in report["steps"][-1]["command"]
    assert Path(report["work_dir"]).is_dir()  # kept for inspection
    assert "FAILED at preflight:focused-sync-tests" in proc.stderr
