"""No-op ``usr diff``, ``push`` and ``pull`` of N small files by two checkouts of usr.

    uv run python benchmarks/noop_ab.py --files 100000 --rounds 3 \\
        --tree main=/tmp/noop-base --tree branch=.

Each ``--tree NAME=DIR`` is a checkout with its own ``.venv``. One dataset of N 1 KiB files
in 1,000 directories is recorded and pushed to a ``local`` remote once; then each round
runs, with every tree in turn, the three commands on the synced pair (nothing moves, both
sides walk their files: the path where the two walks can overlap). Wall seconds, median
of the rounds, printed per tree and command.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import datagen  # noqa: E402
from push_ab import push as run_usr  # noqa: E402

from usr.dataset import Dataset  # noqa: E402

DS = "bench/many"
COMMANDS = (("diff", ()), ("push", ("-y",)), ("pull", ("-y",)))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tree", action="append", required=True, help="NAME=DIR")
    args = ap.parse_args()
    trees = {k: Path(v).resolve() for k, v in (t.split("=", 1) for t in args.tree)}
    tmp = Path(tempfile.mkdtemp(prefix="usr-noop-ab-"))
    local, remote = tmp / "laptop", tmp / "cluster"
    local.mkdir()
    remote.mkdir()
    cfg = tmp / "remotes.toml"
    cfg.write_text(f'[remotes.loc]\ntype = "local"\nbase_dir = "{remote}"\n')
    cfg.chmod(0o600)
    ds = Dataset.init(local, DS, source="benchmark")
    datagen.write_many_files(ds.path / "_artifacts", args.files, seed=3)
    first = next(iter(trees.values()))
    run_usr(first, local, cfg, "snapshot", DS, "-m", "files")
    run_usr(first, local, cfg, "push", DS, "loc", "-y")
    got: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for name, tree in trees.items():
            for command, extra in COMMANDS:
                start = time.perf_counter()
                run_usr(tree, local, cfg, command, DS, "loc", *extra)
                got.setdefault((name, command), []).append(time.perf_counter() - start)
    for (name, command), walls in got.items():
        runs = " ".join(f"{w:.2f}" for w in walls)
        print(
            f"{name}: no-op {command} of {args.files} files: wall {runs} s "
            f"(median {statistics.median(walls):.2f})"
        )
    print(f"(data left in {tmp})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
