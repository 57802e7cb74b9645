"""The per-file structures of a bootstrap push or pull, kept small (issue "Scale: a
million files per dataset in bounded memory"): a checkout walks the comparison one change
at a time and looks modes up one directory at a time; the stat cache's updates, the
streamed staging's map, the audit's file entries and FileChange objects are compact.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from usr.store import Store
from usr.store import checkout as checkout_mod
from usr.store.model import FileChange


def _tree(base: Path, dirs: int, files: int) -> None:
    for d in range(dirs):
        (base / f"d{d:02d}" / "sub").mkdir(parents=True)
        for f in range(files):
            (base / f"d{d:02d}/f{f:03d}.txt").write_bytes(f"{d}/{f}".encode())
        (base / f"d{d:02d}/sub/x.sh").write_bytes(b"#!/bin/sh\n")
        (base / f"d{d:02d}/sub/x.sh").chmod(0o755)


def test_a_bootstrap_checkout_holds_few_file_changes_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """2,020 files checked out into an empty store: at most a few FileChange objects are
    alive at any moment (the whole comparison used to be a list), and every file lands
    with its mode."""
    src = Store.open(tmp_path / "a")
    _tree(tmp_path / "a", 20, 100)
    commit = src.record("all").commit
    dst = Store.open(tmp_path / "b")
    for oid in src.missing_objects([commit], []):
        dst.write_object(*src.read_object(oid), expect=oid)
    live: list[weakref.ref[FileChange]] = []
    most = 0
    lazy = checkout_mod.iter_diff

    def watched(*args: Any) -> Iterator[FileChange]:
        nonlocal most
        for change in lazy(*args):
            live.append(weakref.ref(change))
            most = max(most, sum(1 for r in live if r() is not None))
            yield change

    monkeypatch.setattr(checkout_mod, "iter_diff", watched)
    dst.checkout(commit)
    assert len(live) >= 2_020
    assert most <= checkout_mod.BATCH_FSYNC_FILES + 4, most
    assert dst.verify_working(commit) == [] and dst.fsck() == []
    assert (tmp_path / "b/d07/sub/x.sh").stat().st_mode & 0o111


def test_many_puts_keeps_deletions_and_order() -> None:
    changes = [FileChange(f"p{i}", "D" if i % 3 == 0 else "A", "aux", None, None, None, None)
               for i in range(60)]  # fmt: skip
    batched, again = checkout_mod._many_puts(iter(changes))
    assert batched and list(again) == changes
    batched, again = checkout_mod._many_puts(changes[:6])
    assert not batched and list(again) == changes[:6]


def test_modes_refuse_what_is_not_a_file(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "a")
    _tree(tmp_path / "a", 2, 3)
    tree = store.tree_of(store.record("all").commit)
    modes = checkout_mod._Modes(store.repo, tree)
    assert modes("d00/f000.txt") == 0o100644
    assert modes("d01/sub/x.sh") == 0o100755
    assert modes("d00/f001.txt") == 0o100644  # back to another directory
    from usr.errors import InputError

    with pytest.raises(InputError, match="refused"):
        modes("d00/sub")


def test_stat_cache_updates_are_packed_rows(tmp_path: Path) -> None:
    """A checkout remembers each file it wrote in the stat cache until it saves it: a
    56-byte row per file (stat key, mode, raw id), read back as the stat key and hex id."""
    from usr.store.index import StatCache, StatKey

    cache = StatCache(tmp_path / "stat-cache", inline_limit=4096)
    key = StatKey(1024, 1_700_000_000_123_456_789, 1_700_000_000_223_456_789, 2**40 + 7)
    cache.update("d/f.txt", key, "ab" * 20, 0o100644)
    (row,) = cache._updates.values()
    assert isinstance(row, bytes) and len(row) == 56
    assert cache.entries["d/f.txt"] == (key, "ab" * 20)
    assert cache.entry_ids() == {"ab" * 20}
    cache.save()
    assert StatCache(tmp_path / "stat-cache", inline_limit=4096).entries["d/f.txt"] == (
        key,
        "ab" * 20,
    )


def test_streamed_staging_maps_each_file_as_one_string(tmp_path: Path) -> None:
    """The receiver's blob -> paths map of a bootstrap holds a raw id and one string per
    file (a list only for a blob at several paths), and gives back paths and modes."""
    from usr.store.streamstage import StreamStager, _targets

    store = Store.open(tmp_path / "a")
    _tree(tmp_path / "a", 3, 4)
    (tmp_path / "a/d00/copy.txt").write_bytes(b"0/1")  # the same bytes as d00/f001.txt
    tree = store.tree_of(store.record("all").commit)
    stager = StreamStager(store, tree)
    stager._plan()
    paths = stager.paths or {}
    assert all(isinstance(k, bytes) and len(k) == 20 for k in paths)
    singles = [v for v in paths.values() if isinstance(v, str)]
    assert len(singles) == len(paths) - 2  # d00's copy, and the 3 identical x.sh
    found = {rel: mode for v in paths.values() for rel, mode in _targets(v)}
    assert found["d02/sub/x.sh"] == 0o100755 and found["d00/copy.txt"] == 0o100644
    assert len(found) == 3 * 4 + 3 + 1
    stager.discard()


def test_audit_file_entries_share_one_key_table() -> None:
    """A bootstrap's audit lists every file: each entry is a plain dict with the keys in
    their order, at well under half the size of a dict literal of the same 12 keys."""
    import json
    import tracemalloc

    from usr.sync import audit

    changes = [FileChange(f"_aux/d{i}.bin", "A", "aux", None, f"{i:040x}", None, 1024)
               for i in range(20_000)]  # fmt: skip
    tracemalloc.start()
    try:
        entries = [audit._file_entry(c, "pull", False, True) for c in changes]
        per_entry = tracemalloc.get_traced_memory()[0] / len(entries)
    finally:
        tracemalloc.stop()
    assert per_entry < 300, per_entry  # a literal: ~500
    first = entries[1]
    assert type(first) is dict and list(first) == [
        "path", "section", "status", "old_id", "new_id", "old_size", "new_size",
        "local_id", "remote_id", "local_size", "remote_size", "changed_by",
    ]  # fmt: skip
    assert first["status"] == "added" and first["new_id"] == f"{1:040x}"
    assert json.loads(json.dumps(first)) == first


def test_journal_operations_are_compact_and_round_trip() -> None:
    """A checkout holds one bytes per operation until the promote; the journal on disk is
    unchanged (docs/format.md §8), and recovery reads it back into the same bytes."""
    put = checkout_mod._op("put", "d/caf\u00e9-\udcff.bin", "ab" * 20)
    gone = checkout_mod._op("delete", "old/x.txt", None)
    assert isinstance(put, bytes) and len(put) == 1 + 20 + len("d/café-x.bin") + 1
    assert checkout_mod._op_fields(put) == ("put", "d/caf\u00e9-\udcff.bin", "ab" * 20)
    assert checkout_mod._op_fields(gone) == ("delete", "old/x.txt", None)
    assert checkout_mod._op_json(put) == {"op": "put", "path": "d/caf\u00e9-\udcff.bin",
                                          "id": "ab" * 20}  # fmt: skip
    assert checkout_mod._op_json(gone) == {"op": "delete", "path": "old/x.txt"}
    again = [checkout_mod._op(j["op"], j["path"], j.get("id"))
             for j in map(checkout_mod._op_json, [put, gone])]  # fmt: skip
    assert again == [put, gone]
