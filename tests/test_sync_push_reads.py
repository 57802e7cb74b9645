"""A push reads each object once (libgit2 verifies it as it reads), and a blob taken for
plain bytes by its size that is a manifest after all still lands with its chunks. Real
stores, a real ``usr plumbing serve`` subprocess (a ``local`` remote)."""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest
import tomli_w

from tests.conftest import recorded_dataset
from usr.errors import VerifyError
from usr.store import Store
from usr.store.objects import MAGIC
from usr.sync import engine, listing, packstream, pushplan
from usr.sync.client import RemoteSession
from usr.sync.engine import SyncOptions

DS = "ns/reads"


def _remote_config(tmp_path: Path) -> tuple[Path, Path]:
    base = tmp_path / "remote"
    base.mkdir()
    config = tmp_path / "remotes.toml"
    config.write_text(tomli_w.dumps({"remotes": {"loc": {"type": "local", "base_dir": str(base)}}}))
    config.chmod(0o600)
    return base, config


def _corrupt(store: Store, oid: str, data: bytes) -> None:
    """Replace a loose object's bytes with other (well-formed) bytes of the same type."""
    obj = store.path / ".usr" / "objects" / oid[:2] / oid[2:]
    obj.chmod(0o644)
    obj.write_bytes(zlib.compress(b"blob %d\x00" % len(data) + data))


def test_reading_to_send_refuses_a_corrupt_object(tmp_path):
    """libgit2 hashes what it reads (strict verification, its default): the one read of an
    object to send it is also its check, so a corrupt local object never leaves."""
    ds = recorded_dataset(tmp_path / "local", DS, {"_auxiliary/a.txt": b"alpha\n"})
    store = Store.open(ds.path)
    (entry,) = [c for c in store.diff(None, store.head()) if c.path == "_auxiliary/a.txt"]
    assert packstream.read_for_send(store, entry.new_id) == ("blob", b"alpha\n")
    _corrupt(store, entry.new_id, b"alphA\n")
    with pytest.raises(VerifyError, match="corrupt"):
        packstream.read_for_send(store, entry.new_id)


def test_push_of_a_corrupt_object_fails_and_moves_nothing(tmp_path):
    base, config = _remote_config(tmp_path)
    ds = recorded_dataset(tmp_path / "local", DS, {"_auxiliary/a.txt": b"alpha\n"})
    store = Store.open(ds.path)
    (entry,) = [c for c in store.diff(None, store.head()) if c.path == "_auxiliary/a.txt"]
    _corrupt(store, entry.new_id, b"alphA\n")
    opts = SyncOptions(remotes_config=str(config))
    with pytest.raises(VerifyError):
        engine.push(engine.resolve_target(tmp_path / "local", DS, opts), "loc", opts)
    remote = base / DS
    assert not (remote / ".usr").exists() or Store.open(remote, create=False).head() is None


def test_a_manifest_taken_for_plain_bytes_still_lands_with_its_chunks(tmp_path, monkeypatch):
    """``file_sizes`` claiming a file size under the inline limit for a manifest (as for a
    small file that began with the manifest magic) makes the plan take it for plain bytes;
    the sender finds the manifest when it reads it to send and sends every chunk it names
    first, so the receiver can write it."""
    monkeypatch.setenv("USR_INLINE_LIMIT", "64")
    _, config = _remote_config(tmp_path)
    big = bytes(range(256)) * 40  # over the inline limit: chunked
    ds = recorded_dataset(tmp_path / "local", DS, {"_auxiliary/big.bin": big, "meta2.txt": b"x\n"})
    store = Store.open(ds.path)
    (entry,) = [c for c in store.diff(None, store.head()) if c.path == "_auxiliary/big.bin"]
    kind, manifest = packstream.read_for_send(store, entry.new_id)
    assert kind == "blob" and manifest.startswith(MAGIC)
    lying = {entry.new_id: 40}
    plan = pushplan.plan_push(store, store.missing_objects([store.head()], []), lying)
    big_chunks = packstream.manifest_chunks(manifest, "big.bin")
    assert entry.new_id not in plan.chunks_of and not set(big_chunks) & set(plan.cids())
    with RemoteSession.open("loc", remotes_config=str(config)) as session:
        stats = session.push(DS, store, store.head(), None, file_sizes=lying)
    assert stats.chunks == len(set(plan.cids()) | set(big_chunks))
    remote = Store.open(tmp_path / "remote" / DS, create=False)
    assert remote.head() == store.head() and remote.fsck() == []
    assert (tmp_path / "remote" / DS / "_auxiliary" / "big.bin").read_bytes() == big


def test_a_tree_listing_sizes_blobs_as_the_store_does(tmp_path, monkeypatch):
    """Past a few hundred blobs the listing takes sizes from the stat cache instead of
    reading each blob: the same whole-file sizes, chunked files included."""
    monkeypatch.setenv("USR_INLINE_LIMIT", "4096")
    ds = recorded_dataset(
        tmp_path / "local", DS, {"_auxiliary/big.bin": bytes(range(256)) * 64}
    )  # chunked
    store = Store.open(ds.path)
    for batch in range(10):  # recorded 60 files at a time: each record's objects stay loose
        for i in range(batch * 60, batch * 60 + 60):
            path = ds.path / "_auxiliary" / f"d{i // 100}" / f"f{i}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x" * (i % 50) + b"%d" % i)
        store.record(f"batch {batch}")
    found = dict(listing.list_objects(store, [store.head()], [], blobs=False)["sizes"])
    blobs = {c.new_id for c in store.diff(None, store.head())}
    assert set(found) == blobs
    assert found == {oid: store.entry_size(oid) for oid in blobs}
    # Observable proof that no blob was read for its size: a listing with one blob's object
    # gone still names its size (the fetch that follows is what needs the object).
    gone = list(found)[-1]  # sized last: past the first few hundred
    (ds.path / ".usr" / "objects" / gone[:2] / gone[2:]).unlink()
    again = listing.list_objects(Store.open(ds.path), [store.head()], [], blobs=False)
    assert dict(again["sizes"])[gone] == found[gone]
