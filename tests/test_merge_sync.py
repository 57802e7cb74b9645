"""Merging diverged histories over the real SSH remote (the sshd fixture, profile bu-scc).

The chained loop: a batch job on the cluster appends records and events while an
annotation tool on the laptop attaches an overlay and appends events. The datasets are made
with the Python API. ``usr pull --merge`` runs as a real subprocess, as an operator would
run it; the other commands run the same CLI entry point in-process (the remote side is
always the real ``usr`` over SSH), which keeps these tests within their time budget.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from porcelain.cli import main
from porcelain.merge import render
from tests.conftest import Result, run_usr
from usr import merge as merge_mod
from usr import registry as reg
from usr.dataset import Dataset
from usr.events import read_events
from usr.store import Store
from usr.sync import audit, engine
from usr.sync.engine import SyncOptions

DS = "densegen/my_dataset"
SEQS = ["ACGTACGTAA", "GGGTTTAACC", "TTTTCCCCAA"]


class Sides:
    """A laptop root and a cluster root, the cluster reached over SSH as ``bu-scc``."""

    def __init__(self, tmp: Path, sshd) -> None:
        self.local_root = tmp / "laptop"
        self.remote_root = tmp / "cluster"
        self.local_root.mkdir()
        self.remote_root.mkdir()
        self.config = sshd.write_remotes(tmp / "remotes.toml", self.remote_root)
        cols = reg.parse_columns("infer", "infer__ll:float64")
        reg.register(self.local_root, "infer", cols)
        reg.register(self.remote_root, "infer", cols)
        remote = Dataset.init(self.remote_root, DS, source="densegen")
        remote.append_records([{"sequence": s} for s in SEQS], bio_type="dna")
        target = engine.resolve_target(self.local_root, DS, SyncOptions())
        engine.pull(target, "bu-scc", SyncOptions(remotes_config=str(self.config)))

    @property
    def local(self) -> Dataset:
        return Dataset.open(self.local_root, DS)

    @property
    def remote(self) -> Dataset:
        return Dataset.open(self.remote_root, DS)

    def opts(self, **kw) -> SyncOptions:
        return SyncOptions(remotes_config=str(self.config), **kw)

    def target(self) -> engine.Target:
        return engine.resolve_target(self.local_root, DS, self.opts())

    def usr(self, *args: str) -> Result:
        """``usr --root LAPTOP ARGS --remotes-config CFG`` as a real subprocess."""
        return run_usr("--root", str(self.local_root), *args, "--remotes-config", str(self.config))

    def cli(self, capsys: pytest.CaptureFixture[str], *args: str) -> Result:
        """The same command through the real entry point, in this process."""
        capsys.readouterr()
        code = 0
        try:
            main(["--root", str(self.local_root), *args, "--remotes-config", str(self.config)])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        out = capsys.readouterr()
        return Result(code, out.out, out.err)


@pytest.fixture
def sides(tmp_path, sshd) -> Sides:
    return Sides(tmp_path, sshd)


def files_of(directory: Path) -> dict[str, bytes]:
    out = {}
    for p in sorted(directory.rglob("*")):
        rel = p.relative_to(directory).as_posix()
        if p.is_file() and not rel.startswith(".usr") and not rel.endswith(".lock"):
            out[rel] = p.read_bytes()
    return out


def refs_of(directory: Path) -> str | None:
    return Store.open(directory, create=False).head()


def _ids(ds: Dataset) -> list[str]:
    return ds.to_table(overlay=False).column("id").to_pylist()


def test_chained_loop_merges_then_push_fast_forwards(sides, capsys):
    ids = _ids(sides.local)
    # Cluster: a batch job appends rows (one of them the laptop also adds) and an event.
    sides.remote.append_records(
        [{"sequence": "AAAACCCCGG"}, {"sequence": "GATTACAGAT"}], bio_type="dna"
    )
    sides.remote.append_event("batch", {"job": 7})
    # ... and leaves a report file, unrecorded (a merge preview never reads its bytes).
    (sides.remote.path / "_artifacts").mkdir()
    (sides.remote.path / "_artifacts" / "job7.txt").write_text("job 7 done\n")
    # Laptop: infer attaches an overlay, a notebook appends an event (left unrecorded).
    local = sides.local
    local.attach(pa.table({"id": ids, "ll": [0.1, 0.2, 0.3]}), namespace="infer")
    local.append_records([{"sequence": "AAAACCCCGG"}], bio_type="dna")
    local.append_event("notebook", {"cell": 3})
    remote_log = (sides.remote.path / ".events.log").read_bytes()
    events_before = {
        json.dumps(e, sort_keys=True)
        for d in (sides.local, sides.remote)
        for e in read_events(d.path)
    }
    heads_before = (refs_of(sides.local.path), refs_of(sides.remote.path))
    files_before = (files_of(sides.local.path), files_of(sides.remote.path))

    diff_doc = engine.diff(sides.target(), "bu-scc", sides.opts())
    diff = diff_doc["data"]
    assert diff["relation"] == "diverged"
    assert diff["mergeable"] is True and diff["conflicts"] == []
    assert "Mergeable:   yes" in audit.render_text(diff_doc)

    res = sides.cli(capsys, "merge", DS, "bu-scc", "--dry-run", "--format", "json")
    assert res.returncode == 0, res.stderr
    dry = json.loads(res.stdout)["data"]
    assert dry["transfer_state"] == "DRY-RUN" and dry["mergeable"] is True
    assert any(n.startswith("would merge") for n in dry["notes"])
    rules = {f["path"]: f["resolution"] for f in dry["merge"]["files"]}
    assert rules["records.parquet"] == "records-union"
    assert rules[".events.log"] == "events-append"
    assert rules["_artifacts/job7.txt"] == "take-remote"
    assert any(p.startswith("_derived/infer/") and r == "keep-local" for p, r in rules.items())
    text = render(dry)
    assert "union rows" in text and "append lines" in text and "Mergeable:   yes" in text
    assert (refs_of(sides.local.path), refs_of(sides.remote.path)) == heads_before
    assert (files_of(sides.local.path), files_of(sides.remote.path)) == files_before

    pulled = sides.usr("pull", DS, "bu-scc", "--merge", "-y")
    assert pulled.returncode == 0, pulled.stderr
    store = Store.open(sides.local.path)
    merge_state = store.log_entry(store.head())
    assert merge_state.action == "merge bu-scc" and len(merge_state.parents) == 2
    assert merge_state.parents[1] == refs_of(sides.remote.path)
    assert merge_state.tree == dry["merge"]["tree"]  # same inputs, same merged tree
    assert store.verify_working() == []

    pushed = engine.push(sides.target(), "bu-scc", sides.opts())["data"]
    assert pushed["relation"] == "local-ahead" and pushed["transfer_state"] == "TRANSFERRED"

    assert files_of(sides.local.path) == files_of(sides.remote.path)
    assert refs_of(sides.local.path) == refs_of(sides.remote.path) == store.head()
    for d in (sides.local, sides.remote):
        rows = _ids(d)
        assert len(rows) == len(set(rows)) == 5  # 3 base + 2 from the cluster (1 shared)
        view = d.to_table()
        assert sorted(v for v in view.column("infer__ll").to_pylist() if v is not None) == [
            0.1,
            0.2,
            0.3,
        ]
        lines = (d.path / ".events.log").read_bytes().splitlines()
        assert len(lines) == len(set(lines))
        events = {json.dumps(e, sort_keys=True) for e in read_events(d.path)}
        assert events_before <= events
        assert Store.open(d.path).fsck() == []
    # The cluster's log only grew: consumers tailing it saw appends only.
    assert (sides.remote.path / ".events.log").read_bytes().startswith(remote_log)

    capsys.readouterr()
    main(["--root", str(sides.local_root), "log", DS, "--graph"])
    graph = capsys.readouterr().out
    assert "merge bu-scc" in graph and "| \\" in graph and "| /" in graph
    again = merge_mod.merge(sides.target(), "bu-scc", sides.opts())
    assert again["data"]["transfer_state"] == "NO-OP"


def test_conflicts_are_reported_and_change_nothing(sides, capsys):
    ids = _ids(sides.local)
    local, remote = sides.local, sides.remote
    (local.path / "meta.md").write_text("# laptop notes\n")
    (remote.path / "meta.md").write_text("# cluster notes\n")
    local.attach(pa.table({"id": ids[:2], "ll": [0.5, 1.5]}), namespace="infer")
    remote.attach(pa.table({"id": ids[1:], "ll": [9.0, 2.5]}), namespace="infer")
    Store.open(remote.path).record("cluster edits")  # meta.md recorded; laptop's is not
    heads = (refs_of(local.path), refs_of(remote.path))
    files = (files_of(local.path), files_of(remote.path))

    diff_doc = engine.diff(sides.target(), "bu-scc", sides.opts())
    diff = diff_doc["data"]
    assert diff["relation"] == "diverged" and diff["mergeable"] is False
    assert "Mergeable:   no (3 conflicts: " in audit.render_text(diff_doc)
    kinds = {(c["path"].split("/")[0], c["kind"]) for c in diff["conflicts"]}
    assert ("meta.md", "both-modified") in kinds and ("_derived", "overlay-values") in kinds

    res = sides.cli(capsys, "merge", DS, "bu-scc", "-y", "--format", "json")
    assert res.returncode == 8
    data = json.loads(res.stdout)["data"]
    assert data["mergeable"] is False and data["transfer_state"] == "FAILED"
    conflicts = data["merge"]["conflicts"]
    paths = sorted(c["path"] for c in conflicts)
    parts = [p for p in paths if p.startswith("_derived/infer/")]
    assert "meta.md" in paths and len(parts) == 2  # both parts named
    assert all(c["why"] for c in conflicts)
    assert res.stderr.startswith("usr: error: merge conflicts in 3 path(s)")

    text = sides.cli(capsys, "merge", DS, "bu-scc", "-y")
    assert text.returncode == 8
    for path in paths:
        assert f"CONFLICT      {path}:" in text.stdout
    with pytest.raises(merge_mod.MergeConflict) as exc:  # what usr pull --merge calls
        merge_mod.merge(sides.target(), "bu-scc", sides.opts())
    assert sorted(c["path"] for c in exc.value.report["conflicts"]) == paths

    assert (refs_of(local.path), refs_of(remote.path)) == heads
    assert (files_of(local.path), files_of(remote.path)) == files


def test_merge_fast_forwards_when_behind_and_is_a_noop_when_ahead(tmp_path):
    """Not diverged: ``usr merge`` acts like git merge (local ``usr plumbing serve`` remote,
    the same protocol as SSH)."""
    import tomli_w

    local_root, remote_root = tmp_path / "laptop", tmp_path / "cluster"
    config = tmp_path / "remotes.toml"
    config.write_text(
        tomli_w.dumps({"remotes": {"bu-scc": {"type": "local", "base_dir": str(remote_root)}}})
    )
    config.chmod(0o600)
    opts = SyncOptions(remotes_config=str(config))
    remote = Dataset.init(remote_root, DS, source="densegen")
    target = engine.resolve_target(local_root, DS, opts)
    engine.pull(target, "bu-scc", opts)
    remote.append_records([{"sequence": "GATTACAGAT"}], bio_type="dna")
    behind = merge_mod.merge(target, "bu-scc", SyncOptions(remotes_config=str(config)))
    assert behind["data"]["relation"] == "remote-ahead"
    assert behind["data"]["transfer_state"] == "TRANSFERRED"
    assert refs_of(target.path) == refs_of(remote.path)
    Dataset.open(local_root, DS).append_event("notebook", {})
    Store.open(target.path).record("notebook")
    ahead = merge_mod.merge(target, "bu-scc", SyncOptions(remotes_config=str(config)))
    assert ahead["data"]["transfer_state"] == "NO-OP"
    assert any("push" in n for n in ahead["data"]["notes"])
