"""A bucket whose packs or index were damaged or removed behind usr's back: the pull stops
with one line and exit 5 (verify) before anything lands, and the local copy is as it was.
And a store that ignores conditional writes: doctor says so (simulated by a client whose
conditional PUTs always succeed; the SeaweedFS fixture enforces them)."""

from __future__ import annotations

import json
import random

import pytest

from tests import test_sync_s3 as base
from tests.conftest import run_usr
from tests.test_sync_s3 import prefix
from tests.test_sync_scenarios import DS, files_of, head, make_dataset
from usr.store import Store

s3env = base.s3env  # the fixture: two laptops and a fresh prefix of the bucket


def _two_states(a, b):
    """b holds the first state; the bucket holds a second one with a large new file."""
    make_dataset(a.root)
    a.run("push")
    b.run("pull")
    (a.dir / "_derived").mkdir()
    (a.dir / "_derived" / "big.bin").write_bytes(random.Random(5).randbytes(2 << 20))
    a.run("push")


def _newest(client, bucket: str, pre: str) -> str:
    got = client.list_objects_v2(Bucket=bucket, Prefix=pre)["Contents"]
    return max(got, key=lambda o: (o["LastModified"], o["Size"]))["Key"]


@pytest.mark.parametrize("damage", ["flip a byte of a pack", "remove a pack", "remove the index"])
def test_damaged_bucket_fails_one_line_exit_5_and_nothing_lost(s3env, s3server, damage):
    a, b = s3env
    _two_states(a, b)
    before, old = files_of(b.dir), head(b.dir)
    client, bucket = s3server.client(), s3server.bucket
    where = "index" if "index" in damage else "packs"
    key = _newest(client, bucket, f"{prefix(a)}/{DS}/{where}/")
    if damage.startswith("flip"):
        body = bytearray(client.get_object(Bucket=bucket, Key=key)["Body"].read())
        body[len(body) // 2] ^= 0xFF
        client.put_object(Bucket=bucket, Key=key, Body=bytes(body))
    else:
        client.delete_object(Bucket=bucket, Key=key)
    env = {**s3server.env(), "USR_REMOTES_PATH": str(b.config)}
    r = run_usr("--root", str(b.root), "pull", DS, "s3", "-y", env=env)
    assert r.returncode == 5, r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("usr: error: "), r.stderr
    assert files_of(b.dir) == before and head(b.dir) == old
    assert Store.open(b.dir).fsck() == []
    assert Store.open(b.dir).verify_working() == []


def test_doctor_fails_a_store_that_ignores_conditional_writes(s3env, monkeypatch):
    import obstore

    from porcelain import remotes as porcelain_remotes
    from usr import remotes

    a, _b = s3env
    real = obstore.put

    def unconditional(store, key, data, **kw):
        kw.pop("mode", None)  # what an emulator that ignores If-Match does
        return real(store, key, data, **kw)

    monkeypatch.setattr(obstore, "put", unconditional)
    report = porcelain_remotes.doctor(remotes.get("s3", a.config))
    checks = {c["check"]: c for c in report.checks}
    assert checks["bucket"]["ok"] and not checks["conditional writes"]["ok"]
    assert "ignores conditional writes" in checks["conditional writes"]["detail"]
    assert report.first_error.exit_code == 6
    json.dumps(report.checks)  # what --format json prints
