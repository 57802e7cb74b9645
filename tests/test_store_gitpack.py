"""Git object packs usr writes itself (usr/store/gitpack.py): written by a receive, read
back by libgit2 (same Repository object and a fresh one) and by the ``git`` CLI, kept
valid by a stream cut midway, checked by fsck, merged by gc without losing live objects."""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pygit2
import pytest

from usr.errors import TransportError
from usr.store import Store, gitpack
from usr.store.objects import OBJECT_TYPES, git_object_id
from usr.sync import packstream
from usr.sync import protocol as p

GIT = shutil.which("git")


def _frame(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">cI", kind, len(payload)) + payload


def _object_frame(type_name: str, data: bytes) -> tuple[str, bytes]:
    oid = git_object_id(type_name, data)
    code = OBJECT_TYPES[type_name]
    return oid, _frame(b"O", bytes([code]) + bytes.fromhex(oid) + data)


def _end() -> bytes:
    return _frame(b"J", json.dumps({"t": "end"}).encode())


def _blobs(n: int, seed: int = 0) -> list[bytes]:
    return [f"blob {seed} {i}\n".encode() * (i + 1) for i in range(n)]


def _receive(store: Store, stream: bytes) -> packstream.Received:
    fio = p.FrameIO(p.FileChannel(io.BytesIO(stream), io.BytesIO()), peer="test")
    return packstream.receive(store, fio, "test")


def _loose(store: Store) -> list[str]:
    objdir = store.gitdir / "objects"
    return [d.name + f.name for d in objdir.iterdir() if len(d.name) == 2 for f in d.iterdir()]


def _packs(store: Store) -> list[str]:
    return gitpack.pack_names(store.gitdir / "objects" / "pack")


def _git(store: Store, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [GIT, "-C", str(store.gitdir), *args], capture_output=True, text=True, check=False
    )


def _dataset(tmp_path: Path, files: int = gitpack.UNPACK_LIMIT + 20) -> Store:
    src = tmp_path / "src"
    (src / "_aux").mkdir(parents=True)
    for i in range(files):
        (src / f"_aux/f{i:03d}.txt").write_text(f"file {i}\n" * (i + 1))
    store = Store.open(src)
    store.record("import")
    return store


def test_received_objects_land_in_one_pack_that_libgit2_and_git_read(tmp_path: Path) -> None:
    src = _dataset(tmp_path)
    oids = src.missing_objects([src.head()], [])
    stream = b""
    for oid in oids:
        kind, data = src.read_object(oid)
        stream += _object_frame(kind, data)[1]
    dst = Store.open(tmp_path / "dst")
    got = _receive(dst, stream + _end())

    assert got.objects == len(oids) and _loose(dst) == [] and len(_packs(dst)) == 1
    for oid in oids:  # the same Store (and Repository) that wrote the pack, then a fresh one
        assert dst.read_object(oid) == src.read_object(oid)
    fresh = Store.open(dst.path)
    assert all(fresh.read_object(o) == src.read_object(o) for o in oids)
    dst.checkout(src.head(), expect_head=None)
    assert dst.verify_working() == [] and dst.fsck() == []
    if GIT is None:
        pytest.skip("git is not installed: the git CLI checks are skipped")
    shown = _git(dst, "cat-file", "-p", oids[0])
    assert shown.returncode == 0 and shown.stdout.encode() == src.read_object(oids[0])[1]
    checked = _git(dst, "fsck", "--strict", "--no-dangling")
    assert checked.returncode == 0, checked.stderr
    pack = dst.gitdir / "objects" / "pack" / f"{_packs(dst)[0]}.idx"
    assert _git(dst, "verify-pack", str(pack)).returncode == 0


def test_an_object_is_readable_right_after_its_pack_is_sealed(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "ds")
    data = b"sealed now\n"
    oid = git_object_id("blob", data)
    with store.object_writer() as writer:
        assert store.write_object("blob", data) == oid
        assert store.has_object(oid) and store.read_object(oid) == ("blob", data)
        assert not store.repo.odb.exists(oid)  # pending: only this writer knows it
        writer.seal()
        assert store.repo.odb.read(oid)[1] == data  # libgit2 refreshes on the miss
    assert pygit2.Repository(str(store.gitdir)).odb.read(oid)[1] == data


def test_a_writer_sees_packs_sealed_before_it_and_by_it_without_odb_refresh(
    tmp_path: Path,
) -> None:
    """The writer asks the odb's backends, which do not re-read the pack dir on a miss as
    ``odb.exists`` does: packs sealed before it (here by another process's store, after
    this one's odb listed its packs) and by itself mid-batch are still seen, so nothing
    is stored twice."""
    store = Store.open(tmp_path / "ds")
    assert not store.has_object("0" * 40)  # the odb has listed the (no) packs
    first, second = _blobs(gitpack.UNPACK_LIMIT, seed=1), _blobs(3, seed=2)
    with Store.open(store.path).object_writer() as writer:
        for data in first:
            assert writer.add("blob", git_object_id("blob", data), data)
    assert len(_packs(store)) == 1
    with store.object_writer() as writer:
        assert not any(writer.add("blob", git_object_id("blob", d), d) for d in first)
        assert writer.add("blob", git_object_id("blob", second[0]), second[0])
        writer.seal()  # mid-batch: its pack must count as stored from here on
        assert not writer.add("blob", git_object_id("blob", second[0]), second[0])
        assert writer.written == 1
    assert len(_packs(store)) == 2 and _loose(store) == [] and store.fsck() == []


def test_a_stream_cut_midway_keeps_what_arrived_and_a_rerun_completes(tmp_path: Path) -> None:
    frames = [_object_frame("blob", b) for b in _blobs(40)]
    store = Store.open(tmp_path / "ds")
    cut = b"".join(f for _, f in frames[:25]) + frames[25][1][:7]  # ends inside a frame
    with pytest.raises(TransportError):
        _receive(store, cut)
    fresh = Store.open(store.path)
    assert all(fresh.has_object(o) for o, _ in frames[:25]) and fresh.fsck() == []
    assert not any(fresh.has_object(o) for o, _ in frames[25:])
    assert not [n for n in os.listdir(store.gitdir / "objects/pack") if n.startswith(".usr-tmp")]

    again = _receive(fresh, b"".join(f for _, f in frames) + _end())
    assert again.objects == 15  # the 25 kept ones are skipped
    assert all(Store.open(store.path).has_object(o) for o, _ in frames)


@pytest.mark.parametrize("count", [1, gitpack.UNPACK_LIMIT - 1, gitpack.UNPACK_LIMIT])
def test_a_batch_under_the_unpack_limit_lands_loose_and_one_at_it_in_a_pack(
    tmp_path: Path, count: int
) -> None:
    store = Store.open(tmp_path / "ds")
    frames = [_object_frame("blob", b) for b in _blobs(count)]
    got = _receive(store, b"".join(f for _, f in frames) + _end())
    packed = count >= gitpack.UNPACK_LIMIT
    assert got.objects == count
    assert len(_packs(store)) == (1 if packed else 0)
    assert len(_loose(store)) == (0 if packed else count)
    fresh = Store.open(store.path)
    assert all(fresh.has_object(o) for o, _ in frames) and fresh.fsck() == []


def test_a_snapshot_of_many_new_files_writes_one_pack(tmp_path: Path) -> None:
    store = _dataset(tmp_path)
    assert len(_packs(store)) == 1
    blobs = [o for o in _loose(store) if store.read_object(o)[0] == "blob"]
    assert blobs == []  # every file's blob is in the pack
    assert store.verify_working() == [] and store.fsck() == []


def test_a_pack_without_its_idx_is_invisible_and_gc_removes_it(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "ds")
    (oid, _frame_bytes) = _object_frame("blob", b"orphan\n")
    with store.object_writer() as writer:
        store.write_object("blob", b"orphan\n")
        writer.seal()  # a pack, though one object alone would be written loose
    pack_dir = store.gitdir / "objects" / "pack"
    (name,) = _packs(store)
    (pack_dir / f"{name}.idx").unlink()  # as a crash between the two renames leaves it
    assert not Store.open(store.path).has_object(oid) and Store.open(store.path).fsck() == []
    Store.open(store.path).gc(prune_age=0)
    assert os.listdir(pack_dir) == []


def test_fsck_reports_a_damaged_object_pack(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "ds")
    blobs = _blobs(gitpack.UNPACK_LIMIT)
    _receive(store, b"".join(_object_frame("blob", b)[1] for b in blobs) + _end())
    (name,) = _packs(store)
    path = store.gitdir / "objects" / "pack" / f"{name}.pack"
    raw = bytearray(path.read_bytes())
    at = raw.index(blobs[10])  # stored blocks: the bytes are in the pack as they are
    raw[at] ^= 0x20
    path.chmod(0o644)
    path.write_bytes(bytes(raw))
    problems = Store.open(store.path).fsck()
    messages = [pr.message for pr in problems if pr.kind == "pack" and pr.id == name]
    assert any("pack checksum mismatch" in m for m in messages), problems
    assert any(git_object_id("blob", blobs[10]) in m for m in messages), problems


def test_gc_merges_packs_keeping_live_objects_and_dropping_dead_ones(tmp_path: Path) -> None:
    src = _dataset(tmp_path)
    dst = Store.open(tmp_path / "dst")
    live = src.missing_objects([src.head()], [])
    stream = b"".join(_object_frame(*src.read_object(o))[1] for o in live)
    _receive(dst, stream + _end())
    dead = [_object_frame("blob", b) for b in _blobs(gitpack.UNPACK_LIMIT, seed=9)]
    _receive(dst, b"".join(f for _, f in dead) + _end())
    dst.update_ref("refs/heads/main", src.head(), None)
    assert len(_packs(dst)) == 2

    young = dst.gc()  # default prune age: both packs are young, nothing moves
    assert young.packs_rewritten == 0 and len(_packs(dst)) == 2
    report = dst.gc(prune_age=0)
    assert report.packs_rewritten == 2 and report.objects_removed == len(dead)
    assert len(_packs(dst)) == 1
    # gc deflates what it rewrites: the merged pack is smaller than the live bytes, which a
    # receive's stored streams can never be.
    merged = (dst.gitdir / "objects" / "pack" / f"{_packs(dst)[0]}.pack").stat().st_size
    assert merged < sum(len(src.read_object(o)[1]) for o in live)
    for store in (dst, Store.open(dst.path)):  # the gc'd Store itself, and a fresh one
        assert all(store.read_object(o) == src.read_object(o) for o in live)
        assert not any(store.has_object(o) for o, _ in dead)
        assert store.fsck() == []
    assert dst.gc(prune_age=0).packs_rewritten == 0  # one pack, all live: left as it is
    if GIT is not None:
        assert _git(dst, "fsck", "--strict").returncode == 0


def test_pack_and_idx_bytes_follow_git_format() -> None:
    """The pieces a reimplementation needs: entry header varint, stored zlib, idx layout."""
    assert gitpack.object_header(3, 10) == bytes([0x3A])
    assert gitpack.object_header(1, 300) == bytes([0x9C, 0x12])
    import zlib

    for data in (b"", b"y" * 65_535, b"z" * 65_536, b"x" * 200_000):
        assert zlib.decompress(gitpack.stored_zlib(data)) == data
    raw = [(bytes([i]) * 20, i, 12 + i) for i in (200, 1, 3)]
    idx = gitpack.build_idx(raw, b"\x07" * 20)
    entries, pack_sha = gitpack.read_idx(idx, "test")
    assert pack_sha == b"\x07" * 20
    assert [e[0][:2] for e in entries] == ["01", "03", "c8"]
    assert struct.unpack_from(">I", idx, 8 + 4 * 2)[0] == 1  # fanout[2]: ids <= 0x02
    big = gitpack.build_idx([(b"\x01" * 20, 0, 1 << 33)], b"\x00" * 20)
    assert gitpack.read_idx(big, "big")[0][0][2] == 1 << 33
