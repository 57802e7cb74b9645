"""Crash safety of push and pull: the client or the server SIGKILLed at named points.

Each case runs the real CLI (``usr push|pull DS bu-scc -y``) with ``USR_FAULT_POINT`` set
for exactly one process — the client through its environment, the server through the
remote ``usr`` wrapper (tests/reliability_helpers.py) — over the real sshd fixture, and a
few over a ``local`` remote. After the kill, on both sides:

* the store is sound (fsck, after the checkout recovery every usr command runs first);
* the working files are either what they were before the command or the state being
  transferred, and they equal HEAD unless they are the untouched pre-command files;
* every commit recorded before the command is still reachable from a ref.

Then the same command is rerun and must complete: both heads equal, both copies hold
exactly the transferred files, files a killed checkout had staged were reused (renamed into
place, same inode), no staging directory is left, and gc leaves no temp file.

CI runs a rotating window of the cases (``USR_SWEEP_SEED``, default 0); ``USR_FULL_SWEEP=1``
runs them all (docs/reliability.md, "Crash safety").
"""

from __future__ import annotations

import signal
from pathlib import Path

import pygit2
import pytest

from tests.reliability_helpers import (
    DS,
    REMOTE,
    Kill,
    build_template,
    change_dataset,
    check_after_kill,
    check_completed,
    files_of,
    kill,
    kill_then_rerun,
    leftovers,
    open_store,
    prepare_case,
    prepare_pair,
    reachable,
    sweep,
)
from usr.errors import TransportError

#: Cases per CI run (the full set runs with USR_FULL_SWEEP=1).
PER_RUN = 8


KILLS = [
    # push, the laptop's usr dies
    Kill("push", "client", "snapshot.after-chunks"),  # recording before the push
    Kill("push", "client", "snapshot.before-ref"),
    Kill("push", "client", "push.negotiated"),
    Kill("push", "client", "push.mid-stream:8"),
    Kill("push", "client", "push.sent"),
    Kill("push", "client", "push.updated"),
    # push, the cluster's usr dies
    Kill("push", "server", "snapshot.after-chunks"),  # its record before the push
    Kill("push", "server", "serve.have"),
    Kill("push", "server", "packstream.received-chunk:8"),
    Kill("push", "server", "chunks.pack-before-rename"),
    Kill("push", "server", "gitpack.before-rename"),
    Kill("push", "server", "gitpack.before-idx"),
    Kill("push", "server", "serve.received"),
    Kill("push", "server", "checkout.streamed-file:3"),  # files staged as blobs land
    Kill("push", "server", "checkout.streamed-chunk:3"),  # chunked files as chunks land
    Kill("push", "server", "gate.staged-check"),  # the table's check begun, mid-stream
    Kill("push", "server", "checkout.mid-stage"),
    Kill("push", "server", "checkout.journal-written"),
    Kill("push", "server", "checkout.mid-promote"),
    Kill("push", "server", "checkout.after-ref"),
    Kill("push", "server", "serve.updated"),
    # pull, the laptop's usr dies
    Kill("pull", "client", "snapshot.after-chunks"),
    Kill("pull", "client", "pull.negotiated"),
    Kill("pull", "client", "packstream.received-object:2"),  # fetching trees
    Kill("pull", "client", "packstream.received-object:8"),  # fetching contents
    Kill("pull", "client", "packstream.received-chunk:8"),
    Kill("pull", "client", "chunks.pack-before-rename"),
    Kill("pull", "client", "gitpack.before-idx"),
    Kill("pull", "client", "packstream.manifests-held:3"),  # contents (1, 2: trees, events)
    Kill("pull", "client", "pull.fetched"),
    Kill("pull", "client", "checkout.streamed-file:3"),  # files staged as blobs land
    Kill("pull", "client", "checkout.streamed-chunk:3"),  # chunked files as chunks land
    Kill("pull", "client", "checkout.staged"),
    Kill("pull", "client", "checkout.mid-promote"),
    Kill("pull", "client", "checkout.before-ref"),
    Kill("pull", "client", "pull.checked-out"),
    # pull, the cluster's usr dies
    Kill("pull", "server", "snapshot.before-ref"),  # its record before the pull
    Kill("pull", "server", "serve.want"),
    Kill("pull", "server", "serve.want:2"),
    Kill("pull", "server", "packstream.sent-object:2"),
    Kill("pull", "server", "packstream.sent-object:8"),
    Kill("pull", "server", "packstream.sent-chunk:8"),
    # bootstrap: the receiving side starts empty
    Kill("push", "server", "serve.have", bootstrap=True),
    Kill("push", "server", "packstream.received-chunk:20", bootstrap=True),
    Kill("push", "server", "checkout.streamed-file", bootstrap=True),
    Kill("push", "server", "gate.staged-check", bootstrap=True),
    Kill("push", "server", "checkout.mid-promote", bootstrap=True),
    Kill("pull", "client", "pull.negotiated", bootstrap=True),
    Kill("pull", "client", "packstream.received-chunk:20", bootstrap=True),
    Kill("pull", "client", "checkout.mid-promote", bootstrap=True),
    # a local remote: pipes to a subprocess instead of an SSH channel
    Kill("push", "server", "serve.received", kind="local"),
    Kill("push", "server", "checkout.streamed-file:2", kind="local"),
    Kill("push", "client", "push.mid-stream:8", kind="local"),
    Kill("pull", "server", "packstream.sent-chunk:8", kind="local"),
    Kill("pull", "client", "checkout.journal-written", kind="local"),
    Kill("pull", "client", "checkout.streamed-file:2", kind="local"),
    Kill("push", "server", "checkout.streamed-chunk:2", kind="local"),
]

SELECTED = sweep(KILLS, PER_RUN)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_template(tmp_path_factory.mktemp("crash-template"))


@pytest.mark.parametrize("case", SELECTED, ids=[c.id for c in SELECTED])
def test_killed_transfer_leaves_valid_copies_and_rerun_completes(
    case: Kill, template: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    kill_then_rerun(prepare_case(case, template, tmp_path, request), case)


def test_sweep_covers_every_sync_point_and_enough_kill_points(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The case list names every crash point the sync layer registers (each documented in
    docs/protocol.md), and 20+ distinct kills; the seeded windows together cover it."""
    import usr.store.checkout
    import usr.sync.client
    import usr.sync.engine
    import usr.sync.server  # noqa: F401 - registers the points
    from usr.faults import KNOWN_POINTS

    sync_points = {
        n for n in KNOWN_POINTS if n.split(".")[0] in ("push", "pull", "serve", "packstream")
    }
    named = {c.point.split(":")[0] for c in KILLS}
    assert sync_points <= named, sync_points - named
    documented = (Path(__file__).parents[1] / "docs" / "protocol.md").read_text()
    assert all(f"`{n}`" in documented for n in sync_points), "list it in docs/protocol.md"
    assert set(named) <= set(KNOWN_POINTS), set(named) - set(KNOWN_POINTS)
    assert len({c.id for c in KILLS}) == len(KILLS) >= 20
    monkeypatch.delenv("USR_FULL_SWEEP", raising=False)
    covered: set[str] = set()
    for seed in range(len(KILLS)):
        monkeypatch.setenv("USR_SWEEP_SEED", str(seed))
        window = sweep(KILLS, PER_RUN)
        assert len(window) == PER_RUN
        covered |= {c.id for c in window}
    assert covered == {c.id for c in KILLS}


def test_fsck_accepts_remote_states_known_only_by_their_trees(template: Path, tmp_path: Path):
    """``diff`` (and a pull cut after negotiation) moves the tracking ref to a remote state
    whose file contents are not fetched: fsck must not call that damage, yet still report
    a blob missing from a state a local ref holds."""
    from usr.sync import engine

    pair = prepare_pair("local", template, tmp_path, "pull")
    pair.configure().wait()
    options = engine.SyncOptions(remotes_config=str(pair.config))
    target = engine.resolve_target(pair.local_root, DS, options)
    assert engine.diff(target, REMOTE, options)["data"]["relation"] == "remote-ahead"
    store = open_store(pair.local_dir)
    assert store is not None
    tracked = store.head(f"refs/remotes/{REMOTE}/main")
    assert tracked != store.head()
    absent = [e for _, e, _ in store.ls_tree(tracked) if not store.has_object(e)]
    assert absent, "the diff fetched trees only"
    assert store.fsck() == []

    held = dict((path, e) for path, e, _ in store.ls_tree(store.head()))["meta.md"]
    _unpack(store)  # received objects are packed: make them loose, to remove just one
    (store.gitdir / "objects" / held[:2] / held[2:]).unlink()
    assert [p.id for p in open_store(pair.local_dir).fsck()] == [held]


def _unpack(store) -> None:
    """Every object of the store's git packs written loose, the packs deleted."""
    from usr.store import gitpack
    from usr.store.objects import OBJECT_TYPES

    pack_dir = store.gitdir / "objects" / "pack"
    objects = [
        store.read_object(oid)
        for name in gitpack.pack_names(pack_dir)
        for oid in gitpack.iter_pack_objects(pack_dir / f"{name}.idx")
    ]
    for name in gitpack.pack_names(pack_dir):
        (pack_dir / f"{name}.idx").unlink()
        (pack_dir / f"{name}.pack").unlink()
    odb = pygit2.Repository(str(store.gitdir)).odb  # libgit2 skips objects it has
    for kind, data in objects:
        odb.write(OBJECT_TYPES[kind], data)


@pytest.mark.parametrize("command", ["push", "pull"])
def test_staging_of_an_abandoned_target_is_removed(
    command: str, template: Path, tmp_path: Path, sshd
) -> None:
    """A checkout killed while staging, then a newer state to transfer instead: the rerun
    stages the new target, removes the old staging directory, and lands the newest files."""
    pair = prepare_pair("ssh", template, tmp_path, command, sshd)
    args = (command, DS, REMOTE, "-y")
    receiver = pair.remote_dir if command == "push" else pair.local_dir
    if command == "push":
        killed = pair.run(*args, server_fault="checkout.mid-stage:2")
        assert killed.returncode == TransportError.exit_code, killed.stderr
    else:
        killed = pair.run(*args, client_fault="checkout.mid-stage:2")
        assert killed.returncode == -signal.SIGKILL, killed.stderr
    abandoned = leftovers(receiver, ".usr-staging-")
    assert len(abandoned) == 1
    change_dataset(pair.local_root if command == "push" else pair.remote_root, seed=11)
    sender = pair.local_dir if command == "push" else pair.remote_dir
    newest = files_of(sender)

    again = pair.run(*args)
    assert again.returncode == 0, again.stderr
    assert not abandoned[0].exists()
    assert files_of(receiver) == files_of(sender) == newest
    for directory in (receiver, sender):
        store = open_store(directory)
        assert store is not None and store.fsck() == [] and store.verify_working() == []
    assert open_store(receiver).head() == open_store(sender).head()


CHAINS = {
    # the laptop dies mid-fetch, then its rerun dies mid-promotion
    "pull": ("client", ["packstream.received-chunk:8", "checkout.mid-promote"]),
    # the cluster dies with the objects in, then its rerun dies with the journal written
    "push": ("server", ["serve.received", "checkout.journal-written"]),
}


@pytest.mark.parametrize("command", sorted(CHAINS))
def test_rerun_killed_again_still_completes(
    command: str, template: Path, tmp_path: Path, sshd
) -> None:
    """A rerun can itself be killed at a later step: each kill leaves valid copies and the
    third run completes, whatever the first two left (sealed packs, a journal)."""
    pair = prepare_pair("ssh", template, tmp_path, command, sshd)
    sides = {"local": pair.local_dir, "remote": pair.remote_dir}
    before = {name: files_of(d) for name, d in sides.items()}
    commits = {name: reachable(open_store(d)) for name, d in sides.items()}
    target = before["local" if command == "push" else "remote"]
    args = (command, DS, REMOTE, "-y")
    side, points = CHAINS[command]
    for point in points:
        kill(pair, args, side, point)
        for name, directory in sides.items():
            check_after_kill(directory, before[name], target, commits[name])
    again = pair.run(*args)
    assert again.returncode == 0, again.stderr
    check_completed(pair, target, commits)
