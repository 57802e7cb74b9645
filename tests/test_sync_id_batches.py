"""Push negotiation (``have``) and fetch requests (``get``) name at most ``MAX_IDS`` ids
each: a push or pull of more objects or chunks than one batch goes in several requests,
over a ``local`` remote and the sshd fixture, and ends complete (issue "Scale: a million
files per dataset in bounded memory").

``$USR_MAX_IDS`` lowers the batch a client sends, so a few dozen files and one chunked
file make several batches of objects and of chunks.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from tests.conftest import recorded_dataset
from usr.errors import TransportError
from usr.store import Store
from usr.sync import engine, options, pushplan
from usr.sync import protocol as p

DS = "batch_ds"
BATCH = 7


def _files() -> dict[str, bytes]:
    rng = random.Random(23)
    files = {
        f"_aux/d{d}/f{f:02d}.txt": f"{d}/{f}\n".encode() * 3 for d in range(4) for f in range(9)
    }
    files["_aux/big.bin"] = rng.randbytes(1_200_000)  # a manifest of ~18 chunks
    return files


def test_batches_keep_order_and_size(monkeypatch: pytest.MonkeyPatch) -> None:
    assert list(p.batches(range(5), 2)) == [[0, 1], [2, 3], [4]]
    assert list(p.batches([], 2)) == []
    monkeypatch.setenv(p.MAX_IDS_ENV, "3")
    assert p.batch_size() == 3
    assert [len(b) for b in p.batches(range(7))] == [3, 3, 1]
    monkeypatch.setenv(p.MAX_IDS_ENV, str(10 * p.MAX_IDS))
    assert p.batch_size() == p.MAX_IDS  # never more than a server accepts


def test_a_request_naming_more_than_max_ids_is_refused() -> None:
    oid = "ab" * 20
    assert len(p.id_list({"oids": [oid] * p.MAX_IDS}, "oids", "peer", p.check_oid)) == p.MAX_IDS
    with pytest.raises(TransportError, match="more than"):
        p.id_list({"oids": [oid] * (p.MAX_IDS + 1)}, "oids", "peer", p.check_oid)
    with pytest.raises(TransportError, match="more than"):
        p.id_list({"cids": ["cd" * 32] * (p.MAX_IDS + 1)}, "cids", "peer", p.check_cid)


def test_the_push_plan_holds_no_per_blob_set(tmp_path: Path) -> None:
    """The plan keeps the commits and trees apart (a few per directory), not the blobs,
    and each object as a raw id and a size in two arrays (no map of hex ids)."""
    ds = recorded_dataset(tmp_path / "laptop", DS, _files())
    store = Store.open(ds.path)
    head = store.head()
    oids = store.missing_objects([head], [])
    plan = pushplan.plan_push(store, oids, None)
    assert list(plan.oids()) == oids and len(plan.ids) == 20 * len(oids)
    assert plan.sizes.typecode == "Q" and len(plan.sizes) == len(oids)
    assert [plan.sizes[i] for i in range(len(oids))] == [store.repo.odb.read_header(o)[1]
                                                        for o in oids]  # fmt: skip
    blobs = [o for o in plan.oids() if plan.is_blob(o)]
    assert len(blobs) >= 37 and len(plan.others) < 12
    assert not hasattr(plan, "blobs")
    assert plan.trees_first(plan.oids())[: len(plan.others)] == [
        o for o in plan.oids() if o in plan.others
    ]
    everything = bytearray(b"\x01") * len(plan)
    order = [plan.oid(i) for i in plan.sending_order(everything)]
    assert order == plan.trees_first(oids)
    some = bytearray(len(plan))
    some[0] = some[-1] = 1  # a blob first, the commit last
    assert [plan.oid(i) for i in plan.sending_order(some)] == [oids[-1], oids[0]]
    assert plan.total(some, []) == plan.sizes[0] + plan.sizes[len(plan) - 1]


def _count_requests(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Count the requests a client sends, by type (``get`` of objects / of chunks apart)."""
    seen: Counter[str] = Counter()
    send = p.FrameIO.send_message

    read = p.FrameIO.read_message

    def counted(self: p.FrameIO, t: str, **fields: Any) -> None:
        name = t
        if t == "get":
            name = "get-objects" if fields.get("oids") else "get-chunks"
        if name in ("have", "get-objects", "get-chunks"):
            seen[name] += 1
            assert len(fields.get("oids", [])) <= BATCH and len(fields.get("cids", [])) <= BATCH
        if t == "want":
            seen["want"] += 1
            assert fields["batch"] == BATCH
        send(self, t, **fields)

    def pieces(self: p.FrameIO, expect: str | None = None) -> dict[str, Any]:
        msg = read(self, expect)
        if msg["t"] == "objects":  # a piece of a listing, read by the client
            seen["objects"] += 1
            seen["objects-more"] += msg["more"] is True
            seen["listed"] += len(msg["oids"]) + len(msg["sizes"])
            assert len(msg["oids"]) <= BATCH and len(msg["sizes"]) <= BATCH
        return msg

    monkeypatch.setattr(p.FrameIO, "send_message", counted)
    monkeypatch.setattr(p.FrameIO, "read_message", pieces)
    return seen


def _round_trip(tmp_path: Path, table: dict, monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    monkeypatch.setenv(p.MAX_IDS_ENV, str(BATCH))
    files = _files()
    recorded_dataset(tmp_path / "laptop", DS, files)
    remote = tmp_path / "remote"
    remote.mkdir()
    config = tmp_path / "remotes.toml"
    config.write_text(tomli_w.dumps({"remotes": {"far": {**table, "base_dir": str(remote)}}}))
    config.chmod(0o600)
    opts = options.SyncOptions(remotes_config=str(config))
    seen = _count_requests(monkeypatch)
    engine.push(engine.resolve_target(tmp_path / "laptop", DS, opts), "far", opts)
    pulled = tmp_path / "pulled"
    pulled.mkdir()
    engine.pull(engine.resolve_target(pulled, DS, opts), "far", opts)
    for root in (remote / DS, pulled / DS):
        for rel, data in files.items():
            assert (root / rel).read_bytes() == data, (root, rel)
        store = Store.open(root, create=False)
        assert store.fsck() == [] and store.verify_working() == []
    return seen


def _check_batched(seen: Counter[str]) -> None:
    # ~40 blobs, ~8 trees, the commit and the ledger's objects: 7 or more `have`, as many
    # `get` of objects; ~18 chunks: 3 or more `get` of chunks. The pull's listings (its
    # trees with every blob's size, then the contents) come in 7 or more pieces, each
    # `want` answered by pieces that all but the last say there is more.
    assert seen["have"] >= 7, seen
    assert seen["get-objects"] >= 7, seen
    assert seen["get-chunks"] >= 3, seen
    assert seen["want"] >= 2 and seen["listed"] >= 7 * BATCH, seen
    assert seen["objects"] >= 7 and seen["objects-more"] == seen["objects"] - seen["want"], seen


def test_push_and_pull_in_batches_over_a_local_remote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _check_batched(_round_trip(tmp_path, {"type": "local"}, monkeypatch))


def test_push_and_pull_in_batches_over_ssh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sshd
) -> None:
    _check_batched(_round_trip(tmp_path, sshd.profile(tmp_path / "remote"), monkeypatch))


def test_an_empty_push_still_sends_one_have(monkeypatch: pytest.MonkeyPatch) -> None:
    """At least one ``have`` (it creates the remote dataset directory), even with nothing
    to offer."""
    from usr.sync.pushing import _id_batches

    assert list(_id_batches(pushplan.PushPlan())) == [([], [])]
    plan = pushplan.PushPlan(chunk_sizes={"x": 1})
    for c in "0123456789":
        plan.add(c * 40, 1)
    monkeypatch.setenv(p.MAX_IDS_ENV, "4")
    assert [(len(o), len(c)) for o, c in _id_batches(plan)] == [(4, 1), (4, 0), (2, 0)]
    assert [o for o, _ in _id_batches(plan)][1] == [c * 40 for c in "4567"]


def test_pieces_of_a_listing_keep_order_and_bound() -> None:
    """The server's ``objects`` reply in pieces of at most ``batch`` ids and sizes, in
    order, the last saying there is no more; one whole reply for a client without batch."""
    from usr.store.revlist import Listed
    from usr.sync import listing

    five = Listed()
    for c in "abcde":
        five.append(bytes.fromhex(c * 40), "blob")
    found = {"listed": five, "sizes": {"x": 1, "y": 2}}
    parts = list(listing.batched(found, 2))
    assert [q["oids"] for q in parts] == [["a" * 40, "b" * 40], ["c" * 40, "d" * 40], ["e" * 40]]
    assert [q["types"] for q in parts] == [["blob"] * 2, ["blob"] * 2, ["blob"]]
    assert [q["sizes"] for q in parts] == [{"x": 1, "y": 2}, {}, {}]
    assert [q["more"] for q in parts] == [True, True, False]
    sizes_only = {"listed": Listed(), "sizes": {str(i): i for i in range(5)}}
    assert [len(q["sizes"]) for q in listing.batched(sizes_only, 2)] == [2, 2, 1]
    assert list(listing.batched({"listed": Listed(), "sizes": {}}, 2)) == [
        {"oids": [], "types": [], "sizes": {}, "more": False}
    ]
    (whole,) = listing.batched(found, None)  # no "more": the whole listing
    assert whole == {
        "oids": [c * 40 for c in "abcde"],
        "types": ["blob"] * 5,
        "sizes": found["sizes"],
    }
    assert [o for o, _ in five.without("blob")] == []


def _local_session(tmp_path: Path) -> Any:
    from usr.sync import client

    recorded_dataset(tmp_path / "remote", DS, _files())
    config = tmp_path / "remotes.toml"
    table = {"type": "local", "base_dir": str(tmp_path / "remote")}
    config.write_text(tomli_w.dumps({"remotes": {"far": table}}))
    config.chmod(0o600)
    return client.open_session("far", str(config))


@pytest.mark.parametrize(
    "fields",
    [
        {"haves": ["ab" * 20] * (p.MAX_IDS + 1)},
        {"wants": ["ab" * 20] * (p.MAX_IDS + 1)},
        {"batch": p.MAX_IDS + 1},
        {"batch": 0},
        {"batch": True},
    ],
    ids=["haves", "wants", "batch-too-big", "batch-zero", "batch-bool"],
)
def test_the_server_refuses_an_over_long_want(tmp_path: Path, fields: dict[str, Any]) -> None:
    """``wants``/``haves`` of more than MAX_IDS ids, or a batch outside 1..MAX_IDS, is
    refused before any listing is made, with one line."""
    with _local_session(tmp_path) as session:
        head = session.heads(DS)["head"]
        request = {"ds": DS, "wants": [head], "haves": [], "blobs": True, "batch": 2, **fields}
        with pytest.raises(TransportError) as refused:
            session._request("want", "objects", **request)
    message = str(refused.value.message)
    assert "\n" not in message and len(message) < 200, message
    assert "more than 65536" in message or "not 1 to 65536" in message, message


def test_a_client_refuses_a_piece_longer_than_its_batch() -> None:
    from usr.sync.fetching import _check_part

    assert _check_part({"oids": ["a"] * 3, "sizes": {}}, 2, "peer") is None  # whole listing
    assert _check_part({"oids": ["a"] * 2, "sizes": {"b": 1}, "more": True}, 2, "peer")
    with pytest.raises(TransportError, match="more than 2 ids"):
        _check_part({"oids": ["a"] * 3, "sizes": {}, "more": True}, 2, "peer")
    with pytest.raises(TransportError, match="more than 2 ids"):
        _check_part({"oids": [], "sizes": dict.fromkeys("abc", 1), "more": False}, 2, "peer")
    with pytest.raises(TransportError, match="more is"):
        _check_part({"oids": [], "sizes": {}, "more": "yes"}, 2, "peer")


def test_a_tree_fetch_in_pieces_keeps_sizes_by_raw_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A listing of every blob's size, in pieces of BATCH: each size arrives once, keyed
    by its raw 20-byte id (what ``trees.Sizes`` keeps, adopted without a copy)."""
    from usr.sync.trees import Sizes

    monkeypatch.setenv(p.MAX_IDS_ENV, str(BATCH))
    here = Store.open(tmp_path / "here")
    with _local_session(tmp_path) as session:
        head = session.heads(DS)["head"]
        stats = session.fetch_trees(DS, here, [head])
    there = Store.open(tmp_path / "remote" / DS, create=False)
    blobs = {c.new_id: c.new_size for c in there.diff(None, head)}
    assert len(blobs) > 3 * BATCH
    assert all(type(k) is bytes and len(k) == 20 for k in stats.sizes)
    assert {k.hex(): v for k, v in stats.sizes.items()} == blobs
    sizes = Sizes(here)
    sizes.add(stats)
    assert sizes.known is stats.sizes


def test_a_listing_makes_its_sizes_as_the_pieces_go() -> None:
    """Sizes given as ``(id, size)`` pairs are read only as far as each piece needs (the
    server never holds a map of every blob), in pieces of at most ``batch``, with ``more``
    true until the pairs and the ids are both spent."""
    from usr.store.revlist import Listed
    from usr.sync import listing

    read: list[int] = []

    def pairs() -> Any:
        for i in range(5):
            read.append(i)
            yield f"{i:040x}", i

    three = Listed()
    for c in "abc":
        three.append(bytes.fromhex(c * 40), "tree")
    parts = listing.batched({"listed": three, "sizes": pairs()}, 2)
    first = next(parts)
    assert first["sizes"] == {f"{0:040x}": 0, f"{1:040x}": 1} and first["more"] is True
    assert read == [0, 1, 2]  # one pair looked ahead, to know there is more
    rest = list(parts)
    assert [len(q["oids"]) for q in rest] == [1, 0]
    assert [q["more"] for q in rest] == [True, False]
    merged = {k: v for q in [first, *rest] for k, v in q["sizes"].items()}
    assert merged == {f"{i:040x}": i for i in range(5)}
    (whole,) = listing.batched({"listed": three, "sizes": pairs()}, None)
    assert whole["sizes"] == merged and "more" not in whole


def test_stat_cache_sizes_are_found_in_and_out_of_order(tmp_path: Path) -> None:
    """The stat cache's sizes by entry id (what a bootstrap's comparison, plan and tree
    listing size files from): the same as the store's whatever the order asked, a file
    named at two paths included; an id no row names (a tree) is None."""
    from usr.sync.trees import CachedSizes, Sizes

    files = {f"_aux/d{d}/f{f:02d}.txt": b"x" * (d * 10 + f) for d in range(3) for f in range(5)}
    files["_aux/d1/same.txt"] = files["_aux/d0/f03.txt"]
    ds = recorded_dataset(tmp_path / "a", DS, files)
    store = Store.open(ds.path)
    changes = list(store.diff(None, store.head()))
    cached = CachedSizes(store)
    assert len(cached) == len(changes) and cached.sizes.itemsize == 8
    for change in [*changes, *reversed(changes), *changes[::3]]:
        assert cached.get(bytes.fromhex(change.new_id)) == change.new_size
    assert cached.get(bytes.fromhex(store.tree_of(store.head()))) is None
    sizes = Sizes(store)
    sizes.SEED_AFTER = 0  # load the cache on the first miss
    plan_view = sizes.seeded()
    assert plan_view.get(changes[-1].new_id) == changes[-1].new_size
    assert sizes.known == {} and sizes.cached is not None  # sized from the rows, not copied
    assert len(plan_view) == len(changes)
    assert plan_view.get(store.tree_of(store.head()), -1) == -1


def test_a_fetch_in_batches_writes_its_objects_through_one_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batches of one fetch share an object writer: 150 files asked for 20 at a time
    land in one pack, where a writer a batch stored each batch on its own (here: loose,
    each under the unpack limit; at scale, small packs that every lookup searched)."""
    from usr.store import gitpack
    from usr.store.objects import git_object_id

    monkeypatch.setenv(p.MAX_IDS_ENV, "20")
    files = {f"_aux/d{i % 5}/f{i:03d}.txt": f"file {i}\n".encode() for i in range(150)}
    recorded_dataset(tmp_path / "laptop", DS, files)
    remote = tmp_path / "remote"
    remote.mkdir()
    config = tmp_path / "remotes.toml"
    config.write_text(
        tomli_w.dumps({"remotes": {"far": {"type": "local", "base_dir": str(remote)}}})
    )
    config.chmod(0o600)
    opts = options.SyncOptions(remotes_config=str(config))
    engine.push(engine.resolve_target(tmp_path / "laptop", DS, opts), "far", opts)
    pulled = tmp_path / "pulled"
    pulled.mkdir()
    engine.pull(engine.resolve_target(pulled, DS, opts), "far", opts)
    store = Store.open(pulled / DS, create=False)
    pack_dir = store.gitdir / "objects" / "pack"
    blobs = {git_object_id("blob", data) for data in files.values()}
    holding = [
        name
        for name in gitpack.pack_names(pack_dir)
        if blobs & set(gitpack.iter_pack_objects(pack_dir / f"{name}.idx"))
    ]
    assert len(holding) == 1, holding
    assert blobs <= set(gitpack.iter_pack_objects(pack_dir / f"{holding[0]}.idx"))
    assert store.fsck() == [] and store.verify_working() == []
