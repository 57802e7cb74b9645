"""Both sides walk their working files at once (docs/protocol.md, "Both sides walk at
once"): each side records from its own walk, made under its dataset lock, only while its
HEAD has not moved; a refusal on either side leaves the other side's history as it was.
Real stores, a real ``usr plumbing serve`` subprocess and the real sshd."""

from __future__ import annotations

import pytest

from tests.test_safety_gates import DAMAGE, fingerprint
from tests.test_sync_scenarios import DS, Env, head, make_dataset, make_env
from usr.errors import NotFoundError, VerifyError
from usr.store import Store
from usr.sync.client import RemoteSession
from usr.sync.target import scan_working


@pytest.fixture(params=["local", "ssh"])
def env(request, tmp_path) -> Env:
    return make_env(request.param, tmp_path, request)


def _note(directory, text: str) -> None:
    (directory / "_artifacts").mkdir(exist_ok=True)
    (directory / "_artifacts" / "note.txt").write_text(text)


def _tree_has(store: Store, commit: str, text: str) -> bool:
    blob = store.repo[commit].tree["_artifacts"]["note.txt"]  # type: ignore[index]
    return store.repo[blob.id].data == text.encode()


# -- the store ------------------------------------------------------------------------------


def test_a_record_takes_the_walk_made_while_head_stood_still(tmp_path):
    ds = make_dataset(tmp_path)
    store = Store.open(ds.path)
    store.record("first")
    _note(ds.path, "walked\n")
    scanned = scan_working(store, "test")
    _note(ds.path, "written after the walk\n")
    rec = store.record("from the walk", scanned=scanned)
    assert rec.created and _tree_has(store, rec.commit, "walked\n")
    # Nothing is lost: what changed after the walk is still there, and the next record has it.
    assert [c.path for c in store.status()] == ["_artifacts/note.txt"]
    assert _tree_has(store, store.record("next").commit, "written after the walk\n")


def test_a_walk_older_than_head_is_walked_again(tmp_path):
    ds = make_dataset(tmp_path)
    store = Store.open(ds.path)
    _note(ds.path, "one\n")
    scanned = scan_working(store, "test")
    _note(ds.path, "two\n")
    store.record("someone else recorded meanwhile")  # HEAD moved since the walk
    _note(ds.path, "three\n")
    rec = store.record("stale walk", scanned=scanned)
    assert _tree_has(store, rec.commit, "three\n") and store.status() == []


# -- the server keeps its own walk for one record -------------------------------------------


def _session(env: Env) -> RemoteSession:
    return RemoteSession.open("bu-scc", remotes_config=str(env.config))


def test_the_server_records_from_its_heads_walk_once(env):
    make_dataset(env.remote_root)
    remote = Store.open(env.remote_dir)
    remote.record("first")
    with _session(env) as session:
        _note(env.remote_dir, "walked\n")
        heads = session.heads(DS, scan="record")
        assert heads["tree"] == remote.working_tree()
        _note(env.remote_dir, "after\n")
        first = session.record(DS, "from the walk", scanned=True)
        assert first["created"] and _tree_has(remote, first["commit"], "walked\n")
        # The walk was used once: the next scanned record walks again.
        second = session.record(DS, "walk again", scanned=True)
    assert second["created"] and _tree_has(remote, second["commit"], "after\n")


def test_a_look_keeps_nothing_for_a_record(env):
    make_dataset(env.remote_root)
    remote = Store.open(env.remote_dir)
    remote.record("first")
    before = remote.head()
    with _session(env) as session:
        _note(env.remote_dir, "looked\n")
        heads = session.heads(DS, scan="look")
        assert heads["head"] == before and heads["tree"] == remote.working_tree()
        assert remote.head() == before  # a look records nothing
        _note(env.remote_dir, "later\n")
        rec = session.record(DS, "no walk kept", scanned=True)
    assert _tree_has(remote, rec["commit"], "later\n")


def test_heads_without_scan_walks_nothing(env):
    make_dataset(env.remote_root)
    Store.open(env.remote_dir).record("first")
    with _session(env) as session:
        assert session.heads(DS)["tree"] is None


# -- the operations ---------------------------------------------------------------------------


def test_both_sides_changed_then_push_and_pull_record_each_side(env):
    make_dataset(env.remote_root)
    env.pull()
    _note(env.local_dir, "laptop\n")
    data = env.push()
    assert data["relation"] == "local-ahead"
    assert (env.remote_dir / "_artifacts/note.txt").read_text() == "laptop\n"
    _note(env.remote_dir, "cluster\n")
    data = env.pull()
    assert data["relation"] == "remote-ahead"
    assert (env.local_dir / "_artifacts/note.txt").read_text() == "cluster\n"
    assert head(env.local_dir) == head(env.remote_dir)


def test_no_op_push_and_pull_record_nothing(env):
    make_dataset(env.remote_root)
    env.pull()
    heads = (head(env.local_dir), head(env.remote_dir))
    assert env.push()["relation"] == "equal"
    assert env.pull()["relation"] == "equal"
    assert (head(env.local_dir), head(env.remote_dir)) == heads


def test_a_diff_reads_both_unrecorded_sides(env):
    make_dataset(env.remote_root)
    env.pull()
    _note(env.local_dir, "laptop\n")
    _note(env.remote_dir, "cluster\n")
    before = fingerprint(env)
    data = env.diff()
    assert data["relation"] == "diverged"
    assert [f["path"] for f in data["files"]] == ["_artifacts/note.txt"]
    assert fingerprint(env) == before  # a diff records nothing on either side


def test_a_push_refused_here_leaves_the_remote_history_as_it_was(env):
    make_dataset(env.remote_root)
    env.pull()
    _note(env.remote_dir, "unrecorded there\n")  # walked by the remote, never recorded
    DAMAGE["truncated"][0](env.local_dir)
    before = fingerprint(env)
    with pytest.raises(VerifyError):
        env.push()
    assert fingerprint(env) == before


def test_a_pull_refused_there_leaves_the_local_history_as_it_was(env):
    make_dataset(env.remote_root)
    env.pull()
    _note(env.local_dir, "unrecorded here\n")  # walked here meanwhile, never recorded
    DAMAGE["duplicate-ids"][0](env.remote_dir)
    before = fingerprint(env)
    with pytest.raises(VerifyError):
        env.pull()
    assert fingerprint(env) == before


def test_a_pull_of_a_dataset_the_remote_never_recorded_records_nothing_here(env):
    make_dataset(env.local_root)
    Store.open(env.local_dir).record("first")
    _note(env.local_dir, "unrecorded here\n")
    before = fingerprint(env)
    with pytest.raises(NotFoundError):
        env.pull()
    assert fingerprint(env) == before
