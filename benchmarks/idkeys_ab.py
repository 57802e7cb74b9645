"""The gate's duplicate-id check of a 1% append, without and with the id-keys cache.

    uv run python benchmarks/idkeys_ab.py --rows 5000000 --rounds 3

A dataset of ``--rows`` rows (datagen: 100-200 bp DNA, usr's writer) is recorded, the
id-keys cache primed by checking it (as the previous sync's gate did), then 1% rows are
appended (``Dataset.append_records``) and recorded. Each measurement is one child process
running the gate's ``check_records`` on the appended table, either on the working file
(what the push client checks) or through the store (``EntryFile``, what the server and a
pull check), with no cache (the check before usr.idkeys: every id decoded and sorted), with
the primed cache (restored before every round, so each round is the first check of this
append), or ``cold`` (an empty cache: the full check plus writing the first entry).
Reported per mode: median wall seconds and CPU seconds (user + system of the child, every
thread) of the check alone, the child's peak RSS and its RSS before the check (imports).
The machine may be loaded: compare CPU seconds first.
"""

from __future__ import annotations

import argparse
import json
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

MODES = ("working-none", "working-cached", "working-cold", "store-none", "store-cached")


def child(dataset: Path, mode: str, cache: str) -> None:
    """One measured check; prints ``{"wall", "cpu", "rss_mib", "outcome"}``."""
    from usr import idkeys
    from usr.layout import RECORDS_FILE
    from usr.store import Store
    from usr.store.entryfile import EntryFile
    from usr.sync.gate import check_records

    cache_dir = None if cache == "none" else Path(cache)
    seen: list[idkeys.Outcome] = []
    real = idkeys.check

    def spy(*a: object) -> idkeys.Outcome:  # what the gate's check did, for the report
        seen.append(real(*a))
        return seen[-1]

    idkeys.check = spy
    import numpy  # noqa: F401 - imported before the clock starts, as in a running usr
    import pyarrow.parquet  # noqa: F401

    import usr.records  # noqa: F401

    base_rss = _status("VmRSS")
    start, cpu = time.perf_counter(), os.times()
    if mode.startswith("working"):
        with (dataset / RECORDS_FILE).open("rb") as fh:
            check_records(fh, "bench", cache_dir)
    else:
        store = Store.open(dataset, create=False)
        blob = str(store.repo[store.tree_of(store.head())][RECORDS_FILE].id)
        check_records(EntryFile(store, blob), "bench", cache_dir)
    wall = time.perf_counter() - start
    end = os.times()
    rss = _status("VmHWM")  # not ru_maxrss: it keeps the parent's peak across fork+exec
    outcome = {"reused": seen[0].reused, "decoded": seen[0].decoded}
    cpu_s = (end.user - cpu.user) + (end.system - cpu.system)
    doc = {"wall": wall, "cpu": cpu_s, "rss_mib": rss, "base_rss_mib": base_rss}
    print(json.dumps(dict(doc, outcome=outcome)))


def _status(field: str) -> float:
    """MiB of ``field`` in /proc/self/status: VmRSS (resident now), VmHWM (peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run_child(dataset: Path, mode: str, cache: Path | None) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(dataset), mode, str(cache or "none")],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--child", nargs=3, metavar=("DATASET", "MODE", "CACHE"))
    args = ap.parse_args()
    if args.child:
        child(Path(args.child[0]), args.child[1], args.child[2])
        return

    import datagen

    from usr import records
    from usr.dataset import Dataset
    from usr.store import Store

    work = Path(tempfile.mkdtemp(prefix="idkeys-ab-", dir=args.workdir))
    try:
        ds = Dataset.init(work / "root", "bench/ds", source="benchmark")
        t = time.perf_counter()
        datagen.write_records(ds, args.rows, seed=1)
        Store.open(ds.path).record("benchmark import")
        gen_s = time.perf_counter() - t
        primed = {"working": work / "cache-working", "store": work / "cache-store"}
        for side, cache in primed.items():
            run_child(ds.path, f"{side}-cold", cache)  # the previous sync's gate
        append = max(1, args.rows // 100)
        t = time.perf_counter()
        datagen.append_rows(ds, append, seed=4)
        Store.open(ds.path).record("benchmark append")
        append_s = time.perf_counter() - t
        results: dict[str, list[dict]] = {m: [] for m in MODES}
        for _ in range(args.rounds):
            for mode in MODES:
                side, how = mode.split("-")
                cache = None
                if how != "none":
                    cache = work / f"cache-{mode}"
                    shutil.rmtree(cache, ignore_errors=True)
                    if how == "cached" and primed[side].is_dir():
                        shutil.copytree(primed[side], cache)
                    # (above usr.unique_ids.PER_PASS rows no entry is written: none to copy)
                results[mode].append(run_child(ds.path, mode, cache))
        report = {
            "rows": args.rows,
            "appended_rows": append,
            "records_bytes": ds.records_path.stat().st_size,
            "row_groups": -(-(args.rows + append) // records.ROW_GROUP_ROWS),
            "generate_seconds": round(gen_s, 1),
            "append_and_record_seconds": round(append_s, 1),
            "rounds": args.rounds,
            "modes": {
                m: {
                    "wall_s": round(statistics.median(r["wall"] for r in runs), 3),
                    "cpu_s": round(statistics.median(r["cpu"] for r in runs), 3),
                    "peak_rss_mib": round(max(r["rss_mib"] for r in runs), 1),
                    "rss_before_check_mib": round(max(r["base_rss_mib"] for r in runs), 1),
                    "outcome": runs[-1]["outcome"],
                }
                for m, runs in results.items()
            },
        }
        print(json.dumps(report, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
