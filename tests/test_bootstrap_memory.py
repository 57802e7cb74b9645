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


def test_a_checkouts_stat_cache_rows_are_written_as_they_come(tmp_path: Path) -> None:
    """A checkout's stat cache rows go to the next cache's file as it gives them (in path
    order: nothing held per file until the save), and read back as the stat key and hex
    id; an entry out of order is left out (hashed again later), never misfiled."""
    from usr.store.index import StatCache, StatKey, sorted_updates

    cache = StatCache(tmp_path / "stat-cache", inline_limit=4096)
    key = StatKey(1024, 1_700_000_000_123_456_789, 1_700_000_000_223_456_789, 2**40 + 7)
    with sorted_updates(cache) as up:
        for i in range(1000):
            up.update(f"d/f{i:04d}.txt", key, f"{i:040x}", 0o100644)
        up.update("a/out-of-order.txt", key, "ab" * 20, 0o100644)
        assert vars(up).keys() == {"cache", "out", "rows", "ahead", "at", "p", "last", "stale"}
        assert up.stale == {b"", b"d/"}
        up.save()
    again = StatCache(tmp_path / "stat-cache", inline_limit=4096)
    assert len(again.files) == 1000
    assert again.entries["d/f0007.txt"] == (key, f"{7:040x}")
    assert "a/out-of-order.txt" not in again.entries


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


def test_the_journal_file_is_the_bytes_json_dumps_gives(tmp_path: Path) -> None:
    """The writer puts each operation's JSON together itself; the file is still exactly
    ``json.dumps(journal, separators=(",", ":"))`` (docs/format.md §8) for paths with
    non-ASCII letters, undecodable bytes, quotes, backslashes and control characters."""
    import json

    from usr.store.journal import JournalWriter

    paths = ["plain/a.txt", "d/caf\u00e9-\udcff.bin", 'q/"quoted"\\back', "c/tab\there\x01", "z"]
    ops = [checkout_mod._op("put", p, f"{i:040x}") for i, p in enumerate(paths)]
    ops.insert(2, checkout_mod._op("delete", "old/\u00fc\n.txt", None))
    path = tmp_path / "CHECKOUT"
    writer = JournalWriter(path, "c" * 40, ".usr-staging-x")
    for op in ops:
        writer.add(op)
    journal = writer.commit()
    listed = [checkout_mod._op_json(op) for op in ops]
    doc = {"commit": "c" * 40, "staging": ".usr-staging-x", "ops": listed}
    assert path.read_bytes() == json.dumps(doc, separators=(",", ":")).encode()
    assert list(journal.ops()) == ops


def _tree_store(tmp_path: Path, dirs: int, files: int) -> tuple[Store, Store, str]:
    """A recorded source of ``dirs`` x ``files`` files and an empty store holding its
    objects, ready for a bootstrap checkout."""
    src = Store.open(tmp_path / "a")
    _tree(tmp_path / "a", dirs, files)
    commit = src.record("all").commit
    dst = Store.open(tmp_path / "b")
    for oid in src.missing_objects([commit], []):
        dst.write_object(*src.read_object(oid), expect=oid)
    return src, dst, commit


def test_the_journal_is_written_as_the_checkout_stages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each operation goes to the journal's temporary file when it is decided (halfway
    through staging, half of them are on disk), not into a list held to the end; the
    journal renamed into place has the bytes of the whole-document write, and the promote
    reads it back from the file."""
    import json

    from usr import faults
    from usr.store.journal import Journal

    _src, dst, commit = _tree_store(tmp_path, 10, 60)
    seen: dict[str, Any] = {"staged": 0}
    plain = faults.point

    def point(name: str) -> None:
        if name == checkout_mod.FAULT_MID_STAGE:
            seen["staged"] += 1
            if seen["staged"] == 400:
                (tmp,) = dst.gitdir.glob(".usr-tmp-journal-*")
                seen["half"] = tmp.stat().st_size
                assert not checkout_mod.journal_path(dst).exists()
        if name == checkout_mod.FAULT_JOURNAL:
            seen["journal"] = checkout_mod.journal_path(dst).read_bytes()
        plain(name)

    monkeypatch.setattr(faults, "point", point)
    dst.checkout(commit)
    doc = json.loads(seen["journal"])
    assert seen["journal"] == json.dumps(doc, separators=(",", ":")).encode()
    assert doc["commit"] == commit and doc["staging"].startswith(checkout_mod.STAGING_PREFIX)
    assert len(doc["ops"]) == 610 and all(op["op"] == "put" for op in doc["ops"])
    assert [op["path"] for op in doc["ops"]] == sorted(op["path"] for op in doc["ops"])
    assert 0.4 * len(seen["journal"]) < seen["half"] <= 0.7 * len(seen["journal"])
    assert dst.verify_working(commit) == [] and not list(dst.gitdir.glob(".usr-tmp-*"))
    # Read back from the file, in any JSON layout, as json.loads reads it.
    path = tmp_path / "CHECKOUT"
    path.write_text(json.dumps(doc, indent=2))
    journal = Journal(path)
    assert (journal.commit, journal.staging) == (doc["commit"], doc["staging"])
    assert [checkout_mod._op_json(op) for op in journal.ops()] == doc["ops"]
    for torn in (seen["journal"][:-1], seen["journal"][:-40], seen["journal"] + b"x"):
        path.write_bytes(torn)
        with pytest.raises(ValueError):
            Journal(path)


def test_a_checkout_writes_stat_cache_rows_as_it_promotes(tmp_path: Path) -> None:
    """The promote's stat cache rows go into the next cache file in path order (the stat
    cache has no per-file update held until a save), merged with the rows already cached."""
    kept = {"0-kept.txt": b"first", "d02/f0055.txt": b"among", "zz-kept.txt": b"last"}
    for side in ("a", "b"):
        for rel, data in kept.items():
            (tmp_path / side / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / side / rel).write_bytes(data)
    Store.open(tmp_path / "b").record("kept")  # their rows are cached here already
    _src, dst, commit = _tree_store(tmp_path, 6, 40)
    before = dict(dst.stat_cache().entries)
    dst.checkout(commit)
    entries = dst.stat_cache().entries
    assert len(entries) == 6 * 41 + 3
    assert {rel: entries[rel] for rel in kept} == {rel: before[rel] for rel in kept}
    assert dst.stat_cache().tree is None  # the directories above were made stale
    tree = dst.repo[dst.tree_of(dst.head())]
    for rel in ("d00/f000.txt", "d03/f017.txt", "d05/sub/x.sh"):
        key, oid = entries[rel]
        assert oid == str(tree[rel].id) and key[0] == (dst.path / rel).stat().st_size
    assert dst.working_tree() == dst.tree_of(dst.head())


def test_out_of_order_cache_rows_are_left_out(tmp_path: Path) -> None:
    """The stat cache is a shortcut: a row given out of path order is not written (the
    next scan hashes that file), the rest are."""
    from usr.store.index import StatCache, StatKey, sorted_updates

    cache = StatCache(tmp_path / "stat-cache", inline_limit=4096)
    key = StatKey(3, 1, 2, 4)
    with sorted_updates(cache) as updates:
        for rel in ("a/1", "a/3", "a/2", "b"):
            updates.update(rel, key, "ab" * 20)
        updates.save()
    assert sorted(StatCache(tmp_path / "stat-cache", inline_limit=4096).entries) == [
        "a/1", "a/3", "b",
    ]  # fmt: skip
    assert not list(tmp_path.glob(".usr-tmp-*"))


def test_staged_claims_take_a_few_bytes_each() -> None:
    """A receive's claims are one table of 16-byte slots, at most 3/4 full: ~150 bytes a
    claim as a set of bytes."""
    import hashlib

    from usr.store.claims import Claims

    claims = Claims()
    made = [hashlib.blake2b(b"%d" % i, digest_size=16).digest() for i in range(30_000)]
    for c in made:
        claims.add(c)
    claims.add(made[7])
    claims.add(bytes(16))
    assert len(claims) == 30_001
    assert all(c in claims for c in made) and bytes(16) in claims
    assert not any(hashlib.blake2b(b"x%d" % i, digest_size=16).digest() in claims
                   for i in range(3_000))  # fmt: skip
    assert set(claims) == {*made, bytes(16)}
    assert len(claims._table) / len(claims) <= 16 / 0.375 + 1
    with pytest.raises(ValueError):
        claims.add(b"short")


def test_a_bootstrap_checkout_holds_little_per_file(tmp_path: Path) -> None:
    """What a streamed bootstrap checkout holds when its files are promoted and its ref is
    about to move (benchmarks/checkout_memory.py): the claims table, bounded buffers,
    not the journal's operations, the stat cache's updates, the names pygit2 kept."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    try:
        import checkout_memory
    finally:
        sys.path.pop(0)
    got = checkout_memory.measure(3_000, 30, 5, tmp_path)
    # Before: 472 bytes a file (claims 154, stat cache updates 173, operations 80, the
    # names pygit2 kept 61); after, at this size, the 1 MiB row buffer of the cache writer
    # not yet full (~90 bytes a file) is most of it.
    assert got["claims_bytes_per_file"] < 60, got
    assert got["held_at_promote_bytes_per_file"] < 200, got


def test_modes_read_ahead_in_order_and_by_name_otherwise(tmp_path: Path) -> None:
    """In tree order the modes are read by position, and nothing stays behind per lookup
    (pygit2 keeps each name given to ``tree[name]``); a name far ahead or behind is looked
    up by name, with the same answer."""
    import tracemalloc

    store = Store.open(tmp_path / "a")
    _tree(tmp_path / "a", 2, 400)
    tree = store.tree_of(store.record("all").commit)
    modes = checkout_mod._Modes(store.repo, tree)
    assert modes("d00/f350.txt") == 0o100644  # far ahead: by name
    assert modes("d00/f002.txt") == 0o100644  # behind: by name
    assert modes("d00/sub/x.sh") == 0o100755
    names = [f"d01/f{i:03d}.txt" for i in range(400)]
    modes = checkout_mod._Modes(store.repo, tree)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(400):
            assert modes(names[i]) == 0o100644
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 400 * 8, kept  # by name: ~61 bytes a lookup, never freed


def test_the_revlist_walk_keeps_raw_ids(tmp_path: Path) -> None:
    """A first push's walk lists every file: its seen set holds raw 20-byte ids and its
    result two arrays (20 bytes and one type byte an object), read back as hex pairs."""
    from usr.store import revlist

    store = Store.open(tmp_path / "a")
    _tree(tmp_path / "a", 3, 4)
    commit = store.record("all").commit
    walk = revlist._TopDown(store.repo, None)
    walk.tree(store.repo[commit].tree_id, [])
    assert walk.emitted and all(type(k) is bytes and len(k) == 20 for k in walk.emitted)
    listed = revlist.missing_typed(store.repo, [commit], [])
    assert type(listed.ids) is bytearray and len(listed.ids) == 20 * len(listed)
    pairs = list(listed)
    assert pairs[-1] == (commit, "commit") and {k for _, k in pairs} == {"commit", "tree", "blob"}
    assert [o for o, _ in pairs] == list(listed.oids()) == store.missing_objects([commit], [])
    assert len(walk.emitted) == len(listed) - 1  # every object but the commit


def test_a_long_walk_forgets_blobs_and_lists_each_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past ``REMEMBER_BLOBS`` blobs the walk keeps only trees in its set and drops the
    blobs it listed twice at the end: the same listing, in the same order, as a walk
    that remembered every blob, files named at several paths included."""
    from usr.store import revlist

    store = Store.open(tmp_path / "a")
    _tree(tmp_path / "a", 6, 5)  # each d*/sub/x.sh is one blob at six paths
    for d in range(6):
        (tmp_path / f"a/d{d:02d}/same.txt").write_bytes(b"same")
    commit = store.record("all").commit
    whole = list(revlist.missing_typed(store.repo, [commit], []))
    monkeypatch.setattr(revlist._TopDown, "REMEMBER_BLOBS", 3)
    walk = revlist._TopDown(store.repo, None)
    walk.tree(store.repo[commit].tree_id, [])
    assert sum(1 for _, k in walk.out if k == "blob") > len({o for o, k in whole if k == "blob"})
    assert len(walk.emitted) == 3 + sum(1 for _, k in whole if k == "tree")
    assert list(walk.result()) == [p for p in whole if p[1] != "commit"]
    assert list(revlist.missing_typed(store.repo, [commit], [])) == whole
    assert revlist.missing_objects(store.repo, [commit], []) == [o for o, _ in whole]


def _odd_changes(n: int) -> list[FileChange]:
    """Every shape a comparison holds: None ids and sizes, non-ASCII and undecodable
    (surrogate-escaped) paths, sizes past 32 bits, in path order."""
    out = []
    for i in range(n):
        kind = i % 4
        old = None if kind == 0 else f"{i:040x}"
        new = None if kind == 1 else f"{i + 1:040x}"
        sizes = (None, i) if kind == 0 else (i << 33, None) if kind == 1 else (None, None)
        status = "A" if kind == 0 else "D" if kind == 1 else "M"
        name = ("été", "日本", "a\udcff", "plain")[kind]
        out.append(FileChange(f"_aux/{i:06d}/{name}.bin", status, "auxiliary", old, new, *sizes))
    return out


def test_a_change_list_round_trips_every_field_in_order() -> None:
    """The spooled comparison gives back exactly the changes put in, in order, as often
    as it is read, spilled to its temporary file or not; len and truth without reading."""
    from usr.sync import auditrows
    from usr.sync.changelist import ChangeList, by_path, collect

    changes = _odd_changes(6_000)
    listed = collect(iter(changes))
    assert isinstance(listed, ChangeList) and listed.spool.spilled()
    assert len(listed) == 6_000 and listed
    assert list(listed) == changes and list(listed) == changes  # read twice
    assert listed == changes and listed[-1] == changes[-1] and listed[2:4] == changes[2:4]
    assert all(type(c) is FileChange for c in listed)
    assert listed.in_path_order and by_path(listed) is listed  # walked, not sorted
    small = collect(changes[:5])
    assert not small.spool.spilled() and list(small) == changes[:5]
    assert not collect([]) and len(collect([])) == 0 and collect([]) == []
    shuffled = collect(changes[3::-1])
    assert not shuffled.in_path_order and list(by_path(shuffled)) == changes[:4]
    assert auditrows.SpooledList is type(listed).__mro__[1]  # one spooled-rows idea


def test_a_change_list_holds_a_few_bytes_and_a_few_changes() -> None:
    """20,000 changes made one at a time hold a few bytes each once collected (a list
    of FileChange objects held ~270), and reading them keeps one or two alive at once."""
    import tracemalloc

    from usr.sync.changelist import collect

    def made(n: int) -> Iterator[FileChange]:
        for i in range(n):
            yield FileChange(f"_auxiliary/d{i % 1000:04d}/f{i:07d}.bin", "D", "auxiliary",
                             f"{i:040x}", None, 1024 + i, None)  # fmt: skip

    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        listed = collect(made(20_000))
        per_change = (tracemalloc.get_traced_memory()[0] - before) / len(listed)
    finally:
        tracemalloc.stop()
    assert per_change < 30, per_change  # ~1: the rows are in the temporary file
    live: list[weakref.ref[FileChange]] = []
    most = 0
    for i, change in enumerate(listed):
        assert change.path == f"_auxiliary/d{i % 1000:04d}/f{i:07d}.bin"
        assert change.old_size == 1024 + i and change.new_id is None
        live.append(weakref.ref(change))
        if i % 97 == 0:
            most = max(most, sum(1 for r in live if r() is not None))
    assert len(live) == 20_000 and most <= 2, most


def test_the_sync_comparison_is_the_stores_diff_spooled(tmp_path: Path) -> None:
    """``tree_diff`` gives the store's one comparison, change for change, as a spooled
    list; the audit built from it is the audit built from the plain list."""
    from usr.sync import audit, trees
    from usr.sync.changelist import ChangeList

    store = Store.open(tmp_path / "a")
    _tree(tmp_path / "a", 3, 4)
    (tmp_path / "a/d00/été.txt").write_bytes(b"x")
    first = store.record("one").commit
    (tmp_path / "a/d01/f000.txt").write_bytes(b"changed")
    (tmp_path / "a/d02/f001.txt").unlink()
    (tmp_path / "a/d02/new.txt").write_bytes(b"new")
    second = store.record("two").commit
    for a, b in ((first, second), (None, second), (second, None)):
        spooled = trees.tree_diff(store, a, b)
        plain = store.diff(a, b)
        assert isinstance(spooled, ChangeList) and list(spooled) == plain and plain
        docs = []
        for changes in (spooled, plain):
            cmp = audit.Comparison("ds", "r", audit.Side(exists=True), audit.Side(exists=True),
                                   "diverged", changes=changes)  # fmt: skip
            data = audit.build(cmp, "push", audit.VerifyProfile())
            docs.append({k: list(v) if k == "files" else v for k, v in data.items()})
        assert docs[0] == docs[1]


def test_a_journal_without_deletes_is_walked_once(tmp_path: Path) -> None:
    """The writer knows whether it wrote a delete: a bootstrap's journal (puts only) is
    promoted in one walk of its operations, one with deletes in two, and a journal read
    back for recovery is always walked for them."""
    from usr.store.journal import Journal, JournalWriter, make_op

    def walks(ops: list[tuple[str, str, str | None]]) -> tuple[bool, bool]:
        writer = JournalWriter(tmp_path / "CHECKOUT", "c" * 40, "staging")
        for kind, path, oid in ops:
            writer.add(make_op(kind, path, oid))
        committed = writer.commit()
        return committed.deletes, Journal(committed.path).deletes

    assert walks([("put", "a", "1" * 40), ("put", "b", "2" * 40)]) == (False, True)
    assert walks([("put", "a", "1" * 40), ("delete", "b", None)]) == (True, True)
