"""What a sync does with the store API: copy missing objects and chunks one by one into an
empty dataset, move its ref, check out — then gc packs the loose chunks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from usr.store import Store


def _copy(src: Store, dst: Store, wants: list[str], haves: list[str]) -> int:
    oids = src.missing_objects(wants, haves)
    for oid in oids:
        kind, data = src.read_object(oid)
        dst.write_object(kind, data, expect=oid)
    blobs = [o for o in oids if src.read_object(o)[0] == "blob"]
    cids = dst.chunks.missing(src.chunk_ids(blobs))
    for cid in cids:
        dst.chunks.put(cid, src.chunks.get(cid))
    return len(cids)


def test_bootstrap_copy_checkout_and_repack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("USR_INLINE_LIMIT", "4096")
    a = tmp_path / "laptop"
    (a / "_aux").mkdir(parents=True)
    for i in range(20):
        (a / f"_aux/part-{i:03d}.bin").write_bytes(os.urandom(5000))  # one chunk each
    (a / "meta.md").write_bytes(b"# shared\n")
    src = Store.open(a)
    first = src.record("import").commit

    dst = Store.open(tmp_path / "cluster")  # created empty, like a bootstrap push
    assert _copy(src, dst, [first], []) == 20
    dst.checkout(first, expect_head=None)
    assert dst.head() == first and dst.verify_working() == []
    assert (tmp_path / "cluster/_aux/part-007.bin").read_bytes() == (
        a / "_aux/part-007.bin"
    ).read_bytes()

    (a / "_aux/part-001.bin").write_bytes(os.urandom(5000))
    second = src.record("snapshot").commit
    assert _copy(src, dst, [second], [first]) == 1  # only the new chunk moves
    dst.checkout(second, expect_head=first)  # ref CAS and files in one locked step

    assert len(list(dst.chunks.loose_ids())) == 21
    dst.gc(prune_age=0, repack_min=16)
    assert list(dst.chunks.loose_ids()) == [] and len(dst.chunks.pack_names()) == 1
    assert Store.open(dst.path).fsck() == []
    assert dst.verify_working(second) == []


def test_a_settled_chunk_store_looks_at_the_packs_once(tmp_path: Path) -> None:
    """Within ``settled`` (every writer's block) a chunk not found is not looked for
    again in packs another process wrote meanwhile: it is stored twice at worst, both
    valid. Outside, a miss looks again, so that pack's chunks are found."""
    from usr.store.chunks import ChunkStore, chunk_id

    (tmp_path / "ds").mkdir()
    here = Store.open(tmp_path / "ds").chunks
    other = ChunkStore(here.directory)  # another process's view of the same store
    old, new = os.urandom(4096), os.urandom(4096)
    with other.writer() as w:
        w.add(chunk_id(old), old)
    with here.writer() as writer:
        assert here.has(chunk_id(old))  # packs on disk at the start are seen
        with other.writer() as w:
            w.add(chunk_id(new), new)
        assert not here.has(chunk_id(new))  # written meanwhile: not looked for
        assert writer.add(chunk_id(new), new)  # so stored again (sealed with the block)
    assert here.get(chunk_id(new)) == new
    assert ChunkStore(here.directory).get(chunk_id(new)) == new
    fresh = ChunkStore(here.directory)
    with other.writer() as w:
        w.add(chunk_id(b"x" * 5000), b"x" * 5000)
    assert fresh.has(chunk_id(b"x" * 5000))  # outside a settled block a miss looks again
    assert here.missing([chunk_id(old), chunk_id(b"y" * 10)]) == [chunk_id(b"y" * 10)]
