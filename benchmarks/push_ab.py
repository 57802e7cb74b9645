"""``usr push`` of N small files to a local remote by two checkouts of usr, alternated.

    uv run python benchmarks/push_ab.py --files 20000 --rounds 3 \\
        --tree main=/tmp/recv-base --tree branch=.

Each ``--tree NAME=DIR`` is a checkout with its own ``.venv`` (``uv run`` made there once).
One dataset of N ~10 KB files is recorded, then each round pushes it with every tree in
turn to a fresh remote dir (a bootstrap push; the ``local`` remote runs the server as a
subprocess of the client, so the CPU figure is client + server). Nothing is deleted until
the end: on ext4, files created within minutes of a mass delete cost several times more
(``recently_deleted`` in ``ext4_create``), which would favour whichever tree ran first.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import datagen  # noqa: E402

from usr.dataset import Dataset  # noqa: E402


def push(tree: Path, root: Path, cfg: Path, *args: str, env: dict[str, str] | None = None) -> float:
    """Run ``usr`` from ``tree`` (``env``: more environment); returns the CPU seconds of
    it and its children."""
    env = dict(os.environ, USR_REMOTES_PATH=str(cfg), **(env or {}))
    before = os.times()
    python = str(tree / ".venv" / "bin" / "python")
    r = subprocess.run(
        [python, "-m", "usr", "--root", str(root), *args],
        env=env,
        capture_output=True,
        text=True,
        cwd=tree,
        check=False,
    )
    after = os.times()
    if r.returncode != 0:
        raise SystemExit(f"usr {' '.join(args)} from {tree}: {r.stderr.strip()}")
    return (after.children_user + after.children_system) - (
        before.children_user + before.children_system
    )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tree", action="append", required=True, help="NAME=DIR")
    args = ap.parse_args()
    trees = {k: Path(v).resolve() for k, v in (t.split("=", 1) for t in args.tree)}
    tmp = Path(tempfile.mkdtemp(prefix="usr-push-ab-"))
    try:
        local = tmp / "laptop"
        local.mkdir()
        ds = Dataset.init(local, "bench/small", source="benchmark")
        reads = ds.path / "_artifacts" / "reads"
        datagen.write_files(reads, args.files, seed=6, kind="fasta", size=10_000)
        first = next(iter(trees.values()))
        push(first, local, tmp / "none.toml", "snapshot", "bench/small", "-m", "reads")
        got: dict[str, list[tuple[float, float]]] = {k: [] for k in trees}
        for i in range(args.rounds):
            for name, tree in trees.items():
                remote = tmp / f"cluster-{name}-{i}"
                remote.mkdir()
                cfg = tmp / f"remotes-{name}-{i}.toml"
                cfg.write_text(f'[remotes.loc]\ntype = "local"\nbase_dir = "{remote}"\n')
                cfg.chmod(0o600)
                shutil.rmtree(ds.path / ".usr" / "refs" / "remotes", ignore_errors=True)
                start = time.perf_counter()
                cpu = push(tree, local, cfg, "push", "bench/small", "loc", "-y")
                got[name].append((time.perf_counter() - start, cpu))
        for name, runs in got.items():
            walls = " ".join(f"{w:.2f}" for w, _ in runs)
            cpus = " ".join(f"{c:.2f}" for _, c in runs)
            print(
                f"{name}: push of {args.files} files: wall {walls} s (median "
                f"{statistics.median(w for w, _ in runs):.2f}); CPU client+server {cpus} s "
                f"(median {statistics.median(c for _, c in runs):.2f})"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
