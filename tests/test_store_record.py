"""Recording states: adoption, the stat cache, chunked files, refused paths, diffs, refs."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from usr.errors import ConflictError, InputError, VerifyError
from usr.store import Store
from usr.store.objects import MAGIC, Manifest

PAST = 1_600_000_000 * 10**9  # mtimes well before any scan, so the stat cache trusts them


def make_dataset(path: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        p = path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return path


def age(path: Path) -> None:
    """Set every file's mtime far in the past (not racy for the stat cache)."""
    for p in path.rglob("*"):
        if p.is_file() and ".usr" not in p.parts:
            os.utime(p, ns=(PAST, PAST))


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunk anything over 4 KiB so multi-chunk files stay small in tests."""
    monkeypatch.setenv("USR_INLINE_LIMIT", "4096")


def test_adopts_plain_directory_and_records_once(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "ds", {"meta.md": b"# hi\n", "_registry/a.txt": b"a"})
    store = Store.open(ds)
    assert store.head() is None
    first = store.record("import")
    assert first.created and store.head() == first.commit
    again = store.record("snapshot")
    assert not again.created and again.commit == first.commit
    entry = store.log()[0]
    assert entry.action == "import" and entry.actor.startswith("usr/")
    assert [p for p, _, _ in store.ls_tree("HEAD")] == ["_registry/a.txt", "meta.md"]


def test_open_without_create_refuses(tmp_path: Path) -> None:
    (tmp_path / "ds").mkdir()
    with pytest.raises(Exception, match="no usr store"):
        Store.open(tmp_path / "ds", create=False)


def test_unchanged_dataset_reads_no_file(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "ds", {f"_aux/{i}.txt": b"x" * i for i in range(50)})
    age(ds)
    store = Store.open(ds)
    store.record("import")
    assert store.last_scan.hashed == 50
    store.record("snapshot")
    assert store.last_scan.files == 50 and store.last_scan.hashed == 0


def test_racy_file_is_rehashed(tmp_path: Path) -> None:
    """A same-size edit that keeps the mtime is still seen while the mtime is recent."""
    ds = make_dataset(tmp_path / "ds", {"meta.md": b"aaaa"})
    store = Store.open(ds)
    store.record("import")
    st = os.stat(ds / "meta.md")
    (ds / "meta.md").write_bytes(b"bbbb")
    os.utime(ds / "meta.md", ns=(st.st_atime_ns, st.st_mtime_ns))
    changes = store.status()
    assert [(c.path, c.status) for c in changes] == [("meta.md", "M")]


def test_runtime_paths_never_recorded(tmp_path: Path) -> None:
    ds = make_dataset(
        tmp_path / "ds",
        {"meta.md": b"m", ".usr.lease.x": b"l", ".usr-tmp-abc": b"t", "sub/.usr-staging-1/f": b"s"},
    )
    store = Store.open(ds)
    store.record("import")
    assert [p for p, _, _ in store.ls_tree("HEAD")] == ["meta.md"]


def test_symlink_and_fifo_refused(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "ds", {"meta.md": b"m"})
    os.symlink("/etc/passwd", ds / "evil")
    store = Store.open(ds)
    with pytest.raises(InputError, match="evil.*symlink"):
        store.record("snapshot")
    os.unlink(ds / "evil")
    os.mkfifo(ds / "pipe")
    with pytest.raises(InputError, match="pipe.*special"):
        store.record("snapshot")


def test_chunked_file_roundtrip_and_dedupe(tmp_path: Path, small_chunks: None) -> None:
    data = os.urandom(1 << 20)
    ds = make_dataset(tmp_path / "ds", {"records.parquet": data})
    store = Store.open(ds)
    first = store.record("import").commit
    [(_, oid, _)] = store.ls_tree("HEAD")
    manifest = store.manifest_of(oid)
    assert manifest is not None and manifest.size == len(data)
    assert len(manifest.chunks) > 4, "a 1 MiB file must be cut into several chunks"
    assert store.entry_size(oid) == len(data)
    assert b"".join(store.open_entry(oid)) == data
    assert Manifest.decode(manifest.encode()) == manifest
    # Appending shares every chunk but the last few.
    with open(ds / "records.parquet", "ab") as fh:
        fh.write(os.urandom(10_000))
    second = store.record("snapshot").commit
    [(_, oid2, _)] = store.ls_tree("HEAD")
    new = store.manifest_of(oid2)
    shared = {c for c, _ in manifest.chunks} & {c for c, _ in new.chunks}
    assert len(shared) >= len(manifest.chunks) - 2
    assert (
        store.read_range(oid2, len(data), 10)
        == (ds / "records.parquet").read_bytes()[len(data) : len(data) + 10]
    )
    store.checkout(first)
    assert (ds / "records.parquet").read_bytes() == data
    store.checkout(second)
    assert store.verify_working() == []


def test_small_file_starting_with_magic_roundtrips(tmp_path: Path) -> None:
    tricky = MAGIC + b"size 3\nblake3 nonsense\n"
    ds = make_dataset(tmp_path / "ds", {"_aux/tricky": tricky, "meta.md": b"m"})
    store = Store.open(ds)
    first = store.record("import").commit
    oid = dict((p, o) for p, o, _ in store.ls_tree("HEAD"))["_aux/tricky"]
    assert store.manifest_of(oid) is not None  # stored chunked, never as an inline blob
    assert b"".join(store.open_entry(oid)) == tricky
    (ds / "_aux/tricky").write_bytes(b"other")
    store.record("snapshot")
    store.checkout(first)
    assert (ds / "_aux/tricky").read_bytes() == tricky


def test_diff_sections_sizes_and_statuses(tmp_path: Path) -> None:
    ds = make_dataset(
        tmp_path / "ds",
        {"records.parquet": b"r1", "meta.md": b"m", "_derived/ns/part.parquet": b"d"},
    )
    store = Store.open(ds)
    a = store.record("import").commit
    (ds / "records.parquet").write_bytes(b"r22")
    (ds / "_derived/ns/part.parquet").unlink()
    make_dataset(ds, {".events.log": b'{"a":1}\n', "_snapshots/s1.parquet": b"s"})
    b = store.record("snapshot").commit
    got = [(c.path, c.status, c.section, c.old_size, c.new_size) for c in store.diff(a, b)]
    assert got == [
        (".events.log", "A", "events", None, 8),
        ("_derived/ns/part.parquet", "D", "derived", 1, None),
        ("_snapshots/s1.parquet", "A", "snapshots", None, 1),
        ("records.parquet", "M", "primary", 2, 3),
    ]
    assert store.diff(b, b) == []
    assert [c.status for c in store.diff(None, a)] == ["A", "A", "A"]


def test_update_ref_is_compare_and_swap(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "ds", {"meta.md": b"1"})
    store = Store.open(ds)
    a = store.record("import").commit
    (ds / "meta.md").write_bytes(b"2")
    b = store.record("snapshot").commit
    store.update_ref("refs/remotes/hpc/main", a, None)
    with pytest.raises(ConflictError, match="moved"):
        store.update_ref("refs/remotes/hpc/main", b, None)
    store.update_ref("refs/remotes/hpc/main", b, a)
    assert store.head("refs/remotes/hpc/main") == b
    assert store.resolve("hpc/main") == b
    store.update_ref("refs/remotes/hpc/main", None, b)
    assert store.head("refs/remotes/hpc/main") is None
    with pytest.raises(InputError):
        store.update_ref("refs/heads/../../x", a, None)


def test_revisions(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "ds", {"meta.md": b"0"})
    store = Store.open(ds)
    ids = [store.record("import").commit]
    for i in range(1, 4):
        (ds / "meta.md").write_bytes(str(i).encode())
        ids.append(store.record("snapshot").commit)
    assert store.resolve("HEAD") == ids[3]
    assert store.resolve("HEAD~2") == ids[1]
    assert store.resolve("main~1^") == ids[1]
    assert store.resolve(ids[2][:10]) == ids[2]
    assert store.is_ancestor(ids[0], ids[3]) and not store.is_ancestor(ids[3], ids[0])
    assert store.merge_base(ids[1], ids[3]) == ids[1]
    with pytest.raises(Exception, match="past the first"):
        store.resolve("HEAD~9")


def test_objects_verify_on_write_and_missing_objects_order(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "ds", {"a/b/c.txt": b"c", "meta.md": b"m"})
    store = Store.open(ds)
    first = store.record("import").commit
    (ds / "a/b/d.txt").write_bytes(b"d")
    second = store.record("snapshot").commit
    order = store.missing_objects([second], [])
    assert order[-1] == second and first in order
    pos = {oid: i for i, oid in enumerate(order)}
    for oid in order:  # everything an object names comes before it
        kind, _ = store.read_object(oid)
        obj = store.repo[oid]
        named = [str(e.id) for e in obj] if kind == "tree" else []
        if kind == "commit":
            named = [str(obj.tree_id)] + [str(p) for p in obj.parent_ids]
        assert all(pos[n] < pos[oid] for n in named)
    incremental = store.missing_objects([second], [first])
    assert first not in incremental and len(incremental) == 5  # d.txt, b, a, root, commit
    kind, data = store.read_object(second)
    other = Store.open(make_dataset(tmp_path / "other", {}))
    with pytest.raises(VerifyError):
        other.write_object(kind, data + b"x", expect=second)
    assert other.write_object(kind, data, expect=second) == second
    with pytest.raises(VerifyError):
        other.chunks.put("0" * 64, b"not those bytes")


def test_many_states_checkout_each(tmp_path: Path, small_chunks: None) -> None:
    ds = make_dataset(tmp_path / "ds", {})
    store = Store.open(ds)
    states = []
    body = b""
    for i in range(20):
        body += os.urandom(3000)
        make_dataset(ds, {"records.parquet": body, f"_aux/{i % 3}.txt": str(i).encode()})
        if i % 5 == 4:
            (ds / ".events.log").write_bytes(b"".join(b"%d\n" % j for j in range(i)))
        states.append((store.record("snapshot").commit, body))
    assert [e.id for e in store.log()] == [c for c, _ in reversed(states)]
    for commit, content in (states[3], states[17], states[0], states[19]):
        store.checkout(commit)
        assert (ds / "records.parquet").read_bytes() == content
        assert store.verify_working(commit) == []
    assert store.fsck() == []


def test_checkout_refuses_unrecorded_changes_and_force_keeps_them(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "ds", {"meta.md": b"one"})
    store = Store.open(ds)
    first = store.record("import").commit
    (ds / "meta.md").write_bytes(b"two")
    second = store.record("snapshot").commit
    (ds / "meta.md").write_bytes(b"three, unrecorded")
    with pytest.raises(ConflictError, match="unrecorded"):
        store.checkout(first)
    assert (ds / "meta.md").read_bytes() == b"three, unrecorded"
    store.checkout(first, force=True)
    assert (ds / "meta.md").read_bytes() == b"one"
    saved = [n for n in store.refs.names() if n.startswith("refs/usr/saved/")]
    assert len(saved) == 1
    kept = store.head(saved[0])
    assert store.log_entry(kept).parents == (second,)
    store.checkout(kept)
    assert (ds / "meta.md").read_bytes() == b"three, unrecorded"
    with pytest.raises(ConflictError, match="HEAD moved"):
        store.checkout(first, expect_head=first)


def test_file_and_directory_swap_on_checkout(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "ds", {"_aux/x": b"file"})
    store = Store.open(ds)
    a = store.record("import").commit
    (ds / "_aux/x").unlink()
    make_dataset(ds, {"_aux/x/inner": b"now a dir"})
    b = store.record("snapshot").commit
    store.checkout(a)
    assert (ds / "_aux/x").read_bytes() == b"file"
    store.checkout(b)
    assert (ds / "_aux/x/inner").read_bytes() == b"now a dir"


def test_gc_removes_unreachable_and_keeps_history(tmp_path: Path, small_chunks: None) -> None:
    ds = make_dataset(tmp_path / "ds", {"records.parquet": os.urandom(200_000)})
    store = Store.open(ds)
    store.record("import")
    (ds / "records.parquet").write_bytes(os.urandom(200_000))
    store.working_tree()  # writes chunks and a tree nothing will commit
    (ds / "records.parquet").write_bytes(os.urandom(200_000))
    store.record("snapshot")
    before = len(list(store.chunks.loose_ids())) + sum(1 for _ in store.chunks.pack_names())
    report = store.gc(prune_age=0)
    assert report.chunks_removed > 0 and report.objects_removed > 0
    assert before > 0
    assert store.fsck() == []
    assert store.verify_working() == []
    store.checkout("HEAD~1")  # the first state is still whole
    assert store.fsck() == []


def test_events_log_must_only_grow(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "ds", {".events.log": b'{"n":1}\n'})
    store = Store.open(ds)
    store.record("import")
    (ds / ".events.log").write_bytes(b'{"n":1}\n{"n":2}\n')
    store.record("snapshot")
    assert store.fsck() == []
    (ds / ".events.log").write_bytes(b'{"n":1}\n{"n":3}\n')
    bad = store.record("snapshot").commit
    problems = store.fsck()
    assert [(p.kind, p.id, p.path) for p in problems] == [("events", bad, ".events.log")]


def test_scan_time_is_not_a_test_dependency() -> None:
    # Guard: the racy window must be positive, or the stat cache would trust fresh files.
    from usr.store.index import RACY_NS

    assert RACY_NS > 0 and time.time_ns() > PAST


@pytest.mark.parametrize(
    ("mode", "name"),
    [(b"100644", b".."), (b"100644", b".usr"), (b"120000", b"link"), (b"160000", b"sub")],
)
def test_hostile_tree_refused_before_disk(tmp_path: Path, mode: bytes, name: bytes) -> None:
    ds = make_dataset(tmp_path / "ds", {"meta.md": b"m"})
    store = Store.open(ds)
    store.record("import")
    blob = store.write_object("blob", b"evil")
    tree = store.write_object("tree", mode + b" " + name + b"\x00" + bytes.fromhex(blob))
    commit = store.commit_tree(tree, [store.head()], "pull evil")
    with pytest.raises(InputError, match="refused|bad path"):
        store.checkout(commit)
    assert sorted(p.name for p in ds.iterdir()) == [".usr", ".usr.lock", "meta.md"]
    assert store.verify_working() == []
