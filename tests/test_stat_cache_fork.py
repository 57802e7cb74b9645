"""The forked lister (``usr.store.treefork``): a scan where a child process checks the last
part of the tree gives exactly what one process gives (status, tree, errors, the next
stat cache), and a child that dies costs only time."""

from __future__ import annotations

import json
import marshal
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import recorded_dataset, run_usr, usr_env
from usr.store import Store
from usr.store.treefork import FAULT_CHILD, FORK_ENV, Lister, split

PAST = 1_600_000_000 * 10**9  # well before any scan: the stat cache trusts these mtimes
DS = "lab/forked"


def _dataset(root: Path) -> Path:
    """20 directories of 5 files under two levels, recorded, every mtime old enough to
    be trusted."""
    files = {
        f"_aux/{i // 10}/{i:02d}/f{j}.txt": b"x" * (i + j) for i in range(20) for j in range(5)
    }
    files["_aux/top.txt"] = b"top"
    ds = recorded_dataset(root, DS, files)
    _age(ds.path)
    Store.open(ds.path).working_tree()  # the cache now holds the aged stats
    return ds.path


def _age(path: Path) -> None:
    """Every working file's mtime far back (the dataset's own files too: whether they are
    still racy would depend on how fast the test runs)."""
    for dirpath, dirs, names in os.walk(path):
        if ".usr" in dirs:
            dirs.remove(".usr")
        for name in names:
            os.utime(os.path.join(dirpath, name), ns=(PAST, PAST), follow_symlinks=False)


def _tables(store: Store) -> tuple[bytes, ...]:
    cache = store.stat_cache()
    files, dirs = cache.files, cache.dirs
    assert len(files) >= 100  # read back whole, not taken for a damaged cache
    return bytes(files.raw), bytes(files.names), bytes(dirs.raw), bytes(dirs.names)


#: One scan in a fresh process: a test process has pyarrow's threads by now, and a process
#: with threads never forks (``fork`` would copy only the calling thread).
SCAN = """
import json, sys
from usr.store import Store
store = Store.open(sys.argv[1])
try:
    got = [repr(c) for c in store.status()]
except Exception as exc:
    got = [type(exc).__name__, str(exc)]
s = store.last_scan if hasattr(store, "last_scan") else None
print(json.dumps([got, s and [s.files, s.hashed, s.forked]]))
"""


def _scan(ds: Path, fork_min: str, env: dict[str, str] | None = None) -> tuple[Any, Any, Any]:
    """``(status lines or the error, the scan's files/hashed/forked, the next cache's
    tables)``."""
    out = subprocess.run(
        [sys.executable, "-c", SCAN, str(ds)],
        env=usr_env({FORK_ENV: fork_min, **(env or {})}),
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    got, stats = json.loads(out)
    return got, stats, _tables(Store.open(ds))


def _both(ds: Path, env: dict[str, str] | None = None) -> tuple[Any, Any]:
    """The scan forked (every size forks) and in one process, from the same stat cache."""
    cache = ds / ".usr" / "stat-cache"
    saved = cache.read_bytes()
    forked = _scan(ds, "1", env)
    cache.write_bytes(saved)
    single = _scan(ds, "0")
    return forked, single


def _child_part(ds: Path) -> list[str]:
    store = Store.open(ds)
    return [p.decode() for p in split(store.stat_cache().dirs)]


def test_the_child_takes_the_last_half_by_whole_subtrees(root: Path) -> None:
    ds = _dataset(root)
    # 50 of the 104 files, last in walk order, in subtrees of at most 104 / 64 files where
    # there are subdirectories to split into.
    assert _child_part(ds) == [f"_aux/1/{i}/" for i in range(10, 20)]


def test_a_noop_scan_forked_is_the_cached_tree_with_the_child_checking_half(root: Path) -> None:
    ds = _dataset(root)
    (forked, fstats, ftables), (single, sstats, stables) = _both(ds)
    assert forked == single == []
    assert fstats[2] == 50 and sstats[2] == 0
    assert fstats[:2] == sstats[:2] == [104, 0]
    assert ftables == stables


def test_changes_in_both_halves_are_reported_as_one_process_reports_them(root: Path) -> None:
    ds = _dataset(root)
    aux = ds / "_aux"
    for half in ("0/03", "1/14"):  # the parent's part, then the child's
        (aux / half / "f0.txt").write_bytes(b"modified")
        (aux / half / "f1.txt").unlink()
        (aux / half / "new.txt").write_bytes(b"new")
        (aux / half / "f2.txt").chmod(0o755)  # in the tree and the cache; not a change
    (aux / "1" / "17" / "f3.txt").write_bytes(b"y" * 20)  # same size, new bytes
    (aux / "1" / "19" / "sub").mkdir()  # a new directory, under the child's part
    (aux / "1" / "19" / "sub" / "deep.txt").write_bytes(b"deep")
    shutil.rmtree(aux / "1" / "16")  # a whole subtree of the child's part gone
    (forked, fstats, ftables), (single, sstats, stables) = _both(ds)
    assert forked == single
    changed = {c.split("'")[1] for c in forked}
    for half in ("0/03", "1/14"):
        assert {f"_aux/{half}/{n}" for n in ("f0.txt", "f1.txt", "new.txt")} <= changed
    assert {"_aux/1/17/f3.txt", "_aux/1/19/sub/deep.txt"} <= changed
    assert {f"_aux/1/16/f{j}.txt" for j in range(5)} <= changed
    assert len(changed) == 13
    # The child's clean directories were taken, the changed ones walked here.
    assert fstats[2] == 5 * 6  # 1/10 .. 1/19 less 14, 16, 17 and 19
    assert fstats[:2] == sstats[:2]
    assert ftables == stables  # the next cache, byte for byte (bar its time and digest)


@pytest.mark.parametrize("odd", ["symlink", "backslash"])
def test_a_refused_path_in_the_childs_part_is_refused_as_by_one_process(
    root: Path, odd: str
) -> None:
    ds = _dataset(root)
    where = ds / "_aux" / "1" / "16"
    if odd == "symlink":
        (where / "link").symlink_to(where / "f0.txt")
    else:
        (where / "a\\b.txt").write_bytes(b"odd")
    (forked, _, _), (single, _, _) = _both(ds)
    assert forked == single
    assert forked[0] == "InputError" and "_aux/1/16/" in forked[1]


def test_the_first_refusal_in_walk_order_wins_when_both_parts_have_one(root: Path) -> None:
    ds = _dataset(root)
    (ds / "_aux" / "0" / "02" / "link").symlink_to(ds / "_aux")
    (ds / "_aux" / "1" / "12" / "link").symlink_to(ds / "_aux")
    (forked, _, _), (single, _, _) = _both(ds)
    assert forked == single and "_aux/0/02/link" in forked[1]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a directory whatever its mode")
def test_an_unreadable_directory_in_the_childs_part_fails_as_in_one_process(root: Path) -> None:
    ds = _dataset(root)
    locked = ds / "_aux" / "1" / "15"
    locked.chmod(0)
    try:
        (forked, _, _), (single, _, _) = _both(ds)
    finally:
        locked.chmod(0o755)
    assert forked == single and forked[0] == "PermissionError"


@pytest.mark.parametrize("nth", ["1", "4"])
def test_a_child_killed_mid_walk_leaves_the_rest_to_the_parent(root: Path, nth: str) -> None:
    ds = _dataset(root)
    (ds / "_aux" / "1" / "18" / "f4.txt").write_bytes(b"changed in the child's part")
    kill = {"USR_FAULT_POINT": f"{FAULT_CHILD}:{nth}"}
    (forked, fstats, ftables), (single, _, stables) = _both(ds, kill)
    assert forked == single and len(forked) == 1 and "_aux/1/18/f4.txt" in forked[0]
    # Killed before its first report: nothing taken; before its fourth: the three before.
    assert fstats[2] == {"1": 0, "4": 15}[nth]
    assert fstats[:2] == [104, 1]
    assert ftables == stables


def test_usr_status_prints_the_same_forked_and_not(root: Path) -> None:
    ds = _dataset(root)
    (ds / "_aux" / "0" / "01" / "f0.txt").write_bytes(b"a change in the parent's part")
    (ds / "_aux" / "1" / "11" / "f0.txt").write_bytes(b"a change in the child's part")
    (ds / "_aux" / "1" / "13" / "extra.txt").write_bytes(b"new")
    cache = ds / ".usr" / "stat-cache"
    saved = cache.read_bytes()
    forked = run_usr("--root", str(root), "status", DS, env={FORK_ENV: "1"})
    cache.write_bytes(saved)
    single = run_usr("--root", str(root), "status", DS, env={FORK_ENV: "0"})
    assert forked.returncode == single.returncode == 0, forked.stderr
    assert forked.stdout == single.stdout
    for path in ("_aux/0/01/f0.txt", "_aux/1/11/f0.txt", "_aux/1/13/extra.txt"):
        assert path in forked.stdout


def test_a_process_with_threads_walks_alone(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = _dataset(root)  # recording loaded pyarrow, whose threads are running here
    assert len(os.listdir("/proc/self/task")) > 1
    monkeypatch.setenv(FORK_ENV, "1")
    store = Store.open(ds)
    assert store.working_tree() == store.tree_of(store.head())
    assert store.last_scan.forked == 0 and store.last_scan.files == 104


def test_ctrl_c_while_the_child_walks_stops_both_and_a_rerun_is_right(root: Path) -> None:
    ds = _dataset(root)
    (ds / "_aux" / "1" / "12" / "f1.txt").write_bytes(b"changed in the child's part")
    fifo = root.parent / "hold"
    os.mkfifo(fifo)
    held = f"{FAULT_CHILD}:{fifo}"
    cmd = [sys.executable, "-m", "usr", "--root", str(root), "status", DS]
    env = usr_env({FORK_ENV: "1", "USR_PAUSE_POINT": held})
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    signal.alarm(60)  # fail, not hang, if the child never reaches its point
    try:
        hold = os.open(fifo, os.O_WRONLY)  # returns once the child is held at the point
    finally:
        signal.alarm(0)
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    assert len(children) == 1
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    os.close(hold)
    assert proc.returncode == 130  # the CLI's one line for an interrupt (click's "aborted")
    assert err.decode().strip() in ("usr: error: aborted", "usr: error: interrupted")
    assert not out
    assert not Path(f"/proc/{children[0]}").exists()  # killed and reaped by the parent
    again = run_usr("--root", str(root), "status", DS, env={FORK_ENV: "1"})
    assert again.returncode == 0 and "_aux/1/12/f1.txt" in again.stdout


def test_a_report_cut_short_by_the_childs_death_is_no_report() -> None:
    """A child killed mid-write leaves a short last report: the parent takes the whole ones
    before it and walks the rest itself, never failing on the half one."""
    whole = marshal.dumps((b"a/", (1, 2)))
    cut = marshal.dumps((b"b/", (3, 4)))
    script = (
        "import os, struct, sys\n"
        f"w, c = {whole!r}, {cut!r}\n"
        "os.write(1, struct.pack('<I', len(w)) + w + struct.pack('<I', len(c)) + c[:3])\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    lister = Lister(proc.pid, os.dup(proc.stdout.fileno()), [b"a/", b"b/"])
    proc.stdout.close()
    try:
        assert lister.answer("a/") == (1, 2)
        assert lister.answer("b/") is None and lister.done
        assert lister.answer("c/") is None  # never asked of the child
    finally:
        lister.close()
    assert not Path(f"/proc/{proc.pid}").exists()  # reaped by the parent's end
