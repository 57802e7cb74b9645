"""``usr push`` of a 1% append to a ``local`` remote, with and without the id-keys cache.

    uv run python benchmarks/idkeys_push.py --rows 5000000 --rounds 2

One dataset of ``--rows`` rows is recorded and pushed (a bootstrap push, which leaves an
id-keys entry on both sides). Then each round appends 1% rows (``Dataset.append_records``)
and pushes twice in turn: once as is (both gates find the entry of the table before the
append) and once after removing both sides' ``.usr/idkeys/`` (the check before the cache:
every id decoded; it also writes the first entry, ~8% more CPU than the check before).
The order alternates between rounds. Reported per push: wall seconds and CPU seconds of
the client and its children (the ``local`` remote's server is one), median over rounds.
The machine may be loaded: compare CPU seconds first.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import datagen  # noqa: E402
import tomli_w  # noqa: E402
from push_ab import push  # noqa: E402

from usr import idkeys  # noqa: E402
from usr.dataset import Dataset  # noqa: E402
from usr.store import Store  # noqa: E402

TREE = HERE.parent
DS = "bench/ds"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="idkeys-push-"))
    try:
        local, cluster = work / "laptop", work / "cluster"
        cluster.mkdir()
        cfg = work / "remotes.toml"
        remote = {"type": "local", "base_dir": str(cluster)}
        cfg.write_text(tomli_w.dumps({"remotes": {"bench": remote}}))
        cfg.chmod(0o600)
        ds = Dataset.init(local, DS, source="benchmark")
        datagen.write_records(ds, args.rows, seed=1)
        Store.open(ds.path).record("benchmark import")
        push(TREE, local, cfg, "push", DS, "bench", "-y")
        runs: dict[str, list[dict[str, float]]] = {"cached": [], "no-cache": []}
        for n in range(args.rounds):
            order = ["cached", "no-cache"] if n % 2 == 0 else ["no-cache", "cached"]
            for i, how in enumerate(order):
                datagen.append_rows(ds, max(1, args.rows // 100), seed=10 + 2 * n + i)
                if how == "no-cache":
                    for side in (ds.path, cluster / DS):
                        shutil.rmtree(side / ".usr" / idkeys.CACHE_DIR, ignore_errors=True)
                start = time.perf_counter()
                cpu = push(TREE, local, cfg, "push", DS, "bench", "-y")
                runs[how].append({"wall": time.perf_counter() - start, "cpu": cpu})
        report = {
            "rows": args.rows,
            "appended_rows_each": max(1, args.rows // 100),
            "records_bytes": ds.records_path.stat().st_size,
            "rounds": args.rounds,
            "push": {
                how: {
                    "wall_s": round(statistics.median(r["wall"] for r in rs), 2),
                    "cpu_s": round(statistics.median(r["cpu"] for r in rs), 2),
                    "runs": [{k: round(v, 2) for k, v in r.items()} for r in rs],
                }
                for how, rs in runs.items()
            },
        }
        print(json.dumps(report, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
