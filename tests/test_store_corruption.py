"""A corrupt chunk or object is found by fsck and by every read, named by path and id."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import pytest

from tests.conftest import run_usr
from usr.errors import VerifyError
from usr.store import Store
from usr.store.chunks import read_pack_index


def _dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Store, str, str]:
    monkeypatch.setenv("USR_INLINE_LIMIT", "4096")
    ds = tmp_path / "root" / "ds"
    ds.mkdir(parents=True)
    (ds / "records.parquet").write_bytes(os.urandom(300_000))
    (ds / "meta.md").write_bytes(b"# meta\n")
    store = Store.open(ds)
    first = store.record("import").commit
    (ds / "meta.md").write_bytes(b"# meta, edited\n")
    second = store.record("snapshot").commit
    return store, first, second


def _flip(path: Path, offset: int) -> None:
    os.chmod(path, 0o644)
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0xFF]))


def test_corrupt_packed_chunk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, first, _ = _dataset(tmp_path, monkeypatch)
    [pack] = store.chunks.pack_names()
    pack_path = store.chunks.packs_dir / f"{pack}.pack"
    cid, offset, length = read_pack_index(pack_path)[2]
    _flip(pack_path, offset + length // 2)
    fresh = Store.open(store.path)
    problems = fresh.fsck()
    assert [(p.kind, p.id, p.path) for p in problems if p.kind == "chunk"] == [
        ("chunk", cid, "records.parquet")
    ]
    with pytest.raises(VerifyError, match=cid):
        fresh.chunks.get(cid)
    (store.path / "records.parquet").write_bytes(b"changed")
    fresh.record("snapshot")
    with pytest.raises(VerifyError, match=f"records.parquet.*{cid}"):
        fresh.checkout(first)
    assert (store.path / "records.parquet").read_bytes() == b"changed"  # nothing promoted
    result = run_usr("--root", str(tmp_path / "root"), "fsck", "ds")
    assert result.returncode == 5
    assert cid in result.stdout and "records.parquet" in result.stdout
    assert result.stderr.startswith("usr: error: fsck found")


def test_corrupt_loose_object(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, _, second = _dataset(tmp_path, monkeypatch)
    oid = dict((p, o) for p, o, _ in store.ls_tree(second))["meta.md"]
    path = store.gitdir / "objects" / oid[:2] / oid[2:]
    os.chmod(path, 0o644)
    path.write_bytes(zlib.compress(b"blob 15\x00# meta, EDITED\n"))  # well-formed, wrong bytes
    fresh = Store.open(store.path)
    problems = fresh.fsck()
    assert [(p.kind, p.id, p.path) for p in problems] == [("object", oid, "meta.md")]
    with pytest.raises(VerifyError, match=oid):
        fresh.read_object(oid)
    with pytest.raises(VerifyError, match=oid):
        b"".join(fresh.open_entry(oid, "meta.md"))


def test_corrupt_loose_chunk(tmp_path: Path) -> None:
    ds = tmp_path / "ds"
    store = Store.open(ds)
    data = os.urandom(1000)
    from usr.store.chunks import chunk_id

    cid = chunk_id(data)
    assert store.chunks.put(cid, data) and not store.chunks.put(cid, data)
    _flip(store.chunks.loose_dir / cid[:2] / cid, 10)
    with pytest.raises(VerifyError, match=f"{cid}.*corrupt"):
        store.chunks.get(cid)
