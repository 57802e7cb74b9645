"""The binary stat cache (``.usr/stat-cache``, docs/format.md §6) and its cache-tree: the file
round-trips, a damaged or old-format cache is an empty one, and a scan that reuses cached
trees gives exactly the tree a full rebuild gives, on a tree with thousands of directories
and the deepest nesting the layout allows."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import run_usr
from usr.dataset import Dataset
from usr.layout import MAX_RELPATH
from usr.store import Store, index
from usr.store.worktree import walk_tree

PAST = 1_600_000_000 * 10**9  # well before any scan: the stat cache trusts these mtimes
DEEP = "a/" * ((MAX_RELPATH - 1) // 2) + "f"  # the longest path: 511 directories deep


def _age(path: Path) -> None:
    os.utime(path, ns=(PAST, PAST))


def _write(ds: Path, rel: str, data: bytes) -> Path:
    p = ds / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    _age(p)
    return p


def _wide_and_deep(tmp_path: Path) -> tuple[Store, Path]:
    """2,000 directories two levels down, one file each, plus the deepest path, all aged."""
    ds = tmp_path / "ds"
    for i in range(2000):
        _write(ds, f"_aux/g{i % 40:02d}/d{i:04d}/f.txt", b"%d" % i)
    _write(ds, DEEP, b"deep")
    _write(ds, "meta.md", b"top")
    store = Store.open(ds)
    store.record("import")
    return store, ds


def _full_rebuild(store: Store) -> str:
    """The working tree with no stat cache at all (every file read, every tree built)."""
    (store.gitdir / "stat-cache").unlink(missing_ok=True)
    return store.working_tree()


def write_rows(cache: index.StatCache, rows: dict, scan_ns: int = 123) -> None:
    """Write ``rows`` (relpath -> (stat key, entry id)) as the whole cache, in path order,
    as a scan does; mode 0 (unknown), so each row is a miss to a scan."""
    out = cache.writer(scan_ns)
    try:
        for rel in sorted(rows, key=lambda r: r.encode("utf-8", "surrogateescape")):
            key, oid = rows[rel]
            out.add(rel.encode("utf-8", "surrogateescape"), (*key, 0), bytes.fromhex(oid))
        out.commit()
    finally:
        out.close()


@pytest.mark.parametrize("count", [0, 1, 17_000, 40_000])
def test_the_cache_round_trips_in_git_order(tmp_path: Path, count: int) -> None:
    """Saved and loaded back (across the writer's 1 MiB flushes): the same entries, in
    full-path byte order (a directory's files after ``name.txt`` and before ``name0``)."""
    cache = index.StatCache(tmp_path / "index", inline_limit=4096)
    names = [f'd{i % 7}/f "{i}".txt' for i in range(count)]
    if count:
        names += ["d1.txt", "d10", "é/x", "d1/sub/deeper/z"]
    rows = {
        rel: (index.StatKey(i, 2 * i, 3 * i, 4 * i), f"{i:040x}") for i, rel in enumerate(names)
    }
    write_rows(cache, rows, scan_ns=123)
    again = index.StatCache(cache.path, inline_limit=4096)
    assert dict(again.entries) == rows
    # Past the first few finds the paths are bisected: misses before, between and after.
    for missing in ("", "a", "d1/f", "d1.txt0", "zzz", "é/y"):
        assert again.entries.get(missing) is None
    assert again.scan_ns == 123 and len(again.files) == len(names)
    order = [path for path, _ in again.files.items()]
    assert order == sorted(rel.encode() for rel in names)
    assert again.entry_ids() == {f"{i:040x}" for i in range(len(names))}
    assert index.StatCache(cache.path, inline_limit=8192).entries == {}  # other limit


def test_a_damaged_cache_is_empty_and_costs_only_work(tmp_path: Path) -> None:
    store, ds = _wide_and_deep(tmp_path)
    tree = store.tree_of(store.head())
    path = store.gitdir / "stat-cache"
    good = path.read_bytes()
    assert len(store.stat_cache().files) == 2002
    for damaged in (good[: len(good) // 2], good[:-1], b"", bytes(len(good))):
        path.write_bytes(damaged)
        assert len(store.stat_cache().files) == 0 and store.stat_cache().tree is None
    flipped = bytearray(good)
    flipped[len(good) // 3] ^= 0x01
    path.write_bytes(bytes(flipped))
    assert len(store.stat_cache().files) == 0  # the blake3 trailer catches one bit
    assert store.working_tree() == tree
    assert store.last_scan.hashed == 2002  # all read again, nothing trusted
    assert store.stat_cache().tree == tree  # and the cache written afresh


def test_the_old_json_cache_is_ignored_and_removed(tmp_path: Path) -> None:
    """A version-1 cache naming a wrong id for a file with the right stat is not read."""
    ds = tmp_path / "ds"
    p = _write(ds, "a.txt", b"the bytes")
    store = Store.open(ds)
    st = os.stat(p)
    row = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, "ab" * 20]
    doc = {"version": 1, "inline_limit": 262144, "scan_ns": 2 * 10**18, "tree": "cd" * 20}
    (store.gitdir / "index.json").write_text(json.dumps({**doc, "entries": {"a.txt": row}}))
    tree = store.working_tree()
    assert store.last_scan.hashed == 1
    assert [(rel, oid) for rel, oid, _ in walk_tree(store.repo, tree)] == [
        ("a.txt", str(store.repo.create_blob(b"the bytes")))
    ]
    assert not (store.gitdir / "index.json").exists()


def test_touching_one_deep_file_rebuilds_only_its_path(tmp_path: Path) -> None:
    store, ds = _wide_and_deep(tmp_path)
    head_tree = store.tree_of(store.head())
    assert store.stat_cache().unchanged_tree(ds) == (head_tree, 2002)
    for rel in (DEEP, "_aux/g17/d1217/f.txt"):
        _write(ds, rel, b"changed")
        tree = store.working_tree()
        assert store.last_scan.hashed == 1 and store.last_scan.files == 2002
        assert tree != head_tree
        assert [c.path for c in store.diff(head_tree, tree)] == [rel]
        assert store.stat_cache().unchanged_tree(ds) == (tree, 2002)
        assert _full_rebuild(store) == tree
        head_tree = tree


@pytest.mark.parametrize("change", ["add", "remove", "exec", "edit", "empty-dir", "swap"])
def test_a_change_in_a_cached_directory_is_seen(tmp_path: Path, change: str) -> None:
    store, ds = _wide_and_deep(tmp_path)
    head_tree = store.tree_of(store.head())
    target = ds / "_aux/g05/d0005/f.txt"
    expect = {"_aux/g05/d0005/f.txt"}
    if change == "add":
        _write(ds, "_aux/g05/d0005/new.txt", b"new")
        expect = {"_aux/g05/d0005/new.txt"}
    elif change == "remove":
        target.unlink()
    elif change == "exec":
        target.chmod(0o755)
        expect = set()  # a mode is not a content change: the tree differs, see below
    elif change == "edit":
        target.write_bytes(b"X")  # same size; the mtime is put back, the ctime is not
        _age(target)
    elif change == "empty-dir":
        (ds / "_aux/g05/d9999/e").mkdir(parents=True)  # records nothing
        expect = set()
    else:  # a file becomes a directory of the same name
        target.unlink()
        _write(ds, "_aux/g05/d0005/f.txt/inner", b"in")
        expect = {"_aux/g05/d0005/f.txt", "_aux/g05/d0005/f.txt/inner"}
    tree = store.working_tree()
    assert {c.path for c in store.diff(head_tree, tree)} == expect
    assert (tree == head_tree) == (change == "empty-dir")
    if change == "exec":
        modes = {rel: mode for rel, _, mode in walk_tree(store.repo, tree)}
        assert modes["_aux/g05/d0005/f.txt"] == 0o100755
    assert store.working_tree() == tree  # and the cache it wrote gives the same again
    assert _full_rebuild(store) == tree


def test_a_cached_tree_missing_from_the_store_is_rebuilt(tmp_path: Path) -> None:
    """A cached tree id that is not in the store (a foreign or hand-edited cache) is not
    trusted when a changed parent would name it: the trees are built again."""
    store, ds = _wide_and_deep(tmp_path)
    cache = store.stat_cache()
    out = cache.writer(cache.scan_ns)
    try:
        out.copy(0, len(cache.files), 0, len(cache.files.names))
        for path, (count, _, oid) in cache.dirs.items():
            fake = b"\x01" * 20 if path == b"_aux/g06/" else oid
            out.set_tree(out.open_tree(path), count, fake)
        out.commit()
    finally:
        out.close()
    _write(ds, "_aux/g07/d0007/f.txt", b"changed")
    tree = store.working_tree()
    assert store.last_scan.hashed == 1
    dirs = store.stat_cache().dirs
    found = dirs.find(b"_aux/g06/")
    assert found is not None and store.has_object(dirs.at(found[0])[2].hex())
    assert _full_rebuild(store) == tree


def test_a_racy_file_never_reuses_its_cached_tree(tmp_path: Path) -> None:
    """A cache whose rows and trees name other content for files with exactly the
    working stat: trusted when the scan that wrote it started well after the mtimes (the
    rule, seen from the inside), re-read when the mtimes fall in the racy window."""
    ds = tmp_path / "ds"
    p = _write(ds, "d/a.txt", b"real")
    store = Store.open(ds)
    fake_blob = str(store.repo.create_blob(b"fake"))
    fake = store.repo.TreeBuilder()
    fake.insert("a.txt", store.repo.create_blob(b"fake"), 0o100644)
    fake_d = fake.write()
    root = store.repo.TreeBuilder()
    root.insert("d", fake_d, 0o040000)
    fake_root = str(root.write())

    def plant(scan_ns: int) -> None:
        st = os.stat(p)
        out = store.stat_cache().writer(scan_ns)
        try:
            key = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_mode)
            out.add(b"d/a.txt", key, bytes.fromhex(fake_blob))
            out.set_tree(out.open_tree(b""), 1, bytes.fromhex(fake_root))
            out.set_tree(out.open_tree(b"d/"), 1, fake_d.raw)
            out.commit()
        finally:
            out.close()

    plant(PAST + index.RACY_NS)  # the mtime is not older than scan_ns - RACY_NS
    real = store.working_tree()
    assert real != fake_root and store.last_scan.hashed == 1
    plant(PAST + index.RACY_NS + 1)  # just past the window: the cache is believed
    assert store.working_tree() == fake_root and store.last_scan.hashed == 0
    (store.gitdir / "stat-cache").unlink()
    assert store.working_tree() == real


def test_a_checkout_drops_the_cached_trees_above_what_it_wrote(tmp_path: Path) -> None:
    """Checkout updates single rows: every directory above an updated path loses its
    cached tree, the others keep theirs, and the next scan gives the checked-out tree."""
    store, ds = _wide_and_deep(tmp_path)
    first = store.head()
    _write(ds, "_aux/g03/d0003/f.txt", b"second")
    second = store.record("second").commit
    store.checkout(first)
    cache = store.stat_cache()
    assert cache.tree is None
    assert cache.dirs.find(b"_aux/g03/") is None and cache.dirs.find(b"_aux/") is None
    assert cache.dirs.find(b"_aux/g04/") is not None  # untouched: still cached
    assert store.working_tree() == store.tree_of(first)
    assert store.stat_cache().tree == store.tree_of(first)
    assert _full_rebuild(store) == store.tree_of(first) != store.tree_of(second)


def test_status_on_the_wide_and_deep_tree_names_each_touched_file_and_nothing_else(
    tmp_path: Path,
) -> None:
    """``usr status`` (the CLI, the stat cache it saves between runs) on a dataset of 2,000
    directories and the deepest path: a no-op reports nothing, then one file edited in
    place (same size, mtime put back: only the ctime tells) in the deepest directory and
    then among the 2,000 is reported alone, and putting its bytes back is clean again."""
    root = tmp_path / "root"
    ds = Dataset.init(root, "wide", source="test")
    for i in range(2000):
        _write(ds.path, f"_aux/g{i % 40:02d}/d{i:04d}/f.txt", b"%04d" % i)
    _write(ds.path, DEEP, b"deep")
    ds.record_state("import")

    def status() -> list[tuple[str, str]]:
        out = run_usr("--root", str(root), "status", "wide", "--format", "json")
        assert out.returncode == 0, out.stderr
        data = json.loads(out.stdout)["data"]
        assert data["clean"] == (not data["changes"])
        return [(c["status"], c["path"]) for c in data["changes"]]

    assert status() == []
    assert status() == []  # and again, from the cache the first one saved
    for rel, edited in ((DEEP, b"DEEP"), ("_aux/g17/d1217/f.txt", b"XXXX")):
        original = (ds.path / rel).read_bytes()
        _write(ds.path, rel, edited)
        assert status() == [("M", rel)]
        _write(ds.path, rel, original)
        assert status() == []


def _bootstrap_store(tmp_path: Path) -> tuple[Store, str]:
    """An empty store holding the objects of a recorded state of a few files."""
    src = Store.open(tmp_path / "a")
    for i in range(5):
        (tmp_path / "a" / f"d{i}").mkdir()
        (tmp_path / "a" / f"d{i}" / "f.txt").write_text(f"file {i}\n")
    commit = src.record("all").commit
    dst = Store.open(tmp_path / "b")
    for oid in src.missing_objects([commit], []):
        dst.write_object(*src.read_object(oid), expect=oid)
    return dst, commit


def test_a_bootstrap_checkout_moves_the_trust_line_to_its_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first checkout's cache trusts what it wrote before its promote began: the next
    scan reads nothing (its clock is moved 10 s on, as if the files were that old), and a
    same-size write afterwards is still seen."""
    dst, commit = _bootstrap_store(tmp_path)
    later = index.time.time_ns() + 10 * index.RACY_NS
    monkeypatch.setattr(index.time, "time_ns", lambda: later)
    dst.checkout(commit)
    assert index.trusted_before(dst.gitdir / index.CACHE_FILE) == later - index.RACY_NS
    assert dst.working_tree() == dst.tree_of(commit)
    assert dst.last_scan.bytes_hashed == 0
    (dst.path / "d3" / "f.txt").write_text("file X\n")
    tree = dst.working_tree()
    assert dst.last_scan.bytes_hashed == len("file X\n")
    assert [c.path for c in dst.diff(commit, tree, sizes=False)] == ["d3/f.txt"]


def test_a_checkout_over_a_cache_with_rows_keeps_its_line(tmp_path: Path) -> None:
    """Old rows could be racy under their own line: a later line would trust them. The
    next cache a checkout writes over rows keeps the old line; over none it takes now."""
    dst, commit = _bootstrap_store(tmp_path)
    before = index.time.time_ns()
    with index.sorted_updates(dst.stat_cache()) as empty:
        assert empty.out is not None and empty.out.scan_ns >= before
    dst.checkout(commit)
    cache = dst.stat_cache()
    assert len(cache.files) == 5
    with index.sorted_updates(cache) as updates:
        assert updates.out is not None and updates.out.scan_ns == cache.scan_ns


def test_sizes_in_order_jump_to_hits_and_step_after_many_misses(tmp_path: Path) -> None:
    """A diff's sizes: the cached size where the row names the same entry, else the
    fallback; paths are found by searching ahead (any number of hits) until 8 misses, then
    by stepping through the rows, with the same answers either way."""
    cache = index.StatCache(tmp_path / "index", inline_limit=4096)
    names = sorted(f"d{i % 10}/f{i:04d}" for i in range(2000))
    write_rows(
        cache, {rel: (index.StatKey(1000 + i, 1, 1, i), f"{i:040x}") for i, rel in enumerate(names)}
    )
    loaded = index.StatCache(cache.path, inline_limit=4096)
    asked: list[str] = []

    def fallback(entry_id: str) -> int:
        asked.append(entry_id)
        return -1

    size = loaded.sizes_in_order(fallback)
    assert size(names[0], f"{0:040x}") == 1000  # the first row
    assert size(names[5], f"{5:040x}") == 1005
    assert size(names[7], "f" * 40) == -1  # in the cache under another id
    for i in range(9):  # missing paths, each between two rows: the 9th is stepped to
        assert size(names[10 * (i + 1)] + "x", f"{i:040x}") == -1
    assert size(names[100], f"{100:040x}") == 1100  # found by stepping
    assert size(names[1999], f"{1999:040x}") == 2999  # the last row
    assert size(names[1999] + "z", "e" * 40) == -1  # past the end
    assert asked == ["f" * 40, *(f"{i:040x}" for i in range(9)), "e" * 40]
