"""Large packs against an object-store remote: multipart uploads from the threshold
(lowered here through ``USR_S3_MULTIPART_THRESHOLD``) and the progress meter of uploads and
downloads (forced with ``USR_PROGRESS=1``; redrawn at every update with ``INTERVAL = 0``)."""

from __future__ import annotations

import random

from tests import test_sync_s3 as base
from tests.test_sync_s3 import prefix
from tests.test_sync_scenarios import DS, files_of, head, make_dataset

s3env = base.s3env  # the fixture: two laptops and a fresh prefix of the bucket


def test_a_pack_over_the_threshold_goes_in_parts_and_reads_back(s3env, s3server, monkeypatch):
    import usr.progress

    a, b = s3env
    monkeypatch.setenv("USR_S3_MULTIPART_THRESHOLD", str(1 << 20))
    make_dataset(a.root)
    big = random.Random(7).randbytes(10 << 20)
    (a.dir / "_derived").mkdir()
    (a.dir / "_derived" / "big.bin").write_bytes(big)
    a.run("push")
    client = s3server.client()
    got = client.list_objects_v2(Bucket=s3server.bucket, Prefix=f"{prefix(a)}/{DS}/packs/")
    (key,) = [o["Key"] for o in got["Contents"]]
    etag = client.head_object(Bucket=s3server.bucket, Key=key)["ETag"].strip('"')
    assert etag.endswith("-2"), etag  # two parts of 8 MiB at most: a multipart upload

    monkeypatch.setattr(usr.progress, "INTERVAL", 0.0)
    monkeypatch.setenv("USR_PROGRESS", "1")
    b.run("pull")
    assert (b.dir / "_derived" / "big.bin").read_bytes() == big
    assert files_of(b.dir) == files_of(a.dir) and head(b.dir) == head(a.dir)


def test_progress_of_push_and_pull_on_stderr_only_when_asked(s3env, monkeypatch, capfd):
    import usr.progress

    a, b = s3env
    monkeypatch.setattr(usr.progress, "INTERVAL", 0.0)
    make_dataset(a.root)
    (a.dir / "_derived").mkdir()
    (a.dir / "_derived" / "big.bin").write_bytes(random.Random(8).randbytes(3 << 20))
    monkeypatch.setenv("USR_PROGRESS", "0")
    a.run("push")
    assert "push remote s3:" not in capfd.readouterr().err

    monkeypatch.setenv("USR_PROGRESS", "1")
    (a.dir / "_derived" / "more.bin").write_bytes(random.Random(9).randbytes(2 << 20))
    a.run("push")
    err = capfd.readouterr().err
    assert "\rpush remote s3: " in err and "MiB" in err and "\r\x1b[K" in err
    b.run("pull")
    err = capfd.readouterr().err
    assert "\rpull remote s3: " in err and "MiB" in err
