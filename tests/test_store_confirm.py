"""A racy chunked file whose stat still matches the stat cache is confirmed by one blake3
pass against its manifest (``confirm_entry``) instead of being re-chunked; any other
content is refused and the file is hashed in full."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from usr.store import Store
from usr.store.worktree import REUSE_MIN, confirm_entry, walk_tree, write_entry

SIZE = 3 << 20  # well above the inline limit: stored as a manifest plus chunks


def _key(path: Path) -> tuple[int, int, int, int]:
    st = os.stat(path)
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def _recorded(tmp_path: Path) -> tuple[Store, Path, str]:
    ds = tmp_path / "ds"
    ds.mkdir()
    big = ds / "records.bin"
    big.write_bytes(os.urandom(SIZE))
    store = Store.open(ds)
    store.record("import")
    oid = next(o for rel, o, _ in walk_tree(store.repo, store.tree_of(store.head())))
    return store, big, oid


def test_racy_chunked_file_is_confirmed_and_keeps_its_tree(tmp_path: Path) -> None:
    store, big, oid = _recorded(tmp_path)
    assert store.stat_cache().same_stat("records.bin", _key(big)) == oid
    assert confirm_entry(store.repo, str(big), oid, _key(big)) is not None
    tree = store.tree_of(store.head())
    assert store.working_tree() == tree  # racy: read again, and found the same
    assert store.last_scan.hashed == 1


def test_other_content_with_the_same_size_is_refused(tmp_path: Path) -> None:
    store, big, oid = _recorded(tmp_path)
    data = bytearray(big.read_bytes())
    data[SIZE // 2] ^= 0xFF  # same size, one byte different
    big.write_bytes(bytes(data))
    assert confirm_entry(store.repo, str(big), oid, _key(big)) is None
    tree = store.working_tree()
    assert tree != store.tree_of(store.head())
    assert store.diff(store.head(), tree)[0].path == "records.bin"


def test_a_stale_key_or_an_inline_blob_is_not_confirmed(tmp_path: Path) -> None:
    store, big, oid = _recorded(tmp_path)
    size, mtime, ctime, ino = _key(big)
    assert confirm_entry(store.repo, str(big), oid, (size, mtime, ctime + 1, ino)) is None
    small = big.parent / "small.txt"
    small.write_bytes(b"tiny")
    store.record("add small")
    small_oid = next(
        o for rel, o, _ in walk_tree(store.repo, store.tree_of(store.head())) if rel == "small.txt"
    )
    assert confirm_entry(store.repo, str(small), small_oid, _key(small)) is None


def _appended(tmp_path: Path) -> tuple[Store, Path, str, str, bytes]:
    """A recorded chunked file, then the same file with 1 MiB appended, recorded too."""
    ds = tmp_path / "ds"
    ds.mkdir()
    big = ds / "records.bin"
    first = os.urandom(REUSE_MIN + (2 << 20))
    big.write_bytes(first)
    store = Store.open(ds)
    old = store.record("import").commit
    big.write_bytes(first + os.urandom(1 << 20))
    new = store.record("append").commit
    return store, big, old, new, first


def _entry(store: Store, commit: str) -> str:
    return next(o for rel, o, _ in walk_tree(store.repo, store.tree_of(commit)))


def test_checkout_of_an_append_copies_the_prefix_and_verifies(tmp_path: Path) -> None:
    store, big, old, new, _first = _appended(tmp_path)
    want = big.read_bytes()
    store.checkout(old)
    assert big.stat().st_size == REUSE_MIN + (2 << 20)
    store.checkout(new)  # the working file is the base: its shared prefix is reused
    assert big.read_bytes() == want
    assert store.working_tree() == store.tree_of(new)


def test_a_base_that_differs_from_its_entry_falls_back_to_the_chunks(tmp_path: Path) -> None:
    store, big, old, new, first = _appended(tmp_path)
    want = big.read_bytes()
    base = tmp_path / "base.bin"
    damaged = bytearray(first)
    damaged[1000] ^= 0xFF  # claims to be the old entry; is not
    base.write_bytes(bytes(damaged))
    dest = tmp_path / "staged" / "records.bin"
    dest.parent.mkdir()
    write_entry(
        store.repo,
        store.chunks,
        _entry(store, new),
        0o100644,
        dest,
        "records.bin",
        base=(str(base), _entry(store, old)),
    )
    assert dest.read_bytes() == want
    assert os.listdir(dest.parent) == ["records.bin"]


def _counting_writes(store: Store, monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Records each blob the store is asked to write (it still writes them)."""
    written: list[bytes] = []
    create = store.write_blob

    def counted(data: bytes) -> str:
        written.append(data)
        return create(data)

    monkeypatch.setattr(store, "write_blob", counted)
    return written


def test_a_racy_inline_file_that_hashes_to_its_entry_is_not_written_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Written moments before it was recorded, the file is racy and is read again; its
    bytes still hash to the cached id, which the cache keeps from gc: nothing to write."""
    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "a.txt").write_bytes(b"same bytes\n")
    store = Store.open(ds)
    head = store.record("import").commit
    written = _counting_writes(store, monkeypatch)
    assert store.working_tree() == store.tree_of(head)
    assert store.last_scan.hashed == 1 and written == []
    assert store.fsck() == []


def test_a_racy_inline_file_with_other_bytes_than_its_entry_is_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cache row whose stat matches but whose id is not the file's (as a same-tick
    edit would leave) is never taken: the file's own blob is written and recorded."""
    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "a.txt").write_bytes(b"the bytes\n")
    store = Store.open(ds)
    store.record("import")
    cache = store.stat_cache()
    key, _ = cache.entries["a.txt"]
    other = store.repo.create_blob(b"other bytes\n")
    out = cache.writer(cache.scan_ns)  # the cache names another blob for the same stat
    try:
        out.add(b"a.txt", (*key, 0), bytes.fromhex(str(other)))
        out.commit()
    finally:
        out.close()
    written = _counting_writes(store, monkeypatch)
    tree = store.working_tree()
    assert written == [b"the bytes\n"]
    assert tree == store.tree_of("HEAD")
    assert store.stat_cache().entries["a.txt"][1] != str(other)
