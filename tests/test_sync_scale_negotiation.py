"""Negotiation sends tree ids top-down and skips equal subtrees: a dataset with one new file
sends a handful of objects, not every entry (issue "Scale: a million files per dataset in
bounded memory").

Property tests over seeded random histories (adds, deletes, moves, modifications, merges,
identical subtrees at different paths) check that the top-down set is never smaller than
the exact difference reachable(wants) - reachable(haves); real stores synced with it end
complete and fsck-clean; the tree reads are counted through ``on_read``; and real pushes
over a ``local`` remote and the sshd fixture move a few kilobytes for one new file among
2,400.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pygit2
import pytest
import tomli_w

from tests.conftest import recorded_dataset, run_usr
from usr.store import Store, revlist

TREE = pygit2.enums.FileMode.TREE
BLOB = pygit2.enums.FileMode.BLOB


# -- random histories built straight in a git repository ---------------------------------


def _write_tree(repo: pygit2.Repository, files: dict[str, bytes]) -> pygit2.Oid:
    """A tree holding ``files`` (relpath -> bytes), subtrees built bottom-up."""
    here: dict[str, bytes] = {}
    below: dict[str, dict[str, bytes]] = {}
    for rel, data in files.items():
        head, sep, rest = rel.partition("/")
        if sep:
            below.setdefault(head, {})[rest] = data
        else:
            here[head] = data
    tb = repo.TreeBuilder()
    for name, data in here.items():
        tb.insert(name, repo.create_blob(data), BLOB)
    for name, sub in below.items():
        tb.insert(name, _write_tree(repo, sub), TREE)
    return tb.write()


def _mutate(rng: random.Random, files: dict[str, bytes], step: int) -> dict[str, bytes]:
    """One random change: add, delete, move, modify, copy a directory, move a directory."""
    files = dict(files)
    dirs = sorted({rel.rsplit("/", 1)[0] for rel in files if "/" in rel})
    op = rng.choice(["add", "add", "delete", "move", "modify", "copydir", "movedir"])
    names = sorted(files)
    if op == "add" or not names:
        d = rng.choice(dirs + [f"d{rng.randrange(6)}/s{rng.randrange(3)}", "top"])
        files[f"{d}/f{step}-{rng.randrange(1000)}.txt"] = rng.randbytes(rng.randrange(1, 40))
    elif op == "delete":
        del files[rng.choice(names)]
    elif op == "move":
        rel = rng.choice(names)
        files[f"{rng.choice(dirs or ['top'])}/m{step}.txt"] = files.pop(rel)
    elif op == "modify":
        files[rng.choice(names)] = rng.randbytes(rng.randrange(1, 40))
    elif dirs:
        src = rng.choice(dirs)
        dst = f"c{step}/{src.replace('/', '_')}"
        for rel in [r for r in names if r.startswith(src + "/")]:
            files[dst + rel[len(src) :]] = files[rel]  # identical subtree, other path
            if op == "movedir":
                del files[rel]
    return files


def _random_history(repo: pygit2.Repository, seed: int, steps: int) -> list[str]:
    """Commits of a random DAG: each step changes a random earlier state, or merges two."""
    rng = random.Random(seed)
    sig = pygit2.Signature("t", "t@example.invalid", 1_700_000_000, 0)
    states: list[tuple[str, dict[str, bytes]]] = []
    files: dict[str, bytes] = {}
    for i in range(12):
        files[f"d{i % 4}/s{i % 3}/f{i}.txt"] = bytes([i]) * 7
    for step in range(steps):
        parents: list[str] = []
        if states and rng.random() < 0.2 and len(states) > 2:
            (a, fa), (b, fb) = rng.sample(states, 2)
            files = {**fa, **{k: v for k, v in fb.items() if rng.random() < 0.5}}
            parents = [a, b]
        elif states:
            parent, files = states[-1] if rng.random() < 0.7 else rng.choice(states)
            files = _mutate(rng, files, step)
            parents = [parent]
        tree = _write_tree(repo, files)
        oid = repo.create_commit(None, sig, sig, f"s{step}", tree, parents)
        states.append((str(oid), files))
    return [c for c, _ in states]


def _reachable(repo: pygit2.Repository, commits: list[str]) -> set[str]:
    """Every object reachable from ``commits`` (the slow, exact way)."""
    seen: set[str] = set()
    stack = list(commits)
    while stack:
        oid = stack.pop()
        if oid in seen:
            continue
        seen.add(oid)
        obj = repo[oid]
        if isinstance(obj, pygit2.Commit):
            stack.append(str(obj.tree_id))
            stack.extend(str(p) for p in obj.parent_ids)
        elif isinstance(obj, pygit2.Tree):
            stack.extend(str(e.id) for e in obj)
    return seen


def _named(repo: pygit2.Repository, oid: str) -> list[str]:
    obj = repo[oid]
    if isinstance(obj, pygit2.Commit):
        return [str(obj.tree_id), *(str(p) for p in obj.parent_ids)]
    if isinstance(obj, pygit2.Tree):
        return [str(e.id) for e in obj]
    return []


@pytest.mark.parametrize("seed", range(40))
def test_top_down_set_covers_the_exact_difference(tmp_path: Path, seed: int) -> None:
    repo = pygit2.init_repository(str(tmp_path / "r.git"), bare=True)
    commits = _random_history(repo, seed, steps=14)
    rng = random.Random(1000 + seed)
    for _ in range(6):
        wants = rng.sample(commits, rng.randint(1, 2))
        haves = rng.sample(commits, rng.randint(0, 3))
        typed = revlist.missing_typed(repo, wants, haves)
        got = [oid for oid, _ in typed]
        assert len(got) == len(set(got)), "an object listed twice"
        have_side = _reachable(repo, haves)
        exact = _reachable(repo, wants) - have_side
        assert exact <= set(got), f"missing {len(exact - set(got))} objects"
        assert set(got) <= _reachable(repo, wants), "listed something wants do not reach"
        pos = {oid: i for i, oid in enumerate(got)}
        for oid, kind in typed:
            assert repo[oid].type_str == kind
            for child in _named(repo, oid):  # what it names is there first, or over there
                assert child in have_side or pos[child] < pos[oid]


def test_equal_subtrees_are_never_read(tmp_path: Path) -> None:
    repo = pygit2.init_repository(str(tmp_path / "r.git"), bare=True)
    sig = pygit2.Signature("t", "t@example.invalid", 1_700_000_000, 0)
    files = {f"d{d:02d}/s{s}/f{f}.txt": f"{d} {s} {f}".encode()
             for d in range(30) for s in range(4) for f in range(5)}  # fmt: skip
    first = str(repo.create_commit(None, sig, sig, "a", _write_tree(repo, files), []))
    files["d07/s2/new.txt"] = b"new"
    second = str(repo.create_commit(None, sig, sig, "b", _write_tree(repo, files), [first]))
    files["d11/s0/f1.txt"] = b"changed"
    third = str(repo.create_commit(None, sig, sig, "c", _write_tree(repo, files), [second]))

    def trees_at(commit: str, path: str) -> str:
        tree = repo[commit].tree
        return str(tree.id if not path else tree[path].id)

    reads: list[str] = []
    got = revlist.missing_objects(repo, [second], [first], on_read=reads.append)
    new_blob = str(repo.create_blob(b"new"))
    assert got == [new_blob, trees_at(second, "d07/s2"), trees_at(second, "d07"),
                   trees_at(second, ""), second]  # fmt: skip
    on_the_path = {trees_at(c, p) for c in (first, second) for p in ("", "d07", "d07/s2")}
    assert set(reads) <= on_the_path and len(reads) == len(on_the_path)

    reads.clear()  # two new commits over one have: each compared with its parent and the have
    got = revlist.missing_objects(repo, [third], [first], on_read=reads.append)
    assert len(got) == 10 and got[4] == second and got[-1] == third
    # Along the changed path only: 6 for the second commit as before; for the third its root
    # and both bases' (the parent's, the have's), then d11 and d11/s0 in it and in the
    # bases, which hold one same tree there (read once).
    assert len(reads) == 6 + 3 + 2 + 2
    assert revlist.missing_objects(repo, [third], [third]) == []


# -- real stores kept in sync with it ----------------------------------------------------


def _change_working(rng: random.Random, root: Path, step: int) -> None:
    files = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*")
             if p.is_file() and ".usr" not in p.relative_to(root).parts}  # fmt: skip
    new = _mutate(rng, files, step)
    if rng.random() < 0.3:  # a chunked file (over the 4 KiB inline limit)
        new[f"big/b{step % 3}.bin"] = rng.randbytes(rng.randrange(5000, 20000))
    for rel in set(files) - set(new):
        (root / rel).unlink()
    for rel, data in new.items():
        if files.get(rel) != data:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)


def _send(src: Store, dst: Store, want: str) -> int:
    """Copy what top-down negotiation lists (and the missing chunks) into ``dst``."""
    old = dst.head()
    oids = src.missing_objects([want], [old] if old else [])
    exact = _reachable(src.repo, [want]) - _reachable(src.repo, [old] if old else [])
    assert exact <= set(oids)
    blobs = [o for o in oids if src.repo[o].type_str == "blob"]
    for cid in dst.chunks.missing(src.chunk_ids(blobs)):
        dst.chunks.put(cid, src.chunks.get(cid))
    for oid in oids:
        dst.write_object(*src.read_object(oid), expect=oid)
    dst.checkout(want, expect_head=old)
    return len(oids)


@pytest.mark.parametrize("seed", range(3))
def test_stores_synced_top_down_stay_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    monkeypatch.setenv("USR_INLINE_LIMIT", "4096")
    rng = random.Random(seed)
    a, b = tmp_path / "a", tmp_path / "b"
    for i in range(20):
        (a / f"d{i % 4}/s{i % 3}").mkdir(parents=True, exist_ok=True)
        (a / f"d{i % 4}/s{i % 3}/f{i}.txt").write_bytes(rng.randbytes(30))
    src, dst = Store.open(a), Store.open(b)
    for step in range(10):
        _change_working(rng, a, step)
        head = src.record(f"step {step}").commit
        if rng.random() < 0.6 or step == 9:  # sometimes several commits at once
            _send(src, dst, head)
            assert dst.head() == head and dst.verify_working(head) == []
    assert Store.open(b).fsck() == []


# -- real pushes: one new file among 2,400 ---------------------------------------------------

DS = "scale_ds"


def _many_files() -> dict[str, bytes]:
    return {f"_aux/d{d:02d}/s{s}/f{f:02d}.txt": f"{d}/{s}/{f}\n".encode() * 8
            for d in range(40) for s in range(3) for f in range(20)}  # fmt: skip


@pytest.fixture(scope="module")
def bootstrapped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2,400-file dataset recorded once (copied by each test)."""
    base = tmp_path_factory.mktemp("scale")
    recorded_dataset(base / "laptop", DS, _many_files())
    return base


def _push(root: Path, config: Path, audit: Path) -> dict:
    r = run_usr("--root", str(root), "push", DS, "far", "-y", "--remotes-config", str(config),
                "--audit-json-out", str(audit), timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr
    return json.loads(audit.read_text())["data"]


def _one_new_file_push(base: Path, tmp_path: Path, table: dict) -> tuple[dict, dict, Path]:
    root = tmp_path / "laptop"
    shutil.copytree(base / "laptop", root, symlinks=True)
    remote = tmp_path / "remote"
    remote.mkdir()
    config = tmp_path / "remotes.toml"
    config.write_text(tomli_w.dumps({"remotes": {"far": {**table, "base_dir": str(remote)}}}))
    config.chmod(0o600)
    first = _push(root, config, tmp_path / "first.json")
    (root / DS / "_aux/d17/s1/new.txt").write_bytes(b"one new file\n")
    second = _push(root, config, tmp_path / "second.json")
    return first, second, remote / DS


def _check_one_new_file(first: dict, second: dict, remote: Path) -> None:
    # The bootstrap sends 2,400 blobs and ~160 trees; the second push names 5 objects (the
    # blob, 3 trees, the commit) and the ledger's new objects, where listing every id of
    # the state would take ~100 KB (42 bytes each, both ways).
    assert first["bytes_moved"]["total"] > 150_000
    assert second["bytes_moved"]["total"] < 12_000, second["bytes_moved"]
    assert (remote / "_aux/d17/s1/new.txt").read_bytes() == b"one new file\n"
    store = Store.open(remote, create=False)
    assert store.fsck() == [] and store.verify_working() == []


def test_one_new_file_push_over_a_local_remote(bootstrapped: Path, tmp_path: Path) -> None:
    _check_one_new_file(*_one_new_file_push(bootstrapped, tmp_path, {"type": "local"}))


def test_one_new_file_push_reads_a_handful_of_trees(
    bootstrapped: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client's negotiation of a push, in process: the trees it reads are those on the
    new file's path (here and in the remote's head), not the ~160 of the state; and no
    size is loaded for every file (the stat cache is not seeded for one new file)."""
    from usr.sync import engine, options, trees

    first, _second, remote = _one_new_file_push(bootstrapped, tmp_path, {"type": "local"})
    (tmp_path / "laptop" / DS / "_aux/d03/s2/other.txt").write_bytes(b"another\n")
    reads: list[str] = []
    entries = revlist._TopDown.entries

    def counted(self: revlist._TopDown, tree_id: str) -> revlist.Entries | None:
        reads.append(tree_id)
        return entries(self, tree_id)

    monkeypatch.setattr(revlist._TopDown, "entries", counted)

    def no_seed(self: object) -> None:
        raise AssertionError("a one-file push loaded every file's size")

    monkeypatch.setattr(trees.Sizes, "_seed", no_seed)
    opts = options.SyncOptions(remotes_config=str(tmp_path / "remotes.toml"))
    engine.push(engine.resolve_target(tmp_path / "laptop", DS, opts), "far", opts)
    assert (remote / "_aux/d03/s2/other.txt").read_bytes() == b"another\n"
    # root, _aux, _aux/d03, _aux/d03/s2 in both commits (plus the ledger's few, if any)
    assert 8 <= len(reads) <= 16, len(reads)


def test_one_new_file_push_over_ssh(bootstrapped: Path, tmp_path: Path, sshd) -> None:
    table = sshd.profile(tmp_path / "remote")
    _check_one_new_file(*_one_new_file_push(bootstrapped, tmp_path, table))


def test_a_pushed_state_is_checked_and_checked_out_along_its_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The receiving side of a one-file push: the completeness check lists the new file's
    path only (``tree_changes`` against the stored head) and the checkout looks its mode
    up in the file's directory, never walking the whole target tree."""
    from usr.store import checkout as checkout_mod
    from usr.sync import refupdate

    a = tmp_path / "a"
    for d in range(30):
        (a / f"d{d:02d}").mkdir(parents=True)
        for f in range(10):
            (a / f"d{d:02d}/f{f}.txt").write_bytes(f"{d}/{f}".encode())
    src, dst = Store.open(a), Store.open(tmp_path / "b")
    first = src.record("all").commit
    _send(src, dst, first)
    (a / "d05/new.txt").write_bytes(b"new")
    second = src.record("one").commit
    for oid in src.missing_objects([second], [first]):
        dst.write_object(*src.read_object(oid), expect=oid)
    reads: list[str] = []
    listed = revlist.tree_changes(dst.repo, str(dst.repo[second].tree_id),
                                  [str(dst.repo[first].tree_id)], on_read=reads.append)  # fmt: skip
    assert [kind for _, kind in listed] == ["blob", "tree", "tree"] and len(reads) == 4

    dirs: list[str | None] = []
    modes_call = checkout_mod._Modes.__call__

    def counted(self: checkout_mod._Modes, rel: str) -> int:
        dirs.append(self.dir)
        return modes_call(self, rel)

    monkeypatch.setattr(checkout_mod._Modes, "__call__", counted)
    assert refupdate.update_and_checkout(dst, second, first, validate=False) == second
    assert (tmp_path / "b/d05/new.txt").read_bytes() == b"new"
    assert dst.verify_working(second) == [] and dst.fsck() == []
    assert dirs == [""], dirs  # one file's mode, its directory (d05) read once


def test_streamed_staging_maps_only_the_paths_that_differ(tmp_path: Path) -> None:
    """The receiver's staging of a one-file push or pull maps the paths where the target
    differs from its own head (``base``), not every file of the target."""
    from usr.store.streamstage import StreamStager

    a = tmp_path / "a"
    for d in range(20):
        (a / f"d{d:02d}").mkdir(parents=True)
        for f in range(10):
            (a / f"d{d:02d}/f{f}.txt").write_bytes(f"{d}/{f}".encode())
    store = Store.open(a)
    first = store.record("all").commit
    (a / "d03/new.txt").write_bytes(b"new")
    second = store.record("one").commit
    base, target = store.tree_of(first), store.tree_of(second)
    stager = StreamStager(store, target, base)
    unchanged = str(store.repo[target]["d05/f1.txt"].id)
    new = str(store.repo[target]["d03/new.txt"].id)
    stager.on_blob(unchanged, b"5/1")  # equal at its path: not mapped, not staged
    assert list(stager.paths or {}) == [bytes.fromhex(new)]  # the only file mapped of the 201
    stager.on_blob(new, b"new")
    got = stager.result()
    assert got is not None and len(got.files) == 1
    stager.discard()
