"""The iterative HPC batch loop of the runbooks, over a real OpenSSH sshd (remote ``bu-scc``).

Each cycle: a batch job on the cluster appends rows (mock batch writer, Python API) ->
the laptop diffs and pulls -> an annotation tool scores the new rows (mock annotation
writer) -> diff and push -> diff is up-to-date. Across cycles the event log only grows,
earlier annotations survive, every audit says what moved, and a repeated pull is a NO-OP.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc
import pytest

from usr import mock
from usr.dataset import Dataset
from usr.events import read_events
from usr.store import Store
from usr.sync import engine
from usr.sync.engine import SyncOptions

DS = "densegen/my_dataset"
ROWS = 40
CYCLES = 2


class Loop:
    def __init__(self, laptop: Path, cluster: Path, config: Path) -> None:
        self.laptop, self.cluster, self.config = laptop, cluster, config

    def run(self, action: str, **kw) -> dict:
        opts = SyncOptions(remotes_config=str(self.config), **kw)
        target = engine.resolve_target(self.laptop, DS, opts)
        fn = {"diff": engine.diff, "pull": engine.pull, "push": engine.push}[action]
        return fn(target, "bu-scc", opts)["data"]


def _files(directory: Path) -> dict[str, bytes]:
    return {
        p.relative_to(directory).as_posix(): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
        and ".usr" not in p.relative_to(directory).parts[0]
        and not p.name.endswith(".lock")
    }


@pytest.fixture
def loop(sshd, tmp_path: Path) -> Loop:
    laptop, cluster = tmp_path / "laptop", tmp_path / "cluster"
    laptop.mkdir()
    cluster.mkdir()
    config = sshd.write_remotes(tmp_path / "remotes.toml", cluster)
    return Loop(laptop, cluster, config)


def test_batch_pull_annotate_push_cycles_over_ssh(loop: Loop) -> None:
    events_seen = 0
    for cycle in range(1, CYCLES + 1):
        batch = mock.mock_batch(loop.cluster, DS, rows=ROWS, seed=cycle)
        assert batch.rows == ROWS * cycle and batch.batch == cycle

        before = loop.run("diff")
        want = "local-missing" if cycle == 1 else "remote-ahead"
        assert before["relation"] == want
        assert before["primary"]["changed"] and before["primary"]["changed_by"] == "remote"
        assert before[".events.log"]["remote"] > before[".events.log"]["local"]
        assert before["_snapshots"]["newer_than_local"] >= 1
        assert before["transfer"]["direction"] == "remote-to-local"

        pulled = loop.run("pull")
        assert pulled["transfer_state"] == "TRANSFERRED"
        assert pulled["bytes_moved"]["received"] > 0
        if cycle == 1:
            assert loop.run("pull")["transfer_state"] == "NO-OP"  # safe to repeat

        local = Dataset.open(loop.laptop, DS)
        assert local.info()["rows"] == ROWS * cycle
        events = read_events(local.path)
        assert len(events) > events_seen  # the log only ever grows
        events_seen = len(events)

        scored = mock.mock_infer(loop.laptop, DS, seed=cycle)
        assert scored.scored == ROWS  # only the new rows; earlier scores are kept

        ahead = loop.run("diff")
        assert ahead["relation"] == "local-ahead"
        assert ahead["_derived"]["local_only"] == [scored.part]
        assert ahead["_derived"]["remote_only"] == []
        assert not ahead["primary"]["changed"]

        pushed = loop.run("push")
        assert pushed["transfer_state"] == "TRANSFERRED"
        assert pushed["bytes_moved"]["sent"] > 0
        assert loop.run("diff")["status"] == "up-to-date"

    laptop_dir, cluster_dir = loop.laptop / DS, loop.cluster / DS
    assert _files(laptop_dir) == _files(cluster_dir)
    assert Store.open(laptop_dir).head() == Store.open(cluster_dir).head()
    view = Dataset.open(loop.cluster, DS).to_table()
    assert view.num_rows == ROWS * CYCLES
    assert pc.sum(pc.is_null(view.column("infer__ll")).cast("int64")).as_py() == 0
    assert len(list((cluster_dir / "_derived" / "infer").glob("*.parquet"))) == CYCLES
    actions = [e.action for e in Store.open(laptop_dir).log()]
    assert actions.count("mock batch") == CYCLES and actions.count("attach infer") == CYCLES


def test_same_seeds_write_the_same_records(tmp_path: Path) -> None:
    """Determinism of the batch writer: same seeds, same sequences and ids, any root."""
    for root in (tmp_path / "a", tmp_path / "b"):
        for cycle in (1, 2):
            mock.mock_batch(root, DS, rows=5, seed=cycle)
    a = Dataset.open(tmp_path / "a", DS).to_table(overlay=False)
    b = Dataset.open(tmp_path / "b", DS).to_table(overlay=False)
    assert a.select(["id", "sequence"]).equals(b.select(["id", "sequence"]))
    assert len(set(a.column("id").to_pylist())) == 10
