"""Where the gate's duplicate-id check holds its memory: one check in a child process.

    uv run python benchmarks/idkeys_mem.py TABLE [--cache DIR] [--copy-cache DIR]

Runs ``usr.sync.gate.check_records`` on the Parquet file ``TABLE`` (the working-file path,
what a push client checks) with the id-keys cache ``--cache`` (none by default; with
``--copy-cache`` that directory is copied there first, so each run is the first check of
its table). Prints one JSON line: the child's RSS before the check and its peak (VmHWM),
the peak of memory traced by ``tracemalloc`` during the check (numpy's arrays are traced;
Arrow's buffers are not), the peak of Arrow's default memory pool, the CPU seconds of the
check, and the same figures per row of the table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def _status(field: str) -> float:
    """MiB of ``field`` in /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def child(table: Path, cache: Path | None) -> None:
    import tracemalloc

    import numpy  # noqa: F401 - imported before the measurement, as in a running usr
    import pyarrow as pa
    import pyarrow.parquet as pq

    from usr import idkeys
    from usr.sync.gate import check_records

    rows = pq.ParquetFile(table).metadata.num_rows
    seen: list[idkeys.Outcome] = []
    real = idkeys.check

    def spy(*a: object) -> idkeys.Outcome:
        seen.append(real(*a))
        return seen[-1]

    idkeys.check = spy
    base = _status("VmRSS")
    tracemalloc.start()
    cpu = os.times()
    with table.open("rb") as fh:
        check_records(fh, "bench", cache)
    end = os.times()
    traced = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    mib = 1 << 20
    doc = {
        "rows": rows,
        "cpu_s": round((end.user - cpu.user) + (end.system - cpu.system), 3),
        "rss_before_mib": round(base, 1),
        "peak_rss_mib": round(_status("VmHWM"), 1),
        "traced_peak_mib": round(traced / mib, 1),
        "arrow_pool_peak_mib": round(pa.default_memory_pool().max_memory() / mib, 1),
        "arrow_backend": pa.default_memory_pool().backend_name,
        "traced_bytes_per_row": round(traced / max(rows, 1), 1),
        "rss_above_imports_bytes_per_row": round((_status("VmHWM") - base) * mib / max(rows, 1), 1),
        "outcome": {"reused": seen[0].reused, "decoded": seen[0].decoded} if seen else None,
    }
    print(json.dumps(doc))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("table", type=Path)
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--copy-cache", type=Path, default=None)
    ap.add_argument("--child", action="store_true")
    args = ap.parse_args()
    if args.child:
        child(args.table, args.cache)
        return
    if args.copy_cache is not None and args.cache is not None:
        shutil.rmtree(args.cache, ignore_errors=True)
        shutil.copytree(args.copy_cache, args.cache)
    cmd = [sys.executable, __file__, "--child", str(args.table)]
    if args.cache is not None:
        cmd += ["--cache", str(args.cache)]
    start = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    print(json.dumps(dict(doc, wall_s=round(time.perf_counter() - start, 3))))


if __name__ == "__main__":
    main()
