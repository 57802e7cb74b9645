"""The sync audit drill through both entry points: ``scripts/run_usr_sync_audit_drill.py``
and ``usr drill sync-audit``, as real subprocesses over a real ``local`` remote."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import REPO, usr_env
from usr import drills
from usr.events import append_event

SCRIPT = REPO / "scripts" / "run_usr_sync_audit_drill.py"
STEPS = [
    "setup",
    "perturb_remote",
    "diff_before_pull",
    "pull",
    "perturb_local",
    "diff_before_push",
    "push",
    "diff_after_push",
    "verify_sidecars",
]


def _stable(report: dict[str, Any]) -> str:
    """The report without what derives from the clock: times, commit ids, part names."""
    report = dict(report)
    for key in ("started_at", "finished_at", "audits"):
        report.pop(key)
    text = json.dumps(report, sort_keys=True)
    text = re.sub(r"part-\d{8}T\d{6}\d*Z-[0-9a-f]{8}", "part-X", text)
    return re.sub(r"[0-9a-f]{40}", "ID", text)


def test_script_and_cli_write_the_same_passing_report(usr, tmp_path: Path) -> None:
    work = tmp_path / "drill"
    report_path = tmp_path / "reports" / "drill.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--report-json", str(report_path), "--work-dir", str(work)],
        capture_output=True,
        text=True,
        env=usr_env(),
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "drill ok" in proc.stdout
    raw = report_path.read_text()
    assert raw.startswith('{\n  "')  # indented
    first = json.loads(raw)
    assert list(first) == sorted(first)  # sorted keys
    assert first["ok"] is True and first["final_up_to_date"] is True
    assert [s["name"] for s in first["steps"]] == STEPS
    assert all(s["ok"] and s["expectation"] and "observed" in s for s in first["steps"])
    assert first["dataset_id"] == drills.DATASET_ID
    assert first["local_root"] == str(work / "local")
    assert first["remote_root"] == str(work / "remote")
    assert Path(first["audit_dir"]).is_dir()
    audits = first["audits"]
    assert sorted(audits) == sorted(
        ["diff_before_pull", "pull", "diff_before_push", "push", "diff_after_push"]
    )
    for name, doc in audits.items():
        assert doc["usr_output_version"] == 1 and "changes" in doc, name
        on_disk = json.loads((Path(first["audit_dir"]) / f"{name}.json").read_text())
        assert on_disk == doc
    pull, push = audits["pull"]["data"], audits["push"]["data"]
    assert pull["transfer_state"] == push["transfer_state"] == "TRANSFERRED"
    assert any(p.startswith("_derived/densegen/") for p in pull["_derived"]["remote_only"])
    assert {"_artifacts/batch-report.json", "_registry/registry.toml"} <= set(
        pull["_auxiliary"]["remote_only"]
    )
    assert any(p.startswith("_derived/infer/") for p in push["_derived"]["local_only"])
    assert "_artifacts/notebook-summary.json" in push["_auxiliary"]["local_only"]
    assert audits["diff_after_push"]["data"]["status"] == "up-to-date"
    # Both sides kept for inspection, byte-identical.
    for rel in ("_artifacts/batch-report.json", "_artifacts/notebook-summary.json"):
        local = (work / "local" / drills.DATASET_ID / rel).read_bytes()
        assert local == (work / "remote" / drills.DATASET_ID / rel).read_bytes()

    # Again through the CLI, reusing the same work dir: same report apart from timestamps.
    second_path = tmp_path / "drill2.json"
    r = usr("drill", "sync-audit", "--report-json", str(second_path), "--work-dir", str(work))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("pass  ") == len(STEPS)
    assert _stable(json.loads(second_path.read_text())) == _stable(first)


def test_work_dir_that_is_not_a_drill_dir_is_refused(usr, tmp_path: Path) -> None:
    work = tmp_path / "data"
    work.mkdir()
    (work / "keep.parquet").write_bytes(b"x")
    r = usr(
        "drill", "sync-audit", "--report-json", str(tmp_path / "r.json"), "--work-dir", str(work)
    )
    assert r.returncode == 2
    assert "not made by usr drill sync-audit" in r.stderr
    assert (work / "keep.parquet").read_bytes() == b"x"
    assert not (tmp_path / "r.json").exists()


def test_a_late_writer_on_the_cluster_fails_the_drill_at_that_step(tmp_path: Path) -> None:
    """A real concurrent writer (an event appended on the cluster right after the pull)
    makes the laptop's next diff see remote changes: the drill reports the step it failed
    at, stops there, and the report says not ok."""
    seen: list[str] = []

    def late_writer(step: drills.Step) -> None:
        seen.append(step.name)
        if step.name == "pull":
            remote = tmp_path / "work" / "remote" / drills.DATASET_ID
            append_event(remote, "late batch", drills.DATASET_ID, {"rows": 0})

    report = drills.run_sync_audit_drill(tmp_path / "work", on_step=late_writer)
    assert report["ok"] is False
    failed = [s for s in report["steps"] if not s["ok"]]
    assert [s["name"] for s in failed] == ["diff_before_push"]
    assert seen[-1] == "diff_before_push"  # nothing ran after the failing step
    assert report["final_up_to_date"] is False
    assert report["audits"]["push"] is None
    observed = failed[0]["observed"]
    assert observed["relation"] == "diverged"
    path = drills.write_report(report, tmp_path / "failed.json")
    assert json.loads(path.read_text())["ok"] is False
