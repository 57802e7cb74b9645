"""Sync with an object-store remote (``type = "s3"``) over a real SeaweedFS (``weed mini``,
tests/fixtures/s3server.py): push and pull bootstraps, diff, fast-forwards both ways, the
audit fields the runbooks query, racing pushes, wrong credentials and a missing bucket."""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path

import pytest
import tomli_w

from tests.conftest import run_usr
from tests.test_sync_scenarios import DS, files_of, head, make_dataset
from usr.dataset import Dataset
from usr.errors import AuthError, ConflictError, NotFoundError
from usr.store import Store
from usr.sync import engine
from usr.sync.engine import SyncOptions


class Laptop:
    """One machine's root and the remotes.toml whose ``s3`` remote is the bucket."""

    def __init__(self, root: Path, config: Path) -> None:
        self.root, self.config = root, config
        root.mkdir(parents=True, exist_ok=True)

    @property
    def dir(self) -> Path:
        return self.root / DS

    def opts(self, **kw) -> SyncOptions:
        return SyncOptions(remotes_config=str(self.config), **kw)

    def run(self, op: str, **kw) -> dict:
        target = engine.resolve_target(self.root, DS, self.opts())
        return getattr(engine, op)(target, "s3", self.opts(**kw))


@pytest.fixture
def s3env(s3server, tmp_path, monkeypatch):
    for key, value in s3server.env().items():
        monkeypatch.setenv(key, value)
    config = tmp_path / "remotes.toml"
    table = s3server.profile(prefix=f"t-{uuid.uuid4().hex[:8]}/datasets")
    config.write_text(tomli_w.dumps({"remotes": {"s3": table}}))
    config.chmod(0o600)
    return Laptop(tmp_path / "a", config), Laptop(tmp_path / "b", config)


def append(ds_dir: Path, seq: str) -> None:
    ds = Dataset.open(ds_dir.parent.parent, DS)
    ds.append_records([{"sequence": seq}], bio_type="dna", alphabet="dna_4")


def test_push_diff_pull_and_fast_forwards(s3env):
    a, b = s3env
    make_dataset(a.root)
    d = a.run("diff")["data"]
    assert d["relation"] == "remote-missing"

    doc = a.run("push")
    assert doc["data"]["transfer_state"] == "TRANSFERRED"
    assert doc["data"]["transfer"]["objects"] > 0
    assert doc["data"]["bytes_moved"]["sent"] > 0
    assert a.run("diff")["data"]["relation"] == "equal"
    assert a.run("push")["data"]["transfer_state"] == "NO-OP"

    d = b.run("diff")["data"]
    assert d["relation"] == "local-missing"
    assert not b.dir.exists()
    data = b.run("pull")["data"]
    assert data["transfer_state"] == "TRANSFERRED"
    assert data["primary"]["changed"] is True
    assert files_of(b.dir) == files_of(a.dir)
    assert head(b.dir) == head(a.dir)
    doc = b.run("pull")
    assert doc["data"]["transfer_state"] == "NO-OP" and not doc["changes"]["any"]

    # b -> bucket -> a
    append(b.dir, "AAAACCCCGG")
    assert b.run("push")["data"]["transfer_state"] == "TRANSFERRED"
    d = a.run("diff")["data"]
    assert d["relation"] == "remote-ahead"
    assert d["changes"]["primary"] and d["primary"]["changed"]
    doc = a.run("pull")
    assert doc["data"]["transfer_state"] == "TRANSFERRED"
    assert doc["data"]["primary"]["changed"] and doc["data"][".events.log"]["changed"]
    assert files_of(a.dir) == files_of(b.dir) and head(a.dir) == head(b.dir)
    assert Store.open(a.dir).head("refs/remotes/s3/main") == head(a.dir)

    # a -> bucket -> b
    append(a.dir, "TTTTGGGGCC")
    assert a.run("push")["data"]["transfer_state"] == "TRANSFERRED"
    data = b.run("pull")["data"]
    assert data["transfer_state"] == "TRANSFERRED"
    assert files_of(a.dir) == files_of(b.dir) and head(a.dir) == head(b.dir)


def test_large_file_goes_as_chunks_and_is_verified(s3env):
    a, b = s3env
    make_dataset(a.root)
    big = bytes(range(256)) * (4 << 12)  # 4 MiB, over the inline limit: a manifest
    (a.dir / "_derived").mkdir()
    (a.dir / "_derived" / "big.bin").write_bytes(big)
    a.run("push")
    b.run("pull")
    assert (b.dir / "_derived" / "big.bin").read_bytes() == big
    assert Store.open(b.dir).fsck() is not None


def test_push_behind_is_refused(s3env):
    a, b = s3env
    make_dataset(a.root)
    a.run("push")
    b.run("pull")
    append(b.dir, "AAAACCCCGG")
    b.run("push")
    append(a.dir, "TTTTGGGGCC")
    with pytest.raises(ConflictError):
        a.run("push")


def test_racing_pushes_exactly_one_wins(s3env):
    from usr import remotes
    from usr.sync.client import open_session

    a, b = s3env
    make_dataset(a.root)
    a.run("push")
    b.run("pull")
    append(a.dir, "AAAACCCCGG")
    append(b.dir, "TTTTGGGGCC")
    stores = {}
    for lap in (a, b):
        store = Store.open(lap.dir)
        store.record("race")
        stores[lap] = store
    profile = remotes.get("s3", a.config)
    sessions = {lap: open_session(profile) for lap in (a, b)}
    old = sessions[a].heads(DS)["head"]
    for s in sessions.values():
        s.heads(DS)
    barrier = threading.Barrier(2)
    outcome: dict = {}

    def push(lap):
        barrier.wait()
        try:
            sessions[lap].push(DS, stores[lap], stores[lap].head(), old)
            outcome[lap] = "won"
        except ConflictError as exc:
            outcome[lap] = exc.message

    threads = [threading.Thread(target=push, args=(lap,)) for lap in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(v == "won" for v in outcome.values()) == [False, True]
    (lost,) = [v for v in outcome.values() if v != "won"]
    assert "remote moved" in lost
    (winner,) = [lap for lap, v in outcome.items() if v == "won"]
    assert sessions[a].heads(DS)["head"] == stores[winner].head()


def test_wrong_credentials_and_missing_bucket(s3env, s3server, monkeypatch, tmp_path):
    a, _b = s3env
    make_dataset(a.root)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(AuthError):
        a.run("push")
    env = {**s3server.env(), "AWS_SECRET_ACCESS_KEY": "wrong", "USR_REMOTES_PATH": str(a.config)}
    r = run_usr("--root", str(a.root), "push", DS, "s3", "-y", env=env)
    assert r.returncode == 7, r.stderr
    assert r.stderr.count("\n") == 1 and "access denied" in r.stderr

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3server.secret_key)
    config = tmp_path / "nobucket.toml"
    table = s3server.profile(bucket="no-such-bucket")
    config.write_text(tomli_w.dumps({"remotes": {"s3": table}}))
    with pytest.raises(NotFoundError):
        engine.diff(
            engine.resolve_target(a.root, DS, SyncOptions()),
            "s3",
            SyncOptions(remotes_config=str(config)),
        )
    env = {**s3server.env(), "USR_REMOTES_PATH": str(config)}
    r = run_usr("--root", str(a.root), "diff", DS, "s3", "--format", "json", env=env)
    assert r.returncode == 4, r.stderr
    assert "does not exist" in r.stderr


def test_remotes_add_and_show_s3(tmp_path):
    config = tmp_path / "r.toml"
    r = run_usr(
        "remotes", "add", "lab", "--type", "s3", "--endpoint", "http://127.0.0.1:9",
        "--bucket", "b", "--prefix", "usr/data", "--access-key-env", "LAB_KEY",
        "--secret-key-env", "LAB_SECRET", "--remotes-config", str(config),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    r = run_usr("remotes", "show", "lab", "--format", "json", "--remotes-config", str(config))
    shown = json.loads(r.stdout)["data"]
    assert shown["type"] == "s3" and shown["bucket"] == "b" and shown["prefix"] == "usr/data"
    assert shown["access_key_env"] == "LAB_KEY" and "base_dir" not in shown
    assert "secret" not in config.read_text().replace("secret_key_env", "")


def prefix(laptop: Laptop) -> str:
    """The key prefix of the laptop's ``s3`` profile (where its datasets are)."""
    import tomllib

    return tomllib.loads(laptop.config.read_text())["remotes"]["s3"]["prefix"]


def test_gate_runs_before_the_ref_moves(s3env):
    from usr import remotes
    from usr.errors import VerifyError
    from usr.sync.client import open_session

    a, _b = s3env
    make_dataset(a.root)
    a.run("push")
    (a.dir / "records.parquet").write_bytes(b"not parquet")
    store = Store.open(a.dir)
    store.record("break it")
    with open_session(remotes.get("s3", a.config)) as session:
        old = session.heads(DS)["head"]
        with pytest.raises(VerifyError):
            session.push(DS, store, store.head(), old)
        assert session.heads(DS)["head"] == old
        log = session.log(DS)
        assert log[0]["id"] == old and log[0]["tree"] == session.working_tree(DS)


def test_a_damaged_pack_is_refused_before_anything_lands(s3env, s3server):
    a, b = s3env
    make_dataset(a.root)
    a.run("push")
    client = s3server.client()
    keys = client.list_objects_v2(Bucket=s3server.bucket, Prefix=f"{prefix(a)}/{DS}/packs/")
    (key,) = [o["Key"] for o in keys["Contents"]]
    body = bytearray(client.get_object(Bucket=s3server.bucket, Key=key)["Body"].read())
    body[-1] ^= 0xFF  # the last payload: a blob or chunk, found only when contents move
    client.put_object(Bucket=s3server.bucket, Key=key, Body=bytes(body))
    from usr.errors import VerifyError

    with pytest.raises(VerifyError):
        b.run("pull")
    assert head(b.dir) is None if (b.dir / ".usr").exists() else True
    assert not (b.dir / "records.parquet").exists()


def test_doctor_s3(s3env, s3server):
    a, _b = s3env
    env = {**s3server.env(), "USR_REMOTES_PATH": str(a.config)}
    r = run_usr("remotes", "doctor", "s3", "--format", "json", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    checks = {c["check"]: c["ok"] for c in json.loads(r.stdout)["data"]["checks"]}
    assert checks == {"credentials": True, "bucket": True, "conditional writes": True}
    r = run_usr("remotes", "doctor", "s3", env={**env, "AWS_SECRET_ACCESS_KEY": "x"})
    assert r.returncode == 7, r.stdout + r.stderr


def test_two_push_processes_race_one_wins_the_other_exits_8(s3env, s3server):
    import subprocess
    import sys

    from tests.conftest import REPO, usr_env

    a, b = s3env
    make_dataset(a.root)
    a.run("push")
    b.run("pull")
    append(a.dir, "AAAACCCCGG")
    append(b.dir, "TTTTGGGGCC")
    env = usr_env({**s3server.env(), "USR_REMOTES_PATH": str(a.config)})
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "usr", "--root", str(lap.root), "push", DS, "s3", "-y"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for lap in (a, b)
    ]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 8], results
    (loser,) = [err for code, err in results if code == 8]
    # Lost at the compare-and-swap, or started after the winner moved the ref.
    assert any(w in loser for w in ("remote moved", "newer states", "diverged")), loser
    assert loser.count("\n") == 1
    (winner,) = [lap for lap, (code, _) in zip((a, b), results, strict=True) if code == 0]
    from usr import remotes
    from usr.sync.client import open_session

    with open_session(remotes.get("s3", a.config)) as session:
        assert session.heads(DS)["head"] == head(winner.dir)


def test_plumbing_ls_remote_and_status_of_an_s3_remote(s3env, s3server):
    """The plumbing and status commands reach a bucket through the same session seam."""
    a, _ = s3env
    make_dataset(a.root)
    a.run("push")
    env = s3server.env()
    r = run_usr("plumbing", "ls-remote", "s3", DS, "--remotes-config", str(a.config), env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [head(a.dir), "refs/heads/main"]
    r = run_usr(
        "--root", str(a.root), "status", DS, "s3", "--remotes-config", str(a.config), env=env
    )
    assert r.returncode == 0, r.stderr
    assert "s3 (now" in r.stdout and "up-to-date" in r.stdout
