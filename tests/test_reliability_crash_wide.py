"""Crash safety at scale: the crash sweep (tests/test_reliability_crash.py) on a dataset with
thousands of directories and the deepest nesting the layout allows.

The dataset is the crash sweep's (Parquet records, a chunked auxiliary file, a derived part)
plus 2,000 directories of sidecar files (``_artifacts/wide/gNN/dNNNN/``) and one file at the
longest legal path: 1,024 bytes, 511 one-letter directories deep (``usr.layout.MAX_RELPATH``).
The state transferred edits a tenth of the sidecars, adds and removes a sidecar directory and
edits the deepest file, so every one of its 511 trees is new: the kill points are reached
with trees and files in flight by the hundred.

Each case is :func:`tests.reliability_helpers.kill_then_rerun`: after the kill both copies are
valid (fsck clean, the working files the old state or the new one exactly, no recorded state
lost), and the rerun of the same command completes with both copies equal to the target.
CI runs a window of the cases that rotates with ``USR_SWEEP_SEED``; ``USR_FULL_SWEEP=1`` runs
them all (docs/reliability.md, "Crash safety").
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.reliability_helpers import (
    DS,
    Kill,
    build_dataset,
    build_template,
    change_dataset,
    copy_tree,
    files_of,
    kill_then_rerun,
    prepare_case,
    sweep,
)
from usr.dataset import Dataset
from usr.errors import InputError
from usr.layout import MAX_RELPATH, check_relpath

#: Cases per CI run (the full set runs with USR_FULL_SWEEP=1): each costs about 8 s of CPU
#: on this tree, so 5 keep the window near 50 s; its own salt, so the window does not move
#: in step with the crash sweep's.
PER_RUN = 5
SALT = 23

WIDE = 2000  # sidecar directories
#: The deepest path the layout allows: 511 one-letter directories and a two-letter name,
#: exactly MAX_RELPATH bytes (one more directory would need 1,025).
DEEP = "a/" * ((MAX_RELPATH - 2) // 2) + "zz"


def _sidecar(i: int) -> str:
    return f"_artifacts/wide/g{i % 40:02d}/d{i:04d}/s.json"


KILLS = [
    # push, the laptop's usr dies
    Kill("push", "client", "snapshot.after-chunks"),  # recording the wide tree first
    Kill("push", "client", "push.negotiated"),
    Kill("push", "client", "push.mid-stream:8"),
    Kill("push", "client", "push.sent"),
    Kill("push", "client", "push.updated"),
    # push, the cluster's usr dies
    Kill("push", "server", "serve.have"),
    Kill("push", "server", "packstream.received-object:300"),
    Kill("push", "server", "gitpack.before-idx"),
    Kill("push", "server", "serve.received"),
    Kill("push", "server", "checkout.streamed-file:100"),
    Kill("push", "server", "checkout.mid-stage"),
    Kill("push", "server", "checkout.journal-written"),
    Kill("push", "server", "checkout.mid-promote:150"),  # among the sidecar directories
    Kill("push", "server", "checkout.after-ref"),
    Kill("push", "server", "serve.updated"),
    # pull, the laptop's usr dies
    Kill("pull", "client", "pull.negotiated"),
    Kill("pull", "client", "packstream.received-object:300"),
    Kill("pull", "client", "packstream.manifests-held:3"),
    Kill("pull", "client", "pull.fetched"),
    Kill("pull", "client", "checkout.streamed-file:100"),
    Kill("pull", "client", "checkout.staged"),
    Kill("pull", "client", "checkout.mid-promote:150"),
    Kill("pull", "client", "checkout.before-ref"),
    Kill("pull", "client", "pull.checked-out"),
    # pull, the cluster's usr dies
    Kill("pull", "server", "snapshot.before-ref"),  # its record of the wide tree
    Kill("pull", "server", "serve.want"),
    Kill("pull", "server", "serve.want:2"),
    Kill("pull", "server", "packstream.sent-object:300"),
    Kill("pull", "server", "packstream.sent-chunk:8"),
    # bootstrap: all 2,000 directories and the deep path land at once
    Kill("push", "server", "checkout.mid-promote:2", bootstrap=True),  # after _artifacts/, whole
    Kill("pull", "client", "packstream.received-object:1500", bootstrap=True),
    # a local remote: pipes to a subprocess instead of an SSH channel
    Kill("push", "client", "push.mid-stream:8", kind="local"),
    Kill("push", "server", "checkout.mid-promote:150", kind="local"),
    Kill("pull", "client", "checkout.streamed-file:100", kind="local"),
    Kill("pull", "server", "packstream.sent-object:300", kind="local"),
]

SELECTED = sweep(KILLS, PER_RUN, salt=SALT)


def build_wide(root: Path) -> Path:
    """The crash sweep's dataset, then the sidecar directories and the deepest path."""
    path = build_dataset(root)
    for i in range(WIDE):
        (path / _sidecar(i)).parent.mkdir(parents=True)
        (path / _sidecar(i)).write_text(f'{{"sidecar": {i}}}\n')
    (path / DEEP).parent.mkdir(parents=True)
    (path / DEEP).write_text("the deepest file\n")
    Dataset.open(root, DS).record_state("wide")
    return path


def change_wide(root: Path, seed: int = 7) -> None:
    """:func:`change_dataset`, then a tenth of the sidecars edited, one sidecar directory
    removed and one added, and the deepest file edited (left for the sync to record)."""
    change_dataset(root, seed)
    path = root / DS
    for i in range(0, WIDE, 10):
        (path / _sidecar(i)).write_text(f'{{"sidecar": {i}, "batch": {seed}}}\n')
    (path / _sidecar(1)).unlink()
    (path / _sidecar(1)).parent.rmdir()
    added = path / f"_artifacts/wide/g00/new-{seed}/s.json"
    added.parent.mkdir()
    added.write_text(f'{{"added": {seed}}}\n')
    (path / DEEP).write_text(f"the deepest file, batch {seed}\n")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """The synced wide pair, copied once per command with the sending side changed (the
    laptop for a push, the cluster for a pull); each case copies that with ``cp -a``."""
    template = build_template(tmp_path_factory.mktemp("wide-template"), build_wide)
    made: dict[str, Path] = {}

    def get(command: str) -> Path:
        if command not in made:
            base = tmp_path_factory.mktemp(f"wide-{command}")
            copy_tree(template / "laptop", base / "laptop")
            copy_tree(template / "cluster", base / "cluster")
            change_wide(base / ("laptop" if command == "push" else "cluster"))
            made[command] = base
        return made[command]

    return get


@pytest.mark.parametrize("case", SELECTED, ids=[c.id for c in SELECTED])
def test_killed_wide_transfer_leaves_valid_copies_and_rerun_completes(
    case: Kill, prepared: Callable[[str], Path], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    pair = prepare_case(case, prepared(case.command), tmp_path, request, changed=True)
    kill_then_rerun(pair, case)
    assert (pair.local_dir / DEEP).read_text() == "the deepest file, batch 7\n"
    assert (pair.remote_dir / _sidecar(1990)).read_text() == '{"sidecar": 1990, "batch": 7}\n'


def test_the_deep_path_is_the_deepest_the_layout_allows() -> None:
    """DEEP is legal and exactly MAX_RELPATH bytes; a path one directory deeper is not."""
    assert len(DEEP.encode()) == MAX_RELPATH and DEEP.count("/") == 511
    assert check_relpath(DEEP) == DEEP
    with pytest.raises(InputError):
        check_relpath("a/" + DEEP)


def test_the_wide_sweep_covers_both_commands_sides_and_transports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Push and pull, killed on the client and on the server, over sshd and over a local
    remote; 30+ distinct kills; the seeded windows together cover them all."""
    combos = {(c.command, c.side, c.kind) for c in KILLS}
    assert combos == {
        (command, side, kind)
        for command in ("push", "pull")
        for side in ("client", "server")
        for kind in ("ssh", "local")
    }
    assert {c.command for c in KILLS if c.bootstrap} == {"push", "pull"}
    assert len({c.id for c in KILLS}) == len(KILLS) >= 30
    import usr.store.checkout
    import usr.sync.client
    import usr.sync.engine
    import usr.sync.server  # noqa: F401 - registers the points
    from usr.faults import KNOWN_POINTS

    assert {c.point.split(":")[0] for c in KILLS} <= set(KNOWN_POINTS)
    monkeypatch.delenv("USR_FULL_SWEEP", raising=False)
    covered: set[str] = set()
    for seed in range(len(KILLS)):
        monkeypatch.setenv("USR_SWEEP_SEED", str(seed))
        window = sweep(KILLS, PER_RUN, salt=SALT)
        assert len(window) == PER_RUN
        covered |= {c.id for c in window}
    assert covered == {c.id for c in KILLS}


def test_the_template_holds_thousands_of_directories_and_the_deep_path(
    prepared: Callable[[str], Path],
) -> None:
    """The shape the sweep promises: 2,500+ directories, the deepest path, in both copies."""
    base = prepared("push")
    for side in ("laptop", "cluster"):
        directory = base / side / DS
        dirs = sum(1 for p in directory.rglob("*") if p.is_dir() and ".usr" not in p.parts)
        assert dirs >= WIDE + 511, (side, dirs)
        assert (directory / DEEP).is_file()
    assert files_of(base / "laptop" / DS) != files_of(base / "cluster" / DS)
