"""Pushes of one big records.parquet by two checkouts of usr, alternated, and rsync -a.

    uv run python benchmarks/chunkstream_ab.py --size-mib 1024 --rounds 3 \\
        --tree main=/tmp/cs-main --tree branch=. --out docs/performance-results/x.json

Each ``--tree NAME=DIR`` is a checkout with its own ``.venv``. One dataset whose
``records.parquet`` is about ``--size-mib`` is recorded (state A), and a copy of it gets
1% more rows appended and recorded (state B, a child of A). Each round, for every tree and
transport (a ``local`` remote, and the loopback sshd of benchmarks/loopback.py with the
server run from the same tree), A is pushed to a fresh remote dir (bootstrap) and then B
over it (the 1% append); the wall time of each ``usr push`` is taken. ``rsync -a`` over
the same sshd does the same two copies of the dataset directory (store excluded). Remote
dirs are removed after each round (big files only: no small-file delete penalty).

``--pull``: instead, state A is pushed once, and each round every tree pulls it into an
empty laptop root (a bootstrap pull) over both transports. Two names for the same tree
with ``--env NAME:USR_MANIFEST_FIRST=0`` compare the capability on and off.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import datagen  # noqa: E402
import loopback  # noqa: E402
import push_ab  # noqa: E402
from scenarios import RSYNC_EXCLUDES  # noqa: E402

from usr.dataset import Dataset  # noqa: E402

DS = "bench/big"


def usr(
    tree: Path, root: Path, cfg: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[float, float]:
    """Run ``usr`` from ``tree``; returns its wall seconds and the CPU seconds of it and
    its children (a ``local`` remote's server is one; an ssh server is not)."""
    start = time.perf_counter()
    cpu = push_ab.push(tree, root, cfg, *args, env=env)
    return time.perf_counter() - start, cpu


def build(tmp: Path, size: int, tree: Path) -> tuple[Path, Path]:
    """Laptop copies at state A (``size`` bytes of records) and B (A + 1% rows)."""
    a, b = tmp / "laptop-a", tmp / "laptop-b"
    a.mkdir()
    ds = Dataset.init(a, DS, source="benchmark")
    rows = datagen.rows_for(size, datagen.bytes_per_row(tmp))
    datagen.write_records(ds, rows, seed=1)
    usr(tree, a, tmp / "none.toml", "snapshot", DS, "-m", "import")
    shutil.copytree(a, b, symlinks=True)
    datagen.append_rows(Dataset.open(b, DS), max(1, rows // 100), seed=2)
    usr(tree, b, tmp / "none.toml", "snapshot", DS, "-m", "append")
    return a, b


def configs(tmp: Path, loop: Any, trees: dict[str, Path], remote: Path) -> dict[tuple, Path]:
    """A remotes.toml per (tree, transport) whose server runs from that tree."""
    import tomli_w

    out = {}
    for name, tree in trees.items():
        cmd = f"{shlex.quote(str(tree / '.venv' / 'bin' / 'python'))} -m usr"
        tables = {
            "local": {"type": "local", "base_dir": str(remote), "remote_usr": cmd},
            "ssh": loop.info.profile(remote, remote_usr=cmd),
        }
        for kind, table in tables.items():
            path = tmp / f"remotes-{name}-{kind}.toml"
            path.write_text(tomli_w.dumps({"remotes": {"r": table}}))
            path.chmod(0o600)
            out[(name, kind)] = path
    return out


def one_round(a: Path, b: Path, tree: Path, cfg: Path, remote: Path, env: dict) -> dict:
    """Bootstrap push of A, then the 1% append push of B, to an empty ``remote``."""
    for laptop in (a, b):
        shutil.rmtree(laptop / DS / ".usr" / "refs" / "remotes", ignore_errors=True)
    boot, boot_cpu = usr(tree, a, cfg, "push", DS, "r", "-y", env=env)
    append, append_cpu = usr(tree, b, cfg, "push", DS, "r", "-y", env=env)
    return {
        "bootstrap": boot,
        "append": append,
        "bootstrap_cpu": boot_cpu,
        "append_cpu": append_cpu,
    }


def pull_round(tree: Path, cfg: Path, root: Path, env: dict) -> dict:
    """A bootstrap pull of the remote's state into the empty ``root``."""
    root.mkdir()
    wall, cpu = usr(tree, root, cfg, "pull", DS, "r", "-y", env=env)
    shutil.rmtree(root)
    return {"pull": wall, "pull_cpu": cpu}


def rsync_round(a: Path, b: Path, loop: Any, remote: Path) -> dict:
    out = {}
    for label, src in (("bootstrap", a), ("append", b)):
        argv = ["rsync", "-a", "--delete", *RSYNC_EXCLUDES, "-e", loop.ssh_command()]
        argv += [f"{src / DS}/", f"bench:{remote / 'rsync'}/"]
        start = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        out[label] = time.perf_counter() - start
    return out


def load() -> float:
    """The 1-minute load average (other work on the machine skews wall times)."""
    return os.getloadavg()[0]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tree", action="append", required=True, help="NAME=DIR")
    ap.add_argument("--env", action="append", default=[], help="NAME:VAR=VALUE for a tree")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--pull", action="store_true", help="bootstrap pulls instead of pushes")
    args = ap.parse_args()
    trees = {k: Path(v).resolve() for k, v in (t.split("=", 1) for t in args.tree)}
    envs: dict[str, dict[str, str]] = {k: {} for k in trees}
    for spec in args.env:
        name, assign = spec.split(":", 1)
        var, value = assign.split("=", 1)
        envs[name][var] = value
    tmp = Path(tempfile.mkdtemp(prefix="usr-chunkstream-ab-"))
    remote = tmp / "cluster"
    remote.mkdir()
    loop = loopback.start(tmp / "loop", remote)
    times: dict[str, list[dict]] = {}
    try:
        a, b = build(tmp, args.size_mib << 20, next(iter(trees.values())))
        cfgs = configs(tmp, loop, trees, remote)
        if args.pull:
            first = next(iter(cfgs))
            usr(trees[first[0]], a, cfgs[first], "push", DS, "r", "-y")
        for _ in range(args.rounds if not args.pull else 0):
            for (name, kind), cfg in cfgs.items():
                got = one_round(a, b, trees[name], cfg, remote, envs[name])
                got["load"] = load()
                times.setdefault(f"{name}/{kind}", []).append(got)
                shutil.rmtree(remote / DS.split("/")[0])
                print(f"{name}/{kind}: {got}", flush=True)
            got = rsync_round(a, b, loop, remote)
            got["load"] = load()
            times.setdefault("rsync/ssh", []).append(got)
            shutil.rmtree(remote / "rsync")
            print(f"rsync/ssh: {got}", flush=True)
        for _ in range(args.rounds if args.pull else 0):
            for (name, kind), cfg in cfgs.items():
                got = pull_round(trees[name], cfg, tmp / "laptop-pull", envs[name])
                got["load"] = load()
                times.setdefault(f"{name}/{kind}", []).append(got)
                print(f"{name}/{kind}: {got}", flush=True)
        size = (a / DS / "records.parquet").stat().st_size
        size_b = (b / DS / "records.parquet").stat().st_size
    finally:
        loop.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    doc = summary(times, size, size_b, args)
    print(json.dumps(doc["median_seconds"], indent=1))
    if args.out:
        args.out.write_text(json.dumps(doc, indent=1) + "\n")
    return 0


def summary(times: dict[str, list[dict]], size: int, size_b: int, args: Any) -> dict:
    medians = {
        run: {k: round(statistics.median(r[k] for r in rounds), 3) for k in rounds[0]}
        for run, rounds in times.items()
    }
    return {
        "benchmark": "benchmarks/chunkstream_ab.py",
        "records_bytes": size,
        "records_bytes_after_append": size_b,
        "rounds": args.rounds,
        "trees": args.tree,
        "env": args.env,
        "cpus": os.cpu_count(),
        "seconds": times,
        "median_seconds": medians,
    }


if __name__ == "__main__":
    raise SystemExit(main())
