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

    def counted(self: p.FrameIO, t: str, **fields: Any) -> None:
        name = t
        if t == "get":
            name = "get-objects" if fields.get("oids") else "get-chunks"
        if name in ("have", "get-objects", "get-chunks"):
            seen[name] += 1
            assert len(fields.get("oids", [])) <= BATCH and len(fields.get("cids", [])) <= BATCH
        send(self, t, **fields)

    monkeypatch.setattr(p.FrameIO, "send_message", counted)
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
    # `get` of objects; ~18 chunks: 3 or more `get` of chunks.
    assert seen["have"] >= 7, seen
    assert seen["get-objects"] >= 7, seen
    assert seen["get-chunks"] >= 3, seen


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
