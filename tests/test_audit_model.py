"""The audit model: shape of the JSON the runbooks query, and its text rendering.

Pure: built from hand-made FileChange lists, exactly what Store.diff returns.
"""

from __future__ import annotations

import json

from usr.layout import section_of
from usr.store import FileChange
from usr.sync.audit import AuditRun, Comparison, Side, VerifyProfile, build, render_text


def fc(path: str, status: str, old: str | None, new: str | None, size: int = 10) -> FileChange:
    return FileChange(
        path,
        status,
        section_of(path),
        old,
        new,
        size if old else None,
        size if new else None,
    )


def listing(entries: dict[str, str]) -> list[FileChange]:
    return [fc(p, "A", None, i) for p, i in sorted(entries.items())]


BASE = {"records.parquet": "r0", "meta.md": "m0", ".events.log": "e0", "_derived/a/x": "d0"}


def comparison() -> Comparison:
    local = dict(BASE, **{"_auxiliary/n.txt": "n1", "_derived/a/x": "d0"})
    remote = dict(BASE, **{"records.parquet": "r1", "_derived/a/x": "d1", "_registry/r": "g"})
    changes = [
        fc("_auxiliary/n.txt", "D", "n1", None),
        fc("_derived/a/x", "M", "d0", "d1"),
        fc("_registry/r", "A", None, "g"),
        fc("records.parquet", "M", "r0", "r1"),
    ]
    return Comparison(
        dataset="densegen/my_dataset",
        remote="bu-scc",
        local=Side(exists=True, head="L" * 40, states=3, events_lines=4, files=listing(local)),
        remote_side=Side(
            exists=True, head="R" * 40, states=5, events_lines=6, files=listing(remote)
        ),
        relation="diverged",
        merge_base="B" * 40,
        changes=changes,
        local_changed={"_auxiliary/n.txt"},
        remote_changed={"_derived/a/x", "_registry/r", "records.parquet"},
        newer_than_local=2,
        newer_than_remote=1,
        events_relation="remote-extends",
    )


def test_sections_and_local_remote_only_use_the_merge_base():
    data = build(comparison(), "diff", VerifyProfile())
    assert data["primary"]["changed"] is True
    assert data["primary"]["changed_by"] == "remote"
    assert data["meta"]["changed"] is False
    assert data["_derived"] == {
        "changed": True,
        "local_files": 1,
        "remote_files": 1,
        "local_only": [],
        "remote_only": ["_derived/a/x"],
    }
    aux = data["_auxiliary"]
    assert aux["local_only"] == ["_auxiliary/n.txt"]
    assert aux["remote_only"] == ["_registry/r"]
    assert (aux["local_files"], aux["remote_files"]) == (1, 1)
    snaps = data["_snapshots"]
    assert (snaps["remote_count"], snaps["newer_than_local"]) == (5, 2)
    assert snaps["changed"] is True  # states differ even with no _snapshots files
    ev = data[".events.log"]
    assert (ev["local"], ev["remote"], ev["changed"]) == (4, 6, False)
    assert data["changes"]["any"] is True
    assert data["status"] == "CHANGES"


def test_without_a_base_presence_decides_and_modified_is_on_both_sides():
    cmp = comparison()
    cmp.local_changed = cmp.remote_changed = None
    cmp.merge_base = None
    data = build(cmp, "pull", VerifyProfile())
    assert data["_derived"]["local_only"] == ["_derived/a/x"]
    assert data["_derived"]["remote_only"] == ["_derived/a/x"]
    assert data["_auxiliary"]["local_only"] == ["_auxiliary/n.txt"]
    assert data["_auxiliary"]["remote_only"] == ["_registry/r"]


def test_file_status_follows_the_action_direction():
    pull = {f["path"]: f for f in build(comparison(), "pull", VerifyProfile())["files"]}
    push = {f["path"]: f for f in build(comparison(), "push", VerifyProfile())["files"]}
    assert pull["_registry/r"]["status"] == "added"
    assert push["_registry/r"]["status"] == "deleted"
    assert pull["_auxiliary/n.txt"]["status"] == "deleted"
    assert push["_auxiliary/n.txt"]["status"] == "added"
    assert push["records.parquet"]["old_id"] == "r1"
    assert pull["records.parquet"]["section"] == "primary"


def test_document_envelope_carries_changes_twice_and_timing():
    run = AuditRun("pull", "densegen/my_dataset", "bu-scc", VerifyProfile())
    run.set_comparison(comparison())
    run.bytes_received = 123
    doc = run.finish("TRANSFERRED")
    json.dumps(doc, default=list)  # the per-file lists are spooled: iterables, not lists
    assert doc["usr_output_version"] == 1
    assert doc["changes"] == doc["data"]["changes"]
    d = doc["data"]
    assert d["transfer_state"] == "TRANSFERRED"
    assert d["remote"] == "bu-scc"
    assert d["bytes_moved"] == {"sent": 0, "received": 123, "total": 123}
    assert d["verify"] == {"primary": "hash", "sidecars": "strict", "content_hashes": "on"}
    assert d["started_at"] <= d["finished_at"]
    assert d["duration"] >= 0


def test_failure_before_comparison_still_has_every_queried_field():
    from usr.errors import TransportError

    run = AuditRun("push", "ds", "bu-scc", VerifyProfile("size", "off", "off"))
    doc = run.finish("FAILED", error=TransportError("no route"))
    d = doc["data"]
    assert d["transfer_state"] == "FAILED"
    assert d["error"]["kind"] == "transport"
    for key in ("primary", "meta", ".events.log", "_snapshots", "_derived", "_auxiliary"):
        assert "changed" in d[key]
    assert d["_derived"]["local_only"] == []
    assert d["verify"]["sidecars"] == "off"


def test_text_summary_lines():
    run = AuditRun("pull", "densegen/my_dataset", "bu-scc", VerifyProfile())
    run.set_comparison(comparison())
    text = render_text(run.finish("NO-OP"))
    lines = text.splitlines()
    assert lines[0] == "PULL audit: NO-OP"
    for label in ("Primary:", "meta.md:", ".events.log:", "_snapshots:", "_derived:"):
        assert any(line.startswith(label) for line in lines), label
    assert "local 4 lines, remote 6 lines" in text
    diff_run = AuditRun("diff", "ds", "bu-scc", VerifyProfile())
    diff_run.set_comparison(comparison())
    assert render_text(diff_run.finish("DIFF-ONLY")).splitlines()[-1] == "Status: CHANGES"


def test_equal_sides_are_up_to_date():
    files = listing(BASE)
    cmp = Comparison(
        dataset="ds",
        remote="bu-scc",
        local=Side(exists=True, head="a" * 40, states=1, events_lines=1, files=files),
        remote_side=Side(exists=True, head="a" * 40, states=1, events_lines=1, files=files),
        relation="equal",
        merge_base="a" * 40,
    )
    data = build(cmp, "diff", VerifyProfile())
    assert data["status"] == "up-to-date"
    assert not any(data["changes"].values())
