"""Merging diverged histories over the real SSH remote (the sshd fixture, profile bu-scc).

The chained loop: a batch job on the cluster appends records and events while an
annotation tool on the laptop attaches an overlay and appends events. The datasets are made
with the Python API. ``usr pull --merge`` runs as a real subprocess, as an operator would
run it; the other commands run the same CLI entry point in-process (the remote side is
always the real ``usr`` over SSH), which keeps these tests within their time budget.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest

from porcelain.cli import main
from porcelain.merge import render
from tests.conftest import REPO, Result, run_usr
from usr import ledger, records, sidecars
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

    def __init__(self, tmp: Path, sshd, base_files: dict[str, str] | None = None) -> None:
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
        for rel, text in (base_files or {}).items():  # in the merge base of both sides
            write(remote.path, rel, text)
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


def write(directory: Path, rel: str, text: str) -> None:
    path = directory / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


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
    # Both sides have unrecorded work; the remote's report file is never fetched, so the
    # preview's merged tree names a blob this store lacks (build_tree strict=False).
    assert "notes" not in diff, diff["notes"]  # no "merge preview unavailable: ..."
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
        assert len(list((d.path / "_derived" / "infer").glob("*.parquet"))) == 1
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
    again = engine.merge(sides.target(), "bu-scc", sides.opts())
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
        engine.merge(sides.target(), "bu-scc", sides.opts())
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
    behind = engine.merge(target, "bu-scc", SyncOptions(remotes_config=str(config)))
    assert behind["data"]["relation"] == "remote-ahead"
    assert behind["data"]["transfer_state"] == "TRANSFERRED"
    assert refs_of(target.path) == refs_of(remote.path)
    Dataset.open(local_root, DS).append_event("notebook", {})
    Store.open(target.path).record("notebook")
    ahead = engine.merge(target, "bu-scc", SyncOptions(remotes_config=str(config)))
    assert ahead["data"]["transfer_state"] == "NO-OP"
    assert any("push" in n for n in ahead["data"]["notes"])


def _events(ds: Dataset) -> Counter:
    """How often each (action, args) event appears in the dataset's log."""
    return Counter(
        (e["action"], json.dumps(e.get("args"), sort_keys=True)) for e in read_events(ds.path)
    )


def test_second_round_merges_registries_and_ledgers_and_passes_pre_push(sides, capsys, monkeypatch):
    """The loop with recorded states on both sides, each annotating under its own namespace
    (registered on its own root only): the frozen registry copies merge as the union of
    namespaces, the ledgers as the union of their lines plus the merge's vouch for the
    merged copy, and the shipped pre-push hook passes the merge state."""
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the hook runs "$USR_PYTHON" -m usr
    monkeypatch.delenv("USR_ALLOW_UNVERIFIED_SIDECARS", raising=False)
    hooks_dir = sides.local_root / ".usr-hooks"
    hooks_dir.mkdir()
    shutil.copy(REPO / "hooks" / "pre-push", hooks_dir / "pre-push")
    reg.register(sides.remote_root, "score", reg.parse_columns("score", "score__v:int64"))
    ids = _ids(sides.local)
    remote = sides.remote
    remote.append_records([{"sequence": "GATTACAGAT"}], bio_type="dna")
    remote.attach(pa.table({"id": _ids(remote), "v": [1, 2, 3, 4]}), namespace="score")
    remote.append_event("batch", {"job": 8})
    remote.record_state("batch 8")
    local = sides.local
    local.attach(pa.table({"id": ids, "ll": [0.1, 0.2, 0.3]}), namespace="infer")
    local.append_event("notebook", {"cell": 1})
    local.record_state("annotate")
    local.append_event("notebook", {"cell": 2})  # left unrecorded
    wanted = {("batch", '{"job": 8}'), ("notebook", '{"cell": 1}'), ("notebook", '{"cell": 2}')}

    diff = engine.diff(sides.target(), "bu-scc", sides.opts())["data"]
    assert diff["relation"] == "diverged" and diff["mergeable"] is True, diff["conflicts"]
    rules = {f["path"]: f["resolution"] for f in diff["merge"]["files"]}
    assert rules["_registry/registry.toml"] == "registry-union"
    assert rules["_registry/sidecar-ledger.jsonl"] == "events-append"

    res = sides.cli(capsys, "merge", DS, "bu-scc", "-y", "--format", "json")
    assert res.returncode == 0, res.stderr
    merged = json.loads(res.stdout)["data"]["merge"]
    assert merged["tree"] == diff["merge"]["tree"]  # the preview's tree is the merge's
    pushed = engine.push(sides.target(), "bu-scc", sides.opts())["data"]
    assert pushed["transfer_state"] == "TRANSFERRED"
    assert pushed["hooks"]["pre-push"]["status"] == "passed"

    head = refs_of(sides.local.path)
    assert head == refs_of(sides.remote.path) == merged["commit"]
    for d, root in ((sides.local, sides.local_root), (sides.remote, sides.remote_root)):
        rows = _ids(d)
        assert len(rows) == len(set(rows)) == 4
        for ns in ("infer", "score"):
            assert len(list((d.path / "_derived" / ns).glob("*.parquet"))) == 1
        view = d.to_table()
        assert view.column("score__v").to_pylist() == [1, 2, 3, 4]
        assert sorted(v for v in view.column("infer__ll").to_pylist() if v is not None) == [
            0.1,
            0.2,
            0.3,
        ]
        counts = _events(d)
        assert all(counts[w] == 1 for w in wanted), counts
        frozen = reg.Registry.load(d.path / "_registry").namespaces
        assert sorted(frozen) == ["infer", "score"]
        # Verified on both machines: each root knows only some namespaces; the frozen copy
        # (vouched by the merge) covers the rest.
        state = sidecars.open_state(d.path, "HEAD")
        assert sidecars.check_state(state, DS, root).problems == []
    # Same inputs, same tree, on another machine: the cluster's store holds all three.
    rstore = Store.open(sides.remote.path)
    merge_state = rstore.log_entry(head)
    lparent, rparent = merge_state.parents
    again = merge_mod.merge_trees(
        rstore,
        rstore.tree_of(rstore.merge_base(lparent, rparent)),
        rstore.tree_of(lparent),
        rstore.tree_of(rparent),
    )
    assert again.tree == merge_state.tree


def test_every_conflict_kind_is_reported_and_changes_nothing(tmp_path, sshd, capsys):
    """All at once, over SSH: each conflicting path is named with its kind, the command
    exits 8, and neither side's refs or files move. (meta.md and overlay values: above.)"""
    old_ledger = '{"blake3":"' + "0" * 64 + '","path":"_artifacts/old.txt","size":1}\n'
    sides = Sides(
        tmp_path,
        sshd,
        base_files={"_artifacts/old.txt": "v1\n", "_registry/sidecar-ledger.jsonl": old_ledger},
    )
    local, remote = sides.local, sides.remote

    def contract(column_type: str) -> str:
        found = {"score": reg.Namespace("score", (("score__v", column_type),))}
        return reg.Registry(tmp_path, found, b"").to_toml().decode()

    # Laptop (unrecorded): deletes, rewrites its log, ledger and table, adds files.
    (local.path / "_artifacts" / "old.txt").unlink()
    write(local.path, "_artifacts/report.txt", "mine\n")
    write(local.path, "_artifacts/x", "a file\n")
    write(local.path, "_derived/junk/part-l.parquet", "not parquet")
    write(local.path, "_registry/registry.toml", contract("float64"))
    log = local.path / ".events.log"
    log.write_text(log.read_text().replace('"init"', '"init-edited"', 1))
    book = local.path / "_registry" / "sidecar-ledger.jsonl"
    book.write_text(old_ledger.replace('"size":1', '"size":2'))
    table = records.read_records(local.records_path).slice(1)
    records.write_records(local.records_path, table.to_batches(), records.CORE_SCHEMA)
    # Cluster (recorded): modifies, appends, adds other files at the same paths.
    write(remote.path, "_artifacts/old.txt", "v2\n")
    write(remote.path, "_artifacts/report.txt", "theirs\n")
    write(remote.path, "_artifacts/x/y", "a file in a directory\n")
    write(remote.path, "_derived/junk/part-r.parquet", "not parquet either")
    write(remote.path, "_registry/registry.toml", contract("int64"))
    remote.append_event("batch", {"job": 9})
    ledger.record(remote.path, ["_artifacts/old.txt"], via="api")
    remote.append_records([{"sequence": "GATTACAGAT"}], bio_type="dna")
    remote.record_state("batch 9")
    heads = (refs_of(local.path), refs_of(remote.path))
    files = (files_of(local.path), files_of(remote.path))
    expected = {
        ("_artifacts/old.txt", "delete-modify"),
        ("_artifacts/report.txt", "both-added"),
        ("_artifacts/x", "path-clash"),
        ("_derived/junk/part-l.parquet", "overlay-unreadable"),
        ("_derived/junk/part-r.parquet", "overlay-unreadable"),
        ("_registry/registry.toml", "registry-contract"),
        ("_registry/sidecar-ledger.jsonl", "ledger-rewritten"),
        (".events.log", "events-rewritten"),
        ("records.parquet", "records-rewritten"),
    }

    diff = engine.diff(sides.target(), "bu-scc", sides.opts())["data"]
    assert diff["relation"] == "diverged" and diff["mergeable"] is False
    assert {(c["path"], c["kind"]) for c in diff["conflicts"]} == expected
    res = sides.cli(capsys, "merge", DS, "bu-scc", "-y", "--format", "json")
    assert res.returncode == 8, res.stderr
    data = json.loads(res.stdout)["data"]
    assert {(c["path"], c["kind"]) for c in data["merge"]["conflicts"]} == expected
    assert all(c["why"] for c in data["merge"]["conflicts"])
    assert res.stderr.startswith(f"usr: error: merge conflicts in {len(expected)} path(s)")
    text = sides.cli(capsys, "merge", DS, "bu-scc", "-y")
    assert text.returncode == 8
    assert all(f"CONFLICT      {path}:" in text.stdout for path, _ in expected)
    assert "[registry-contract]" in text.stdout and "'score'" in text.stdout
    assert (refs_of(local.path), refs_of(remote.path)) == heads
    assert (files_of(local.path), files_of(remote.path)) == files


def test_histories_without_a_merge_base_conflict_and_change_nothing(tmp_path, sshd, capsys):
    """The same id created independently on each side: no shared state to merge from."""
    sides = Sides.__new__(Sides)
    sides.local_root, sides.remote_root = tmp_path / "laptop", tmp_path / "cluster"
    sides.config = sshd.write_remotes(tmp_path / "remotes.toml", sides.remote_root)
    for root in (sides.local_root, sides.remote_root):
        d = Dataset.init(root, DS, source=root.name)
        d.record_state("init")
    heads = (refs_of(sides.local.path), refs_of(sides.remote.path))
    files = (files_of(sides.local.path), files_of(sides.remote.path))

    diff = engine.diff(sides.target(), "bu-scc", sides.opts())["data"]
    assert diff["relation"] == "diverged" and diff["mergeable"] is False
    assert [c["kind"] for c in diff["conflicts"]] == ["no-merge-base"]
    res = sides.cli(capsys, "merge", DS, "bu-scc", "-y", "--format", "json")
    assert res.returncode == 8, res.stderr
    assert json.loads(res.stdout)["data"]["merge"]["conflicts"][0]["kind"] == "no-merge-base"
    assert (refs_of(sides.local.path), refs_of(sides.remote.path)) == heads
    assert (files_of(sides.local.path), files_of(sides.remote.path)) == files
