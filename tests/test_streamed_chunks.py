"""Streamed chunked files (usr/store/chunkstage.py): with manifests first, the receiver
writes a large file's working copy into the staging dir as its chunks land, and the
checkout renames that very file into place. Nothing unverified is promoted: a wrong
chunk, a manifest whose whole-file hash lies, or a changed base only cost the fallback,
and a refused stream leaves the working copy as it was.

In-process tests feed the real receive loop the frames a manifests-first push sends;
end-to-end tests run the CLI over a ``local`` remote and the real sshd fixture."""

from __future__ import annotations

import io
import os
import shutil
import sys
from pathlib import Path

import pytest
import tomli_w

from tests.conftest import recorded_dataset, run_usr
from usr.errors import VerifyError
from usr.store import Store, chunkstage
from usr.store.chunks import chunk_id
from usr.store.objects import Manifest
from usr.store.streamstage import StreamStager
from usr.sync import packstream, pushplan, refupdate
from usr.sync import protocol as p

BIG = "_artifacts/big.bin"


@pytest.fixture(autouse=True)
def small_reuse(monkeypatch: pytest.MonkeyPatch) -> None:
    """A shared prefix of 256 KiB is worth copying here (8 MiB by default)."""
    monkeypatch.setattr(chunkstage, "REUSE_MIN", 256 << 10)


def _write(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def _states(tmp_path: Path, size: int = 3 << 20) -> tuple[Store, str, str]:
    """A store with ``first`` (a chunked file, a small one) and ``second`` (the chunked
    file with 1 MiB appended, a second copy of it, the small file edited)."""
    src = tmp_path / "src"
    big = os.urandom(size)
    _write(src, {BIG: big, "meta.md": b"v1\n"})
    store = Store.open(src)
    first = store.record("first").commit
    grown = big + os.urandom(1 << 20)
    _write(src, {BIG: grown, "_artifacts/copy.bin": grown, "meta.md": b"v2\n"})
    second = store.record("second").commit
    return store, first, second


def _stream(src: Store, dst: Store, new: str, old: str | None, corrupt: bool = False) -> bytes:
    """The frames a manifests-first push of ``new`` sends to ``dst``: commits and trees,
    then each blob, a manifest before the chunks ``dst`` lacks, then ``end``.
    ``corrupt``: the last chunk's bytes are altered (its id kept)."""
    return _frames(src, dst, new, old, corrupt)[0]


def _frames(
    src: Store, dst: Store, new: str, old: str | None, corrupt: bool = False
) -> tuple[bytes, list[str]]:
    """:func:`_stream`, and the ids of the chunks it sends."""
    oids = [o for o in src.missing_objects([new], [old] if old else []) if not dst.has_object(o)]
    plan = pushplan.plan_push(src, oids, None)
    lacking = set(dst.chunks.missing(plan.cids()))
    out = io.BytesIO()
    fio = p.FrameIO(p.FileChannel(io.BytesIO(), out), peer="test")
    sent: list[str] = []
    for oid in plan.trees_first(oids):
        packstream.send_objects(src, fio, [oid])
        for cid in plan.chunks_of.get(oid, []):
            if cid in lacking and cid not in sent:
                data = src.chunks.get(cid)
                if corrupt and cid == plan.cids()[-1]:
                    data = bytes([data[0] ^ 0xFF]) + data[1:]  # b"X" + ... was a no-op 1 in 256
                fio.send_chunk(cid, data)
                sent.append(cid)
    fio.send_message("end")
    fio.flush()
    return out.getvalue(), sent


def _receive(dst: Store, stream: bytes, tree: str | None = None) -> StreamStager:
    stager = StreamStager(dst, tree, chunked=True)
    fio = p.FrameIO(p.FileChannel(io.BytesIO(stream), io.BytesIO()), peer="test")
    try:
        packstream.receive(dst, fio, "test", stage=stager, manifests_first=True)
    except BaseException:
        stager.discard()
        raise
    return stager


def _staged(dst: Store, tree: str) -> dict[str, int]:
    top = dst.path / f".usr-staging-{tree[:16]}"
    return {f.relative_to(top).as_posix(): f.stat().st_ino for f in top.rglob("*") if f.is_file()}


def _push(src: Store, dst: Store, new: str, old: str | None) -> dict[str, int]:
    """Receive and check out one push; returns the staged files by inode."""
    stager = _receive(dst, _stream(src, dst, new, old))
    staged = stager.result()
    assert staged is not None
    inodes = _staged(dst, staged.tree)
    assert len(staged.files) == len(inodes)  # every staged file is claimed (verified)
    refupdate.update_and_checkout(dst, new, old, validate=False, staged=staged)
    return inodes


def test_streamed_chunked_files_are_the_files_promoted(tmp_path: Path) -> None:
    src, first, second = _states(tmp_path)
    dst = Store.open(tmp_path / "dst")
    inodes = _push(src, dst, first, None)
    assert BIG in inodes
    for rel, ino in inodes.items():
        assert (dst.path / rel).stat().st_ino == ino, f"{rel} was written again"
    assert dst.verify_working() == []  # every file hashes to the first state's entry
    inodes = _push(src, dst, second, first)
    assert {BIG, "_artifacts/copy.bin", "meta.md"} <= set(inodes)
    for rel, ino in inodes.items():
        assert (dst.path / rel).stat().st_ino == ino, f"{rel} was written again"
        assert (dst.path / rel).read_bytes() == (src.path / rel).read_bytes()
    assert dst.verify_working() == []
    assert not list(dst.path.glob(".usr-staging-*"))


def test_chunks_shared_with_the_old_file_are_not_sent_and_the_prefix_is_copied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, first, second = _states(tmp_path)
    dst = Store.open(tmp_path / "dst")
    _push(src, dst, first, None)
    copied: list[int] = []
    real = chunkstage._copy_range

    def spy(a: int, b: int, length: int) -> bool:
        copied.append(length)
        return real(a, b, length)

    monkeypatch.setattr(chunkstage, "_copy_range", spy)
    stream, sent = _frames(src, dst, second, first)
    old = Manifest.decode(_blob(dst, first, BIG)).chunks
    new = Manifest.decode(_blob(src, second, BIG)).chunks
    shared = 0
    for a, b in zip(old, new, strict=False):
        if a != b:
            break
        shared += a[1]
    assert shared >= 2 << 20
    assert sent and {c for c, _ in old}.isdisjoint(sent)  # no chunk of the old file again
    inodes = _push_stream(dst, stream, second, first)
    assert copied == [shared]  # once: the copy of the same content reuses nothing old
    assert (dst.path / BIG).stat().st_ino == inodes[BIG]
    assert (dst.path / BIG).read_bytes() == (src.path / BIG).read_bytes()


def _blob(store: Store, commit: str, rel: str) -> bytes:
    entry = {path: oid for path, oid, _ in store.ls_tree(commit)}[rel]
    return store.read_object(entry)[1]


def _push_stream(dst: Store, stream: bytes, new: str, old: str | None) -> dict[str, int]:
    staged = _receive(dst, stream).result()
    assert staged is not None
    inodes = _staged(dst, staged.tree)
    refupdate.update_and_checkout(dst, new, old, validate=False, staged=staged)
    return inodes


def test_a_base_changed_behind_the_store_is_not_trusted(tmp_path: Path) -> None:
    """The prefix copied from the working file is hashed with the rest: a base whose
    bytes changed (same size, same stat cache entry is not needed) fails the whole-file
    check, the file is not claimed, and the checkout writes it from the store."""
    src, first, second = _states(tmp_path)
    dst = Store.open(tmp_path / "dst")
    _push(src, dst, first, None)
    work = dst.path / BIG
    data = bytearray(work.read_bytes())
    data[1000] ^= 0xFF
    stat = work.stat()
    work.write_bytes(bytes(data))
    os.utime(work, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    stager = _receive(dst, _stream(src, dst, second, first))
    staged = stager.result()
    assert staged is not None
    assert BIG not in _staged(dst, staged.tree)  # refused and removed, not claimed
    assert "_artifacts/copy.bin" in _staged(dst, staged.tree)


def test_a_corrupted_chunk_is_refused_and_the_working_copy_stays(tmp_path: Path) -> None:
    src, first, second = _states(tmp_path)
    dst = Store.open(tmp_path / "dst")
    _push(src, dst, first, None)
    before = (dst.path / BIG).read_bytes()
    ino = (dst.path / BIG).stat().st_ino
    with pytest.raises(VerifyError, match="hash differently"):
        _receive(dst, _stream(src, dst, second, first, corrupt=True))
    assert (dst.path / BIG).read_bytes() == before
    assert (dst.path / BIG).stat().st_ino == ino
    assert dst.head() == first
    assert not list(dst.path.glob(".usr-staging-*"))
    assert dst.verify_working() == []


def test_a_manifest_whose_whole_hash_lies_is_never_staged(tmp_path: Path) -> None:
    """Every chunk verifies, the whole does not: the file is removed, nothing claimed."""
    store = Store.open(tmp_path / "dst")
    top = tmp_path / "dst" / ".usr-staging-test"
    top.mkdir()
    pieces = [os.urandom(70_000), os.urandom(50_000)]
    chunks = tuple((chunk_id(d), len(d)) for d in pieces)
    lie = Manifest(size=120_000, blake3=chunk_id(b"something else"), chunks=chunks)
    files: set[bytes] = set()
    stager = chunkstage.ChunkStager(store, str(top), files, None)
    stager.on_manifest(lie.encode(), [("f.bin", 0o100644)])
    for (cid, _), data in zip(chunks, pieces, strict=True):
        stager.on_chunk(cid, data)
    stager.finish()
    assert not files and not (top / "f.bin").exists()
    # A chunk of another length than its manifest claims is refused as well.
    short = Manifest(size=120_000, blake3=lie.blake3, chunks=((chunks[0][0], 70_001), chunks[1]))
    stager.on_manifest(short.encode(), [("g.bin", 0o100644)])
    stager.on_chunk(chunks[0][0], pieces[0])
    assert not (top / "g.bin").exists()


def test_open_files_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chunkstage, "MAX_OPEN", 2)
    store = Store.open(tmp_path / "dst")
    top = tmp_path / "dst" / ".usr-staging-test"
    top.mkdir()
    data = os.urandom(40_000)
    man = Manifest(size=len(data), blake3=chunk_id(data), chunks=((chunk_id(data), len(data)),))
    files: set[bytes] = set()
    stager = chunkstage.ChunkStager(store, str(top), files, None)
    stager.on_manifest(man.encode(), [(f"f{i}.bin", 0o100644) for i in range(5)])
    assert sorted(f.name for f in top.iterdir()) == ["f0.bin", "f1.bin"]
    stager.on_chunk(chunk_id(data), data)
    assert len(files) == 2 and (top / "f1.bin").read_bytes() == data


# -- end to end: the CLI over a local remote and over sshd -----------------------------------


def _pair(tmp_path: Path, kind: str, request: pytest.FixtureRequest, fault: str = "") -> Path:
    """remotes.toml for remote ``bu`` (base dir ``tmp_path/cluster``); ``fault`` arms a
    crash point in the server."""
    remote = tmp_path / "cluster"
    remote.mkdir(exist_ok=True)
    env = f"env USR_FAULT_POINT={fault} " if fault else ""
    config = tmp_path / "remotes.toml"
    if kind == "ssh":
        sshd = request.getfixturevalue("sshd")
        table = sshd.profile(remote, remote_usr=f"{env}{sshd.remote_usr}")
    else:
        table = {
            "type": "local",
            "base_dir": str(remote),
            "remote_usr": f"{env}{sys.executable} -m usr",
        }
    config.write_text(tomli_w.dumps({"remotes": {"bu": table}}))
    config.chmod(0o600)
    return config


def _usr(root: Path, config: Path, *args: str, **env: str):
    return run_usr("--root", str(root), *args, env={"USR_REMOTES_PATH": str(config), **env})


@pytest.mark.parametrize("kind", ["local", "ssh"])
def test_push_and_pull_stream_chunked_files_and_the_capability_off_matches(
    tmp_path: Path, kind: str, request: pytest.FixtureRequest
) -> None:
    """With the capability the server stages the big file from the stream (a server
    armed at checkout.streamed-chunk dies there); with USR_MANIFEST_FIRST=0 the same push
    takes the old path (the armed server never reaches the point) and lands the same
    bytes; a rerun after the kill completes; a pull streams into the client's staging."""
    laptop = tmp_path / "laptop"
    ds = recorded_dataset(laptop, "ds", {BIG: os.urandom(3 << 20)})
    armed = _pair(tmp_path, kind, request, fault="checkout.streamed-chunk:3")
    killed = _usr(laptop, armed, "push", "ds", "bu", "-y")
    assert killed.returncode == 6, killed.stderr  # the server died mid-stream
    staging = list((tmp_path / "cluster" / "ds").glob(".usr-staging-*"))
    assert staging and (staging[0] / BIG).is_file()
    ok = _usr(laptop, _pair(tmp_path, kind, request), "push", "ds", "bu", "-y")
    assert ok.returncode == 0, ok.stderr
    remote_big = tmp_path / "cluster" / "ds" / BIG
    assert remote_big.read_bytes() == (ds.path / BIG).read_bytes()

    with (ds.path / BIG).open("ab") as fh:
        fh.write(os.urandom(1 << 20))
    off = _usr(laptop, armed, "push", "ds", "bu", "-y", USR_MANIFEST_FIRST="0")
    assert off.returncode == 0, off.stderr  # the old order: nothing streamed, no kill
    assert remote_big.read_bytes() == (ds.path / BIG).read_bytes()
    assert Store.open(tmp_path / "cluster" / "ds").verify_working() == []

    other = tmp_path / "other"
    other.mkdir()
    pulled = _usr(other, _pair(tmp_path, kind, request), "pull", "ds", "bu", "-y")
    assert pulled.returncode == 0, pulled.stderr
    assert (other / "ds" / BIG).read_bytes() == (ds.path / BIG).read_bytes()
    shutil.rmtree(other)
    other.mkdir()
    died = _usr(
        other,
        _pair(tmp_path, kind, request),
        "pull",
        "ds",
        "bu",
        "-y",
        USR_FAULT_POINT="checkout.streamed-chunk:2",
    )
    assert died.returncode == -9, died.stderr
    again = _usr(other, _pair(tmp_path, kind, request), "pull", "ds", "bu", "-y")
    assert again.returncode == 0, again.stderr
    assert (other / "ds" / BIG).read_bytes() == (ds.path / BIG).read_bytes()
    assert not list((other / "ds").glob(".usr-staging-*"))
