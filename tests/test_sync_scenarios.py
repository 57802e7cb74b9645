"""The sync scenarios of issue 5, each over a real OpenSSH sshd (profile ``bu-scc``) and over
a ``local`` remote (a ``usr plumbing serve`` subprocess): same protocol, same engine.

The engine is called in-process through its public API (``usr.sync.engine``) so a test can
act at the exact step a scenario needs (e.g. append an event while a pull is staged, from
the confirmation callback); the CLI itself is covered in test_sync_cli.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import tomli_w

from usr.dataset import Dataset
from usr.errors import (
    ConflictError,
    InputError,
    TransportError,
    UsageError,
    UsrError,
    VerifyError,
)
from usr.events import append_event
from usr.store import Store
from usr.sync import engine
from usr.sync.engine import SyncOptions

DS = "densegen/my_dataset"


@dataclass
class Env:
    local_root: Path
    remote_root: Path
    config: Path
    kind: str

    @property
    def local_dir(self) -> Path:
        return self.local_root / DS

    @property
    def remote_dir(self) -> Path:
        return self.remote_root / DS

    def opts(self, **kw) -> SyncOptions:
        return SyncOptions(remotes_config=str(self.config), **kw)

    def target(self):
        return engine.resolve_target(self.local_root, DS, self.opts())

    def diff(self, **kw) -> dict:
        return engine.diff(self.target(), "bu-scc", self.opts(**kw))["data"]

    def pull(self, **kw) -> dict:
        return engine.pull(self.target(), "bu-scc", self.opts(**kw))["data"]

    def push(self, **kw) -> dict:
        return engine.push(self.target(), "bu-scc", self.opts(**kw))["data"]


def make_env(kind: str, tmp_path: Path, request=None) -> Env:
    """A laptop root, a cluster root and a remotes.toml whose ``bu-scc`` reaches the
    cluster root over sshd (``kind="ssh"``) or as a local subprocess (``"local"``)."""
    local_root = tmp_path / "laptop"
    remote_root = tmp_path / "cluster"
    local_root.mkdir()
    remote_root.mkdir()
    config = tmp_path / "remotes.toml"
    if kind == "ssh":
        sshd = request.getfixturevalue("sshd")
        sshd.write_remotes(config, remote_root)
    else:
        table = {"type": "local", "base_dir": str(remote_root)}
        config.write_text(tomli_w.dumps({"remotes": {"bu-scc": table}}))
        config.chmod(0o600)
    return Env(local_root, remote_root, config, kind)


@pytest.fixture(params=["local", "ssh"])
def env(request, tmp_path) -> Env:
    return make_env(request.param, tmp_path, request)


def make_dataset(root: Path, rows: int = 2) -> Dataset:
    ds = Dataset.init(root, DS, source="test")
    seqs = ["ACGTACGTAA", "GGGTTTAACC", "TTTTCCCCAA", "CCCCGGGGTT"][:rows]
    ds.append_records([{"sequence": s} for s in seqs], bio_type="dna", alphabet="dna_4")
    return ds


def head(directory: Path) -> str | None:
    return Store.open(directory, create=False).head()


def files_of(directory: Path) -> dict[str, bytes]:
    out = {}
    for p in sorted(directory.rglob("*")):
        rel = p.relative_to(directory).as_posix()
        if p.is_file() and not rel.startswith(".usr") and not rel.endswith(".lock"):
            out[rel] = p.read_bytes()
    return out


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cluster_batch_loop(env):
    """Bootstrap remote->local, repeated NO-OPs, a batch appends rows and events on the
    cluster then a pull, then sidecar drift (meta.md, _derived same-name content change,
    _registry/, _auxiliary) detected on each side while .events.log is unchanged."""
    remote = make_dataset(env.remote_root)
    _write(env.remote_dir / "_derived/infer/part-0.parquet", "v1")
    Store.open(env.remote_dir).record("write part")
    before = env.diff()
    assert before["relation"] == "local-missing"
    assert before["_derived"]["remote_only"] == ["_derived/infer/part-0.parquet"]
    assert not env.local_dir.exists()  # a diff never creates the dataset

    data = env.pull()
    assert data["primary"]["changed"] is True
    assert files_of(env.local_dir) == files_of(env.remote_dir)
    assert head(env.local_dir) == head(env.remote_dir)
    doc = engine.pull(env.target(), "bu-scc", env.opts())
    assert doc["data"]["transfer_state"] == "NO-OP"
    assert not doc["changes"]["any"]

    remote.append_records([{"sequence": "AAAACCCCGG"}], bio_type="dna", alphabet="dna_4")
    d = env.diff()
    assert d["relation"] == "remote-ahead"
    assert d[".events.log"]["remote"] == d[".events.log"]["local"] + 1
    assert d["_snapshots"]["newer_than_local"] == 1
    local_head = head(env.local_dir)
    doc = engine.pull(env.target(), "bu-scc", env.opts())
    data = doc["data"]
    assert data["transfer_state"] == "TRANSFERRED"
    assert data["primary"]["changed"] and data[".events.log"]["changed"]
    assert data["bytes_moved"]["received"] > 0
    assert data["transfer"]["basis"] == "observed" and data["transfer"]["objects"] > 0
    assert head(env.local_dir) == head(env.remote_dir) != local_head
    assert files_of(env.local_dir) == files_of(env.remote_dir)
    tracking = Store.open(env.local_dir).head("refs/remotes/bu-scc/main")
    assert tracking == head(env.remote_dir)

    _write(env.remote_dir / "_derived/infer/part-0.parquet", "v2")  # same name, new bytes
    _write(env.remote_dir / "_registry/infer.toml", "registry")
    _write(env.remote_dir / "meta.md", "# changed on the cluster\n")
    _write(env.local_dir / "_auxiliary/notes.txt", "local note")
    _write(env.local_dir / "_artifacts/plot.svg", "<svg/>")
    heads_before = head(env.local_dir), head(env.remote_dir)
    d = env.diff()
    assert d[".events.log"]["changed"] is False
    assert d["meta"]["changed"] and d["meta"]["changed_by"] == "remote"
    assert d["_derived"]["remote_only"] == ["_derived/infer/part-0.parquet"]
    assert d["_derived"]["local_only"] == []
    assert d["_derived"]["local_files"] == d["_derived"]["remote_files"] == 1
    (entry,) = [f for f in d["files"] if f["section"] == "derived"]
    assert entry["status"] == "modified" and entry["old_id"] != entry["new_id"]
    aux = d["_auxiliary"]
    assert aux["remote_only"] == ["_registry/infer.toml"]
    assert aux["local_only"] == ["_artifacts/plot.svg", "_auxiliary/notes.txt"]
    assert d["relation"] == "diverged"  # both sides have unrecorded changes
    assert d["changes"]["derived"] and d["changes"]["auxiliary"] and d["changes"]["meta"]
    # diff recorded nothing and moved no branch on either side
    assert (head(env.local_dir), head(env.remote_dir)) == heads_before


def test_laptop_annotate_loop(env):
    """Bootstrap local->remote, NO-OP, overlay attach then push, then the fast-forward-only
    refusals (push behind, pull ahead) and concurrent writes refused as diverged with
    nothing changed on either side."""
    import pyarrow as pa

    from usr.registry import register

    make_dataset(env.local_root)
    doc = engine.push(env.target(), "bu-scc", env.opts())
    assert doc["data"]["transfer_state"] == "TRANSFERRED"
    assert doc["data"]["relation"] == "remote-missing"
    assert doc["data"]["bytes_moved"]["sent"] > 0
    assert files_of(env.remote_dir) == files_of(env.local_dir)
    assert engine.push(env.target(), "bu-scc", env.opts())["data"]["transfer_state"] == "NO-OP"

    register(env.local_root, "infer", [("infer__score", "float64")])
    local = Dataset.open(env.local_root, DS)
    ids = local.to_table(overlay=False).column("id").to_pylist()
    local.attach(pa.table({"id": ids, "infer__score": [0.5] * len(ids)}), namespace="infer")
    data = env.push()
    assert data["relation"] == "local-ahead"
    assert data["_derived"]["changed"] and data["_derived"]["local_only"]
    assert data["_derived"]["remote_only"] == []
    assert files_of(env.remote_dir) == files_of(env.local_dir)

    append_event(env.remote_dir, "batch", DS, {"n": 1})
    with pytest.raises(ConflictError, match="remote has newer states; pull first"):
        env.push()
    env.pull()
    append_event(env.local_dir, "notebook", DS, {"n": 2})
    with pytest.raises(ConflictError, match="local has newer states"):
        env.pull()

    append_event(env.remote_dir, "batch", DS, {"n": 3})
    local_files, remote_files = files_of(env.local_dir), files_of(env.remote_dir)
    for op in (env.pull, env.push):
        with pytest.raises(ConflictError, match="diverged: merge base") as exc:
            op()
        assert "local" in exc.value.message and "remote" in exc.value.message
    assert files_of(env.local_dir) == local_files
    assert files_of(env.remote_dir) == remote_files


def test_refused_states(env):
    """Rewritten events with an equal line count, a remote without records.parquet, a
    local without it: each detected and refused, the receiver untouched."""
    make_dataset(env.remote_root)
    env.pull()
    log = env.remote_dir / ".events.log"
    original = log.read_text()
    lines = original.splitlines(keepends=True)
    lines[-1] = lines[-1].replace('"action"', '"action_x"', 1)
    log.write_text("".join(lines))
    ev = env.diff()[".events.log"]
    assert ev["local"] == ev["remote"]
    assert ev["changed"] is True and ev["relation"] == "diverged"
    before, h = files_of(env.local_dir), head(env.local_dir)
    with pytest.raises(ConflictError, match="events.log"):
        env.pull()
    assert files_of(env.local_dir) == before and head(env.local_dir) == h

    log.write_text(original)
    (env.remote_dir / "records.parquet").unlink()
    assert any(  # diff says it before any pull is tried
        n.startswith("remote records.parquet is missing") for n in env.diff().get("notes", [])
    )
    with pytest.raises(InputError, match="records.parquet"):
        env.pull()
    assert files_of(env.local_dir) == before and head(env.local_dir) == h

    other = Dataset.init(env.local_root, "densegen/other", source="t")
    other.records_path.unlink()
    target = engine.resolve_target(env.local_root, "densegen/other", env.opts())
    with pytest.raises(InputError, match="records.parquet"):
        engine.push(target, "bu-scc", env.opts())
    assert not (env.remote_root / "densegen/other").exists()


def test_event_appended_while_pull_is_staged_is_never_lost(env):
    remote = make_dataset(env.remote_root)
    env.pull()
    remote.append_records([{"sequence": "AAAACCCCGG"}], bio_type="dna", alphabet="dna_4")

    def confirm(summary: str) -> bool:
        append_event(env.local_dir, "late writer", DS, {"during": "pull"})
        return True

    with pytest.raises(ConflictError):
        env.pull(confirm=confirm)
    lines = (env.local_dir / ".events.log").read_text().splitlines()
    assert json.loads(lines[-1])["action"] == "late writer"


def test_verification_failure_never_promotes(env, monkeypatch):
    remote = make_dataset(env.remote_root)
    env.pull()
    remote.append_records([{"sequence": "AAAACCCCGG"}], bio_type="dna", alphabet="dna_4")
    rstore = Store.open(env.remote_dir)
    (entry,) = [c for c in rstore.diff(None, rstore.head()) if c.path == "records.parquet"]
    obj = env.remote_dir / ".usr" / "objects" / entry.new_id[:2] / entry.new_id[2:]
    assert obj.is_file()
    obj.chmod(0o644)
    import zlib

    obj.write_bytes(zlib.compress(b"blob 3\x00bad"))
    before, h = files_of(env.local_dir), head(env.local_dir)
    with pytest.raises(UsrError) as exc:
        env.pull()
    assert isinstance(exc.value, VerifyError | TransportError), exc.value
    assert files_of(env.local_dir) == before and head(env.local_dir) == h


def test_dry_run_changes_nothing_but_tracking(env):
    remote = make_dataset(env.remote_root)
    env.pull()
    remote.append_event("batch", {"n": 1})
    before = files_of(env.local_dir), head(env.local_dir), head(env.remote_dir)
    doc = engine.pull(env.target(), "bu-scc", env.opts(dry_run=True))
    assert doc["data"]["transfer_state"] == "DRY-RUN"
    assert "would fast-forward" in doc["data"]["notes"][0]
    assert (files_of(env.local_dir), head(env.local_dir), head(env.remote_dir)) == before
    assert Store.open(env.local_dir).head("refs/remotes/bu-scc/main") == head(env.remote_dir)


def test_partial_transfers_and_the_tracking_ref(tmp_path):
    """``--primary-only``/``--skip-snapshots`` move a state when only the sections they keep
    changed and refuse otherwise; ``--verify size`` transfers and says so; the
    remote-tracking ref follows every diff, pull and push. (Transport-independent: run on
    the ``local`` remote only.)"""
    import pyarrow.parquet as pq

    e = make_env("local", tmp_path)
    make_dataset(e.remote_root)
    e.pull()
    tracking = "refs/remotes/bu-scc/main"
    # Only records.parquet changes (same rows, other bytes): no event, no sidecar.
    table = pq.read_table(e.remote_dir / "records.parquet")
    pq.write_table(table, e.remote_dir / "records.parquet", compression="gzip")
    Store.open(e.remote_dir).record("recompress")
    e.diff()
    assert Store.open(e.local_dir).head(tracking) == head(e.remote_dir)  # diff moved it
    data = e.pull(primary_only=True, verify_sidecars=False, verify_derived_hashes=False)
    assert data["transfer_state"] == "TRANSFERRED"
    assert data["verify"] == {"primary": "hash", "sidecars": "off", "content_hashes": "off"}
    assert files_of(e.local_dir) == files_of(e.remote_dir)

    _write(e.remote_dir / "_snapshots/records-1.parquet", "snapshot")
    before = files_of(e.local_dir), head(e.local_dir)
    for flags in ({"skip_snapshots": True}, {"primary_only": True}):
        with pytest.raises(UsageError, match="would leave out changed sections: snapshots"):
            e.pull(**flags)
    assert (files_of(e.local_dir), head(e.local_dir)) == before
    data = e.pull(verify="size")
    assert data["transfer_state"] == "TRANSFERRED" and data["verify"]["primary"] == "size"
    assert files_of(e.local_dir) == files_of(e.remote_dir)

    _write(e.local_dir / "_derived/infer/part-0.parquet", "local part")
    data = e.push(skip_snapshots=True)
    assert data["transfer_state"] == "TRANSFERRED"
    assert Store.open(e.local_dir).head(tracking) == head(e.local_dir) == head(e.remote_dir)
