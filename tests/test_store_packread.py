"""Objects read straight from the packs for sending (usr/store/packread.py): the bytes
libgit2 reads, in the order asked, from usr's stored packs, deflated gc packs, loose
objects and a git tool's delta pack; a corrupt packed object is refused, never sent."""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import pytest

from usr.errors import VerifyError
from usr.store import Store, gitpack
from usr.store.objects import git_object_id
from usr.store.packread import BATCH, PackedObjects
from usr.sync import packstream


def _blobs(n: int, seed: int, size: int = 40) -> dict[str, bytes]:
    rng = random.Random(seed)
    out = {}
    for i in range(n):
        data = f"{seed}/{i}:".encode() + rng.randbytes(size)
        out[git_object_id("blob", data)] = data
    return out


def _pack(store: Store, blobs: dict[str, bytes], level: int | None = None) -> None:
    builder = gitpack.PackBuilder(store.gitdir / "objects" / "pack", level=level)
    for oid, data in blobs.items():
        builder.add("blob", oid, data)
    builder.seal()


def _read(store: Store, oids: list[str]) -> list[tuple[str, str, bytes]]:
    return list(packstream.read_many_for_send(store, oids))


def test_objects_of_every_kind_of_pack_and_loose_read_as_libgit2_reads_them(
    tmp_path: Path,
) -> None:
    store = Store.open(tmp_path / "ds")
    stored = _blobs(BATCH + 30, seed=1)  # more than one batch of lookups
    big = {git_object_id("blob", b := random.Random(2).randbytes(200_000)): b}  # blocks
    empty = {git_object_id("blob", b""): b""}
    deflated = _blobs(50, seed=3)
    loose = _blobs(4, seed=4)
    _pack(store, {**stored, **big, **empty})
    _pack(store, deflated, level=gitpack.GC_LEVEL)
    for oid, data in loose.items():
        store.write_object("blob", data, expect=oid)
    everything = {**stored, **big, **empty, **deflated, **loose}
    order = list(everything)
    random.Random(5).shuffle(order)
    assert _read(store, order) == [(oid, "blob", everything[oid]) for oid in order]
    assert _read(store, []) == []
    found = PackedObjects(store.gitdir / "objects" / "pack").locate(
        [bytes.fromhex(o) for o in [*loose, *stored]]
    )
    assert found[: len(loose)] == [None] * len(loose)  # loose: left to libgit2
    assert all(where is not None for where in found[len(loose) :])


def test_a_corrupt_packed_object_is_refused(tmp_path: Path) -> None:
    """The same length, other bytes: the pack's structure is intact and only the hash of
    the object says it is not the one its id names."""
    store = Store.open(tmp_path / "ds")
    blobs = _blobs(200, seed=6)
    _pack(store, blobs)
    victim = list(blobs)[120]
    (pack,) = (store.gitdir / "objects" / "pack").glob("*.pack")
    raw = bytearray(pack.read_bytes())
    at = raw.find(blobs[victim])
    raw[at + 3] ^= 0xFF
    pack.chmod(0o644)
    pack.write_bytes(bytes(raw))
    got = packstream.read_many_for_send(store, list(blobs))
    with pytest.raises(VerifyError, match=f"object {victim} is corrupt"):
        for oid, _kind, data in got:
            assert data == blobs[oid]  # those before it are whole


@pytest.mark.skipif(shutil.which("git") is None, reason="needs the git command")
def test_a_git_tools_delta_pack_is_read_through_libgit2(tmp_path: Path) -> None:
    """``git repack`` stores near-identical blobs as deltas: this reader leaves them to
    libgit2, and every object still reads whole."""
    store = Store.open(tmp_path / "ds")
    base = random.Random(7).randbytes(20_000)
    blobs = {}
    for i in range(20):
        data = base[: 1000 * i] + f"edit {i}".encode() + base[1000 * i :]
        blobs[git_object_id("blob", data)] = data
    for oid, data in blobs.items():
        store.write_object("blob", data, expect=oid)
    git = ["git", "--git-dir", str(store.gitdir)]
    prefix = str(store.gitdir / "objects" / "pack" / "pack")
    wanted = "".join(f"{oid}\n" for oid in blobs)
    subprocess.run([*git, "pack-objects", "-q", prefix], input=wanted, text=True, check=True)
    idx = [str(p) for p in (store.gitdir / "objects" / "pack").glob("*.idx")]
    out = subprocess.run([*git, "verify-pack", "-v", *idx], capture_output=True, text=True)
    assert "chain length" in out.stdout  # git stored some of them as deltas
    store = Store.open(store.path)  # a handle that sees the new pack
    assert _read(store, list(blobs)) == [(oid, "blob", data) for oid, data in blobs.items()]


def test_reading_a_pack_whole_does_not_grow_resident_memory_with_it(tmp_path: Path) -> None:
    """Entries are read with ``pread``, not through a mapping of the pack, whose every page
    read would count as resident: a child reading 188 MiB of packed objects grows by far
    less than that (it grew by the bytes read when the pack was mapped: 292 MiB for
    300 MB of 10 KB objects)."""
    import sys

    store = Store.open(tmp_path / "ds")
    rng = random.Random(8)
    blobs = {}
    for _ in range(96 * 100):  # small files' blobs, each one stored block
        data = rng.randbytes(10_000) + bytes(10_486)
        blobs[git_object_id("blob", data)] = data
    _pack(store, blobs)
    # The child's peak is reset before it reads (a child's ru_maxrss starts from its
    # parent's at the fork), then read from /proc: VmHWM, in KiB.
    child = f"""
import sys
from usr.store import Store
from usr.sync import packstream

def kib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1])

store = Store.open({str(store.path)!r})
oids = sys.stdin.read().split()
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")
before = kib("VmRSS:")
n = sum(len(data) for _oid, _kind, data in packstream.read_many_for_send(store, oids))
print(n, (kib("VmHWM:") - before) // 1024)
"""
    out = subprocess.run(
        [sys.executable, "-c", child], input="\n".join(blobs), capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    total, grown_mib = map(int, out.stdout.split())
    assert total == 96 * 100 * 20_486
    assert grown_mib < 32, f"resident memory grew by {grown_mib} MiB reading 188 MiB"


def test_a_pack_that_cannot_be_read_is_left_to_libgit2_and_closes_once(tmp_path: Path) -> None:
    """An idx whose pack is not a git pack is skipped (libgit2 reads what it can), and the
    descriptor it opened is closed once: a second close, when the half-made reader is
    collected, would close whatever file had been given that number meanwhile."""
    import os

    from usr.store import packread

    store = Store.open(tmp_path / "ds")
    _pack(store, _blobs(150, seed=9))
    pack_dir = store.gitdir / "objects" / "pack"
    (pack,) = pack_dir.glob("*.pack")
    pack.chmod(0o644)
    pack.write_bytes(b"JUNK" + pack.read_bytes()[4:])
    assert PackedObjects(pack_dir).packs == []
    with pytest.raises(ValueError, match="not a git pack") as caught:
        packread._Pack(next(pack_dir.glob("*.idx")))
    half = caught.tb.tb_next.tb_frame.f_locals["self"]  # the reader that failed
    caught = None  # type: ignore[assignment]
    keep = os.open(tmp_path, os.O_RDONLY)  # the lowest free number: the one it closed
    try:
        del half  # collected here
        os.fstat(keep)  # still open: the reader did not close it a second time
    finally:
        os.close(keep)


def test_a_held_reader_is_kept_while_the_packs_are_the_same(tmp_path: Path) -> None:
    """A server's session holds one reader for all its fetch requests: ``current`` gives
    the same reader while the pack dir lists the same idx files, and a new one, which
    finds the new pack's objects in place, once another pack is there."""
    store = Store.open(tmp_path / "ds")
    first = _blobs(10, seed=7)
    _pack(store, first)
    held = packstream.packed_objects(store)
    assert held.current() is held
    later = _blobs(10, seed=8)
    _pack(store, later)
    fresh = held.current()
    assert fresh is not held and fresh.current() is fresh
    raws = [bytes.fromhex(o) for o in later]
    assert all(where is None for where in held.locate(raws))
    assert all(where is not None for where in fresh.locate(raws))
    order = [*first, *later]
    got = list(packstream.read_many_for_send(store, order, fresh))
    assert got == [(oid, "blob", {**first, **later}[oid]) for oid in order]
