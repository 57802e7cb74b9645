"""Start-up of small usr commands, two or more checkouts alternated: wall and CPU seconds.

    uv run python benchmarks/startup_ab.py --rounds 11 --root DIR --dataset DS \\
        main=/tmp/append-base branch=.

Each ``NAME=DIR`` is a checkout with its own ``.venv`` (its ``usr`` console script is
run). ``--root``/``--dataset``: a datasets root holding a clean dataset, for a no-op
``usr status`` and for ``usr plumbing serve``. A serve is timed to its first byte on
stdout (the protocol's greeting, before ``hello``), then stdin is closed. Reported per
command and checkout: median wall seconds and median CPU seconds of the child (user +
system). Bytecode is cached, as for an installed usr (``PYTHONDONTWRITEBYTECODE`` is
dropped from the children's environment); run each command once before measuring.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import time


def commands(root: str, dataset: str) -> dict[str, list[str]]:
    return {
        "--help": ["--help"],
        "status (no-op)": ["--root", root, "status", dataset],
        "plumbing --help": ["plumbing", "--help"],
        "serve, fast path (to hello)": ["plumbing", "serve", "--root", root],
        "serve --repo-root, click (to hello)": [
            "plumbing",
            "serve",
            "--root",
            root,
            "--repo-root",
            root,
        ],
    }


def one(exe: str, args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds of one run (a serve: until its first byte on stdout)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    if args[:2] == ["plumbing", "serve"]:
        proc = subprocess.Popen(
            [exe, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        assert proc.stdin is not None and proc.stdout is not None
        if not proc.stdout.read(1):
            raise SystemExit(f"{exe} {' '.join(args)}: no greeting")
        wall = time.perf_counter() - start
        proc.stdin.close()
        proc.stdout.read()
        proc.wait()
    else:
        subprocess.run([exe, *args], capture_output=True, env=env, check=True)
        wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--root", required=True)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("trees", nargs="+", help="NAME=DIR")
    args = ap.parse_args()
    trees = dict(t.split("=", 1) for t in args.trees)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    report: dict[str, dict[str, dict[str, float]]] = {}
    for name, argv in commands(args.root, args.dataset).items():
        got: dict[str, list[tuple[float, float]]] = {t: [] for t in trees}
        for n in range(args.rounds):
            for tree in list(trees) if n % 2 == 0 else list(reversed(trees)):
                exe = os.path.join(trees[tree], ".venv", "bin", "usr")
                got[tree].append(one(exe, argv, env))
        report[name] = {
            tree: {
                "wall_median": round(statistics.median(w for w, _ in runs), 3),
                "cpu_median": round(statistics.median(c for _, c in runs), 3),
            }
            for tree, runs in got.items()
        }
    print(json.dumps({"rounds": args.rounds, "load_after": os.getloadavg(), "commands": report}))


if __name__ == "__main__":
    main()
