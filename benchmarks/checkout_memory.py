"""What a bootstrap checkout holds per file, by allocation site (tracemalloc).

    uv run python benchmarks/checkout_memory.py --files 50000 [--top 12] [--json]

N small files are recorded in one store; their objects are copied into an empty one, the
blobs streamed into its staging dir as a receive does (:class:`StreamStager`, which makes
the staged claims), and the target is checked out. The memory traced at the moment the
files are promoted and the ref is about to move (``checkout.before-ref``: the journal's
operations, the stat cache's updates and the staged claims are all still held) is
reported per file, with the sites that hold the most; and the peak over the whole
checkout. tracemalloc counts Python allocations only (not pygit2's), which is what grows
per file here; it slows the run several times, so no times are reported.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import tracemalloc
from pathlib import Path
from typing import Any

from usr import faults
from usr.store import Store
from usr.store import checkout as checkout_mod
from usr.store.streamstage import StreamStager


def _source(base: Path, files: int, dirs: int) -> tuple[Store, str]:
    for d in range(dirs):
        (base / f"d{d:04d}").mkdir(parents=True)
    for i in range(files):
        (base / f"d{i % dirs:04d}" / f"f{i:07d}.bin").write_bytes(b"%d\n" % i)
    store = Store.open(base)
    return store, store.record("all").commit


def measure(files: int, dirs: int, top: int, tmp: Path) -> dict[str, Any]:
    src, commit = _source(tmp / "src", files, dirs)
    dst = Store.open(tmp / "dst")
    blobs = []
    for oid in src.missing_objects([commit], []):
        kind, data = src.read_object(oid)
        dst.write_object(kind, data, expect=oid)
        if kind == "blob":
            blobs.append(oid)
    tree = dst.tree_of(commit)
    at_ref: dict[str, Any] = {}
    plain_point = faults.point

    def point(name: str) -> None:
        if name == checkout_mod.FAULT_BEFORE_REF and not at_ref:
            at_ref["current"] = tracemalloc.get_traced_memory()[0]
            at_ref["snapshot"] = tracemalloc.take_snapshot()
        plain_point(name)

    faults.point = point  # type: ignore[assignment]
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        stager = StreamStager(dst, tree)
        for oid in blobs:
            stager.on_blob(oid, src.read_object(oid)[1])
        staged = stager.result()
        del stager
        after_stream = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        checkout_mod.checkout(dst, commit, staged=staged)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        faults.point = plain_point  # type: ignore[assignment]
    assert dst.verify_working(commit) == []
    sites = at_ref["snapshot"].statistics("lineno")
    return {
        "bench": "checkout_memory",
        "files": files,
        "dirs": dirs,
        "claims_bytes_per_file": round((after_stream - base) / files, 1),
        "held_at_promote_bytes_per_file": round((at_ref["current"] - base) / files, 1),
        "checkout_peak_bytes_per_file": round((peak - base) / files, 1),
        "top_sites": [
            {
                "site": f"{s.traceback[0].filename.rsplit('/usr/', 1)[-1]}:{s.traceback[0].lineno}",
                "bytes_per_file": round(s.size / files, 1),
            }
            for s in sites[:top]
        ],  # fmt: skip
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", type=int, default=50_000)
    ap.add_argument("--dirs", type=int, default=250)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--json", action="store_true", help="one JSON line, no table")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="usr-checkout-mem-"))
    try:
        got = measure(args.files, args.dirs, args.top, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(got))
        return 0
    for key, value in got.items():
        if key != "top_sites":
            print(f"{key:34} {value}")
    for site in got["top_sites"]:
        print(f"  {site['bytes_per_file']:8.1f} B/file  {site['site']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
