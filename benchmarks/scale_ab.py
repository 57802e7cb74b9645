"""Push and pull of N small files over a local remote by two checkouts of usr, with rsync.

    uv run python benchmarks/scale_ab.py --files 20000 --dirs 1000 \\
        --tree main=/tmp/scale-main --tree branch=. \\
        --out docs/performance-results/scale-negotiation.jsonl

Each ``--tree NAME=DIR`` is a checkout with its own ``.venv``. One dataset of N files of
1 KiB in ``--dirs`` directories is recorded once; then for each tree in turn: a bootstrap
push to a fresh remote dir, a pull into a fresh laptop root, one new file recorded and
pushed, and pulled. ``rsync -a`` of the same directory (whole, then after one new file) is
the baseline. Every step is a process of its own, measured for wall and CPU seconds
(itself and its children) and peak RSS: the client's from ``VmHWM`` sampled every 10 ms
in ``/proc`` (high-water, so a late sample still holds the peak; likewise its largest
descendant's), the server's (and its CPU seconds, ``server_cpu_s``) from ``/usr/bin/time
-f %U,%S,%M`` wrapped around ``usr plumbing serve`` (the profile's ``remote_usr``). One
JSON line per step.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

DS = "bench/scale"


def write_files(base: Path, files: int, dirs: int, seed: int = 7) -> None:
    """``files`` files of 1 KiB spread over ``dirs`` directories (seeded bytes)."""
    rng = random.Random(seed)
    for d in range(dirs):
        (base / f"d{d:04d}").mkdir(parents=True, exist_ok=True)
    for i in range(files):
        (base / f"d{i % dirs:04d}" / f"f{i:07d}.bin").write_bytes(rng.randbytes(1024))


def _hwm_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _descendants(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                out += [int(c) for c in fh.read().split()]
    except OSError:
        pass
    return out + [d for c in out for d in _descendants(c)]


def run(
    argv: list[str], env: dict[str, str], server_rss: Path | None = None, cwd: Path | None = None
) -> dict[str, Any]:
    """Run one step: wall and CPU seconds (with children), peak RSS in MiB of the process
    itself (``client_rss_mb``), of the server (``/usr/bin/time`` when wrapped) and of its
    largest descendant (``child_rss_mb``: the server, or rsync's receiver). ``ru_maxrss``
    of ``wait4`` is not used: Linux keeps it across exec, so it starts at this script's."""
    if server_rss is not None:
        server_rss.unlink(missing_ok=True)
    start = time.perf_counter()
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=cwd
    )
    peaks: dict[int, int] = {}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for pid in [proc.pid, *_descendants(proc.pid)]:
                peaks[pid] = max(peaks.get(pid, 0), _hwm_kb(pid))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    err = proc.stderr.read() if proc.stderr else b""
    _, status, usage = os.wait4(proc.pid, 0)
    done.set()
    sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:6])}...: exit {proc.returncode}: {err.decode()[-800:]}")
    server = server_cpu = None
    if server_rss is not None and server_rss.exists():
        user, system, kb = server_rss.read_text().split()[-1].split(",")
        server, server_cpu = round(int(kb) / 1024, 1), round(float(user) + float(system), 3)
    children = [kb for pid, kb in peaks.items() if pid != proc.pid]
    return {
        "wall_s": round(wall, 3),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
        "client_rss_mb": round(peaks.get(proc.pid, 0) / 1024, 1),
        "server_rss_mb": server,
        "server_cpu_s": server_cpu,
        "child_rss_mb": round(max(children) / 1024, 1) if children else None,
    }


class Tree:
    """One checkout of usr, driving its CLI against one remote dir."""

    def __init__(self, name: str, path: Path, tmp: Path) -> None:
        self.name, self.path = name, path
        self.python = str(path / ".venv" / "bin" / "python")
        self.remote = tmp / f"cluster-{name}"
        self.pulled = tmp / f"pulled-{name}"
        self.remote.mkdir()
        self.pulled.mkdir()
        self.server_rss = tmp / f"server-rss-{name}.txt"
        serve = f"/usr/bin/time -f %U,%S,%M -o {self.server_rss} {self.python} -m usr"
        self.cfg = tmp / f"remotes-{name}.toml"
        self.cfg.write_text(
            f'[remotes.loc]\ntype = "local"\nbase_dir = "{self.remote}"\nremote_usr = "{serve}"\n'
        )
        self.cfg.chmod(0o600)
        self.audit = tmp / f"audit-{name}.json"

    def usr(self, root: Path, *args: str, remote: bool = True) -> dict[str, Any]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("USR_")}
        env["USR_REMOTES_PATH"] = str(self.cfg)
        env["PYTHONPATH"] = str(self.path)
        argv = [self.python, "-m", "usr", "--root", str(root), *args]
        if remote:
            self.audit.unlink(missing_ok=True)
            argv += ["--audit-json-out", str(self.audit)]
        # cwd: ``-m usr`` puts the working directory first on sys.path, so run from the
        # tree, or its usr would be whatever checkout this script was started in.
        got = run(argv, env, self.server_rss if remote else None, cwd=self.path)
        if remote and self.audit.exists():
            got["bytes_moved"] = json.loads(self.audit.read_text())["data"]["bytes_moved"]["total"]
        return got


def bench_tree(tree: Tree, laptop: Path, emit: Any, bootstrap_only: bool = False) -> None:
    """First push, pull into a fresh root, one new file pushed and pulled (with
    ``bootstrap_only``, the first push and pull alone)."""
    shutil.rmtree(laptop / DS / ".usr" / "refs" / "remotes", ignore_errors=True)
    emit(tree.name, "first_push", tree.usr(laptop, "push", DS, "loc", "-y"))
    emit(tree.name, "first_pull", tree.usr(tree.pulled, "pull", DS, "loc", "-y"))
    if bootstrap_only:
        return
    new = laptop / DS / "_artifacts" / "scale" / "d0007" / f"new-{tree.name}.bin"
    new.write_bytes(os.urandom(1024))
    emit(tree.name, "snapshot_one", tree.usr(laptop, "snapshot", DS, "-m", "one", remote=False))
    emit(tree.name, "one_file_push", tree.usr(laptop, "push", DS, "loc", "-y"))
    emit(tree.name, "one_file_pull", tree.usr(tree.pulled, "pull", DS, "loc", "-y"))


def bench_rsync(laptop: Path, tmp: Path, emit: Any) -> None:
    dest = tmp / "rsync-dest"
    env = dict(os.environ)
    emit("rsync", "first_push", run(["rsync", "-a", f"{laptop / DS}/", f"{dest}/"], env))
    (laptop / DS / "_artifacts" / "scale" / "d0007" / "new-rsync.bin").write_bytes(b"x" * 1024)
    emit("rsync", "one_file_push", run(["rsync", "-a", f"{laptop / DS}/", f"{dest}/"], env))


def _commit(tree: Path) -> str:
    r = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
                       capture_output=True, text=True, check=False)  # fmt: skip
    return r.stdout.strip() or "archive"


#: Run in each tree's Python: ``revlist.missing_objects`` of one new file over the have,
#: timed, with the peak of Python's allocations during it and the process's VmHWM after.
_NEGOTIATE = """
import json, resource, sys, time, tracemalloc
import pygit2
from usr.store import revlist
repo = pygit2.Repository(sys.argv[1])
tracemalloc.start()
t0 = time.perf_counter()
ids = revlist.missing_objects(repo, [sys.argv[2]], [sys.argv[3]])
took = time.perf_counter() - t0
peak = tracemalloc.get_traced_memory()[1]
print(json.dumps({"wall_s": round(took, 4), "objects": len(ids),
                  "py_peak_mb": round(peak / 2**20, 2),
                  "rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
"""


def bench_negotiation(
    trees: list[tuple[str, Path]], files: int, dirs: int, tmp: Path, emit: Any
) -> None:
    """The negotiation alone, in a bare repository of ``files`` blobs in ``dirs`` trees
    built with pygit2: the objects of one new file over the previous commit."""
    import pygit2

    repo = pygit2.init_repository(str(tmp / "negotiate.git"), bare=True)
    rng = random.Random(3)
    root = repo.TreeBuilder()
    subs = []
    for d in range(dirs):
        tb = repo.TreeBuilder()
        for i in range(d, files, dirs):
            tb.insert(
                f"f{i:07d}.bin", repo.create_blob(rng.randbytes(64)), pygit2.GIT_FILEMODE_BLOB
            )
        subs.append(tb)
        root.insert(f"d{d:04d}", tb.write(), pygit2.GIT_FILEMODE_TREE)
    sig = pygit2.Signature("b", "b@example.invalid", 1_700_000_000, 0)
    first = repo.create_commit(None, sig, sig, "all", root.write(), [])
    subs[7].insert("new.bin", repo.create_blob(b"new"), pygit2.GIT_FILEMODE_BLOB)
    root.insert("d0007", subs[7].write(), pygit2.GIT_FILEMODE_TREE)
    second = repo.create_commit(None, sig, sig, "one", root.write(), [first])
    for name, tree in trees:
        env = {k: v for k, v in os.environ.items() if not k.startswith("USR_")}
        env["PYTHONPATH"] = str(tree)
        python = str(tree / ".venv" / "bin" / "python")
        argv = [python, "-c", _NEGOTIATE, repo.path, str(second), str(first)]
        r = subprocess.run(argv, env=env, capture_output=True, text=True, check=True, cwd=tree)
        emit(name, "negotiate_one_file", json.loads(r.stdout))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--dirs", type=int, default=1000)
    ap.add_argument("--tree", action="append", required=True, help="NAME=DIR[@COMMIT]")
    ap.add_argument("--out", type=Path, required=True, help="JSONL file appended to")
    ap.add_argument("--tmp", type=Path, default=None, help="scratch parent dir")
    ap.add_argument("--negotiation-only", action="store_true",
                    help="time revlist alone in a bare repository (no CLI, no rsync)")  # fmt: skip
    ap.add_argument("--bootstrap-only", action="store_true",
                    help="the first push and pull of each tree only (no rsync)")  # fmt: skip
    args = ap.parse_args()
    # NAME=DIR[@COMMIT]: the commit names an archived copy (no .git) in the results.
    specs = [(k, *v.partition("@")[::2]) for k, v in (t.split("=", 1) for t in args.tree)]
    trees = [(k, Path(v).resolve()) for k, v, _ in specs]
    tmp = Path(tempfile.mkdtemp(prefix="usr-scale-ab-", dir=args.tmp))
    commits = {k: c or _commit(Path(v)) for k, v, c in specs}

    def emit(name: str, step: str, got: dict[str, Any]) -> None:
        line = {"bench": "scale_ab", "tree": name, "commit": commits.get(name), "step": step,
                "files": args.files, "dirs": args.dirs, **got}  # fmt: skip
        print(json.dumps(line), flush=True)
        with args.out.open("a") as fh:
            fh.write(json.dumps(line) + "\n")

    try:
        if args.negotiation_only:
            bench_negotiation(trees, args.files, args.dirs, tmp, emit)
            return 0
        laptop = tmp / "laptop"
        first = Tree(*trees[0], tmp)
        first.usr(laptop, "init", DS, "--source", "benchmark", remote=False)
        write_files(laptop / DS / "_artifacts" / "scale", args.files, args.dirs)
        emit(
            trees[0][0],
            "snapshot_all",
            first.usr(laptop, "snapshot", DS, "-m", "files", remote=False),
        )
        others = [first] + [Tree(k, v, tmp) for k, v in trees[1:]]
        for tree in others:
            bench_tree(tree, laptop, emit, args.bootstrap_only)
        if not args.bootstrap_only:
            bench_rsync(laptop, tmp, emit)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
