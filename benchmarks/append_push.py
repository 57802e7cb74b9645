"""``usr push`` of a 1% append to a ``local`` remote, client and server CPU apart, by one
or more checkouts of usr, alternated; optionally under cProfile on both ends.

    uv run python benchmarks/append_push.py --rows 5000000 --rounds 2 \\
        --tree main=/tmp/append-main --tree branch=.
    uv run python benchmarks/append_push.py --rows 5000000 --rounds 1 --tree branch=. \\
        --profile /tmp/append-prof

Each ``--tree NAME=DIR`` is a checkout with its own ``.venv``. One dataset of ``--rows``
rows is recorded and pushed once (a bootstrap, which leaves an id-keys entry on both
sides). Then each round, for every tree in turn, appends 1% rows
(``Dataset.append_records``, as a batch job does) and pushes. Both ends run under
``benchmarks/probe.py`` (the server as ``remote_usr``), so the CPU seconds of the client
and of ``usr plumbing serve`` are reported apart. ``--profile DIR`` also runs both under
``python -m cProfile`` and leaves ``DIR/<tree>-<round>-{client,server}.prof``. For
scale, ``rsync -a`` (a local copy: whole files) and ``rsync -a --no-whole-file`` (the
delta algorithm, as over ssh) of the same change are timed in each round, into copies of
the remote dataset kept for them. The machine may be loaded: compare CPU seconds first.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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
import tomli_w  # noqa: E402

from usr.dataset import Dataset  # noqa: E402
from usr.store import Store  # noqa: E402

DS = "bench/ds"


def _usr(tree: Path, profile: Path | None, tag: str) -> list[str]:
    python = str(tree / ".venv" / "bin" / "python")
    prof = ["-m", "cProfile", "-o", f"{profile}/{tag}.prof"] if profile else []
    return [python, *prof, str(tree / "benchmarks" / "probe.py")]


def push(tree: Path, work: Path, name: str, profile: Path | None, tag: str) -> dict[str, float]:
    """One ``usr push`` from ``tree``; wall seconds and the probe's CPU seconds per end."""
    log = work / f"probe-{tag}.jsonl"
    log.unlink(missing_ok=True)
    server = _usr(tree, profile, f"{tag}-server")
    remote = {
        "type": "local",
        "base_dir": str(work / f"cluster-{name}"),
        "remote_usr": " ".join([*server, "--log", str(log), "--"]),
    }
    cfg = work / f"remotes-{name}.toml"
    cfg.write_text(tomli_w.dumps({"remotes": {"bench": remote}}))
    cfg.chmod(0o600)
    env = dict(os.environ, USR_REMOTES_PATH=str(cfg))
    # Cache bytecode as an installed usr does (see docs/performance.md, "Bytecode").
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    argv = [*_usr(tree, profile, f"{tag}-client"), "--log", str(log), "--"]
    argv += ["--root", str(work / f"laptop-{name}"), "push", DS, "bench", "-y"]
    start = time.perf_counter()
    r = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=tree, check=False)
    wall = time.perf_counter() - start
    if r.returncode != 0:
        raise SystemExit(f"push from {tree}: {r.stderr.strip()}")
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    cpu = {("server" if ln["args"][:2] == ["plumbing", "serve"] else "client"): ln for ln in lines}
    return {
        "wall": wall,
        "cpu_client": cpu["client"]["cpu_seconds"],
        "cpu_server": cpu["server"]["cpu_seconds"],
        "rss_client_mib": cpu["client"]["maxrss_kib"] / 1024,
        "rss_server_mib": cpu["server"]["maxrss_kib"] / 1024,
    }


def rsync(src: Path, dst: Path, *flags: str) -> dict[str, float]:
    """``rsync -a`` of ``src`` into ``dst`` (store excluded): wall and CPU seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(["rsync", "-a", *flags, "--exclude", ".usr", f"{src}/", f"{dst}/"], check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {"wall": wall, "cpu": cpu}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--tree", action="append", required=True, help="NAME=DIR")
    ap.add_argument("--profile", type=Path, help="leave cProfile output of both ends here")
    ap.add_argument("--out", type=Path, help="also write the report here (JSON)")
    args = ap.parse_args()
    trees = {k: Path(v).resolve() for k, v in (t.split("=", 1) for t in args.tree)}
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="append-push-"))
    try:
        seed = work / "seed"
        ds = Dataset.init(seed, DS, source="benchmark")
        datagen.write_records(ds, args.rows, seed=1)
        Store.open(ds.path).record("benchmark import")
        for name, tree in trees.items():
            shutil.copytree(seed, work / f"laptop-{name}", symlinks=True)
            (work / f"cluster-{name}").mkdir()
            push(tree, work, name, None, f"{name}-bootstrap")
        remote = work / f"cluster-{next(iter(trees))}" / DS
        for flags in ("whole", "delta"):
            shutil.copytree(remote, work / f"rsync-{flags}", symlinks=True)
        got: dict[str, list[dict[str, float]]] = {k: [] for k in [*trees, "rsync", "rsync-delta"]}
        appended = max(1, args.rows // 100)
        for n in range(args.rounds):
            names = list(trees) if n % 2 == 0 else list(reversed(trees))
            for name in names:
                mine = Dataset.open(work / f"laptop-{name}", DS)
                datagen.append_rows(mine, appended, seed=10 + n)
                got[name].append(push(trees[name], work, name, args.profile, f"{name}-{n}"))
            src = work / f"laptop-{names[0]}" / DS
            got["rsync"].append(rsync(src, work / "rsync-whole"))
            got["rsync-delta"].append(rsync(src, work / "rsync-delta", "--no-whole-file"))
        report = {
            "rows": args.rows,
            "appended_rows_each": appended,
            "records_bytes": (work / f"laptop-{names[0]}" / DS / "records.parquet").stat().st_size,
            "rounds": args.rounds,
            "trees": {k: str(v) for k, v in trees.items()},
            "load_after": os.getloadavg(),
            "push": {
                name: {
                    **{f"{k}_median": round(statistics.median(r[k] for r in rs), 2) for k in rs[0]},
                    "runs": [{k: round(v, 2) for k, v in r.items()} for r in rs],
                }
                for name, rs in got.items()
            },
        }
        text = json.dumps(report, indent=2)
        print(text)
        if args.out:
            args.out.write_text(text + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
