"""A push or pull against an object-store remote killed outright (SIGKILL at a named point,
``USR_FAULT_POINT``), then rerun: both sides stay valid and the rerun completes, sending
again only what had not landed (docs/reliability.md, "Crash safety").

After each kill: the local store passes fsck; the bucket's ref names either the state it
named before or the complete new state (a fresh laptop can pull it); packs a killed push
wrote stay unnamed until a rerun finds them by name and does not send them again.
"""

from __future__ import annotations

import json
import random
import signal
from pathlib import Path

import pytest

from tests import test_sync_s3 as base
from tests.conftest import run_usr
from tests.test_sync_s3 import Laptop, append, prefix
from tests.test_sync_scenarios import DS, files_of, head, make_dataset
from usr.store import Store

s3env = base.s3env  # the fixture: two laptops and a fresh prefix of the bucket

#: Small packs, so a few MiB of data make many of them.
PACK_LIMIT = 256 << 10


def _env(s3server, lap: Laptop, fault: str | None = None, **extra: str) -> dict[str, str]:
    env = {**s3server.env(), "USR_REMOTES_PATH": str(lap.config)}
    env["USR_S3_PACK_LIMIT"] = str(PACK_LIMIT)
    if fault:
        env["USR_FAULT_POINT"] = fault
    env.update(extra)
    return env


def _usr(s3server, lap: Laptop, op: str, fault: str | None = None, **extra: str):
    audit = lap.root.parent / f"audit-{lap.root.name}.json"
    args = ("--root", str(lap.root), op, DS, "s3", "-y", "--audit-json-out", str(audit))
    r = run_usr(*args, env=_env(s3server, lap, fault, **extra))
    if fault:
        assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr)
        return None
    assert r.returncode == 0, r.stderr
    return json.loads(audit.read_text())["data"]


def _big(lap: Laptop, name: str, size: int, seed: int) -> None:
    (lap.dir / "_derived").mkdir(exist_ok=True)
    (lap.dir / "_derived" / name).write_bytes(random.Random(seed).randbytes(size))


def _bucket_packs(s3server, lap: Laptop) -> dict[str, int]:
    client = s3server.client()
    got = client.list_objects_v2(Bucket=s3server.bucket, Prefix=f"{prefix(lap)}/{DS}/packs/")
    return {o["Key"].rsplit("/", 1)[-1]: o["Size"] for o in got.get("Contents", [])}


def _remote_head(lap: Laptop) -> str | None:
    from usr import remotes
    from usr.sync.client import open_session

    with open_session(remotes.get("s3", lap.config)) as session:
        return session.heads(DS)["head"]


def _sound(directory: Path) -> None:
    if (directory / ".usr").exists():
        assert Store.open(directory, create=False).fsck() == []


def _pulled_copy_matches(s3server, fresh: Laptop, source: Laptop) -> None:
    """The bucket's ref names a complete state: a fresh laptop pulls it whole."""
    _usr(s3server, fresh, "pull")
    assert files_of(fresh.dir) == files_of(source.dir)
    assert head(fresh.dir) == head(source.dir)
    _sound(fresh.dir)


@pytest.mark.parametrize("point", ["s3.pack-written:3", "s3.before-ref"])
def test_killed_bootstrap_push_resumes_without_resending(s3env, s3server, tmp_path, point):
    a, b = s3env
    make_dataset(a.root)
    _big(a, "big.bin", 3 << 20, seed=1)
    _usr(s3server, a, "push", fault=point)
    _sound(a.dir)
    assert _remote_head(a) is None  # nothing visible: the ref was never written
    landed = sum(_bucket_packs(s3server, a).values())
    assert landed > 0

    data = _usr(s3server, a, "push")
    assert data["transfer_state"] == "TRANSFERRED"
    total = sum(_bucket_packs(s3server, a).values())
    sent = data["bytes_moved"]["sent"]
    # The rerun sent the packs that had not landed, the index and the ref: no more.
    assert sent <= total - landed + (64 << 10), (sent, total, landed)
    if point == "s3.before-ref":
        assert sent < 2048  # every pack and the index were there: the ref alone moved
    assert _remote_head(a) == head(a.dir)
    assert Store.open(a.dir).head("refs/remotes/s3/main") == head(a.dir)
    _pulled_copy_matches(s3server, b, a)


@pytest.mark.parametrize("point", ["s3.pack-written:2", "s3.before-ref", "s3.ref-moved"])
def test_killed_fast_forward_push_leaves_old_or_new_ref(s3env, s3server, point):
    a, b = s3env
    make_dataset(a.root)
    _usr(s3server, a, "push")
    old = head(a.dir)
    append(a.dir, "AAAACCCCGG")
    _big(a, "more.bin", 2 << 20, seed=2)
    _usr(s3server, a, "push", fault=point)
    _sound(a.dir)
    local = Store.open(a.dir)
    new = local.head()
    assert new != old
    assert local.head("refs/remotes/s3/main") == old  # the tracking ref had not moved
    assert _remote_head(a) == (new if point == "s3.ref-moved" else old)

    data = _usr(s3server, a, "push")
    expect = "NO-OP" if point == "s3.ref-moved" else "TRANSFERRED"
    assert data["transfer_state"] == expect
    assert _remote_head(a) == new
    assert Store.open(a.dir).head("refs/remotes/s3/main") == new
    _pulled_copy_matches(s3server, b, a)


@pytest.mark.parametrize("point", ["s3.pack-read:2", "s3.chunks-landed"])
def test_killed_pull_leaves_a_sound_copy_and_rerun_completes(s3env, s3server, point):
    a, b = s3env
    make_dataset(a.root)
    _big(a, "big.bin", 3 << 20, seed=3)
    _usr(s3server, a, "push")
    _usr(s3server, b, "pull", fault=point)
    _sound(b.dir)
    assert not (b.dir / "_derived" / "big.bin").exists()
    _pulled_copy_matches(s3server, b, a)


def test_every_s3_point_is_killed_here_and_documented():
    import usr.sync.objsession  # noqa: F401 - registers the points
    from usr.faults import KNOWN_POINTS

    points = {n for n in KNOWN_POINTS if n.startswith("s3.")}
    source = Path(__file__).read_text()
    assert points and all(f'"{n}' in source for n in points), points
    documented = (Path(__file__).parents[1] / "docs" / "protocol.md").read_text()
    assert all(f"`{n}`" in documented for n in points)
