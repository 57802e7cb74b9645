"""Presence of git objects asked of the backends directly (usr/store/presence.py): exact
answers for an object writer's own sealed packs through their ids, and a batch question
that sees every pack and loose object stored before it was asked."""

from __future__ import annotations

import random
from pathlib import Path

from usr.store import Store, gitpack, presence
from usr.store.objects import git_object_id
from usr.store.presence import SealedIds
from usr.sync import packstream


def _ids(rng: random.Random, n: int) -> list[bytes]:
    return [rng.randbytes(20) for _ in range(n)]


def test_sealed_ids_answer_exactly_even_where_the_filter_says_maybe() -> None:
    rng = random.Random(5)
    packs = [sorted(_ids(rng, n)) for n in (1, 7, 3000, 250)]
    sealed = SealedIds()
    assert "ab" * 20 not in sealed  # nothing sealed yet
    for ids in packs:
        sealed.add(b"".join(ids))
    members = [raw for ids in packs for raw in ids]
    assert all(raw.hex() in sealed for raw in members)
    # The same first six bytes (the filter's positions) with another tail: the filter
    # says maybe, and the sorted ids say no.
    near = [raw[:6] + bytes(b ^ 0xFF for b in raw[6:]) for raw in members[:500]]
    strangers = _ids(rng, 5000)
    assert not any(raw.hex() in sealed for raw in near + strangers)
    # Ids just below the smallest and above the largest of each pack.
    edges = [b"\x00" * 20, b"\xff" * 20, *(ids[0][:19] + b"\x00" for ids in packs)]
    assert not any(raw.hex() in sealed for raw in edges if raw not in members)


def _blob_ids(n: int, seed: int) -> list[tuple[str, bytes]]:
    out = []
    for i in range(n):
        data = f"presence {seed} {i}\n".encode()
        out.append((git_object_id("blob", data), data))
    return out


def test_lacking_sees_packs_and_loose_objects_stored_before_the_question(tmp_path: Path) -> None:
    """Objects stored by another handle after this store's odb listed its packs (packed
    and loose) count as present; the rest are returned in the order asked."""
    store = Store.open(tmp_path / "ds")
    assert not store.has_object("0" * 40)  # the odb has listed the (no) packs
    packed = _blob_ids(gitpack.UNPACK_LIMIT, seed=1)
    loose = _blob_ids(3, seed=2)
    absent = _blob_ids(5, seed=3)
    other = Store.open(store.path)
    with other.object_writer() as writer:
        for oid, data in packed:
            writer.add("blob", oid, data)
    for oid, data in loose:
        other.write_object("blob", data, expect=oid)
    assert len(gitpack.pack_names(store.gitdir / "objects" / "pack")) == 1
    asked = [absent[0][0], packed[7][0], *(oid for oid, _ in absent[1:]), loose[1][0]]
    assert packstream.lacking(store, asked) == [oid for oid, _ in absent]
    assert packstream.lacking(store, []) == []


def test_a_writer_that_sealed_many_packs_stores_each_object_once(tmp_path: Path) -> None:
    """Every object offered again after its pack was sealed, across many seals, is
    refused as stored: nothing is written twice."""
    store = Store.open(tmp_path / "ds")
    blobs = _blob_ids(600, seed=4)
    with store.object_writer() as writer:
        for i, (oid, data) in enumerate(blobs):
            assert writer.add("blob", oid, data)
            if i % 100 == 99:
                writer.seal()
        assert not any(writer.add("blob", oid, data) for oid, data in blobs)
        assert writer.written == len(blobs)
    assert len(gitpack.pack_names(store.gitdir / "objects" / "pack")) == 6
    assert store.fsck() == []


def test_a_store_with_no_object_is_known_empty_and_anything_stored_ends_that(
    tmp_path: Path,
) -> None:
    """A fresh store answers presence without libgit2 (a bootstrap's receive asks about
    every object); one loose object, one pack or an alternates file makes it ask again,
    so nothing stored is ever reported missing by a question asked after it."""
    store = Store.open(tmp_path / "ds")
    gitdir = str(store.gitdir)
    assert presence.holds_nothing(gitdir)  # what Store.open makes: the fast path is used
    blobs = _blob_ids(3, seed=6)
    assert packstream.lacking(store, [oid for oid, _ in blobs]) == [oid for oid, _ in blobs]

    loose = Store.open(tmp_path / "loose")
    loose.write_object("blob", blobs[0][1], expect=blobs[0][0])
    assert not presence.holds_nothing(str(loose.gitdir))
    assert packstream.lacking(loose, [blobs[0][0], blobs[1][0]]) == [blobs[1][0]]

    packed = Store.open(tmp_path / "packed")
    with packed.object_writer() as writer:
        for oid, data in _blob_ids(gitpack.UNPACK_LIMIT, seed=7):
            writer.add("blob", oid, data)
    assert not presence.holds_nothing(str(packed.gitdir))

    (store.gitdir / "objects" / "info" / "alternates").write_text(f"{loose.gitdir}/objects\n")
    assert not presence.holds_nothing(gitdir)
    assert not presence.holds_nothing(str(tmp_path / "no-such-store"))
