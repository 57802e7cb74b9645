"""What a bootstrap push's comparison holds per file, as a list and as a spooled ChangeList.

    uv run python benchmarks/comparison_memory.py --files 50000 [--dirs 1000] [--json]

N small files are recorded in one store; the comparison a first push makes (the local
tree against no remote tree, :func:`usr.sync.trees.tree_diff`) is made twice: as the list
of ``FileChange`` objects it used to be (``diff_trees``) and as the
:class:`~usr.sync.changelist.ChangeList` it is now. For each, tracemalloc gives the bytes
held by the result and the peak while it is made, and the peak of the audit data built
from it (``audit.build``, which walks the changes in path order). The sizes are looked up
once before either is measured, so neither pays for them. tracemalloc counts Python
allocations only and slows the run; no times are reported.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import tracemalloc
from pathlib import Path
from typing import Any

from usr.store import Store
from usr.store.diff_tree import diff_trees
from usr.sync.audit import Comparison, Side, VerifyProfile, build
from usr.sync.trees import Sizes, tree_diff


def _source(base: Path, files: int, dirs: int) -> tuple[Store, str]:
    for d in range(dirs):
        (base / f"_auxiliary/d{d:04d}").mkdir(parents=True)
    for i in range(files):
        (base / f"_auxiliary/d{i % dirs:04d}" / f"f{i:07d}.bin").write_bytes(b"%d\n" % i)
    store = Store.open(base)
    return store, store.tree_of(store.record("all").commit)


def _traced(make: Any) -> tuple[Any, int, int]:
    """``(result, bytes held by it, peak above the start while it was made)``."""
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    result = make()
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return result, current - before, peak - before


def _audit_peak(changes: Any) -> int:
    cmp = Comparison("ds", "r", Side(exists=True), Side(exists=False), "local-ahead",
                     changes=changes)  # fmt: skip
    data, _held, peak = _traced(lambda: build(cmp, "push", VerifyProfile()))
    del data
    return peak


def measure(files: int, dirs: int, tmp: Path) -> dict[str, Any]:
    store, tree = _source(tmp / "src", files, dirs)
    sizes = Sizes(store)
    n = len(diff_trees(store.repo, tree, None, sizes))  # warms the sizes for both
    out: dict[str, Any] = {"files": files, "changes": n}
    for name, make in (
        ("list", lambda: diff_trees(store.repo, tree, None, sizes)),
        ("changelist", lambda: tree_diff(store, tree, None, sizes)),
    ):
        changes, held, peak = _traced(make)
        out[name] = {
            "held_bytes_per_change": round(held / n, 1),
            "peak_bytes_per_change": round(peak / n, 1),
            "audit_peak_bytes_per_change": round(_audit_peak(changes) / n, 1),
        }
        del changes
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=50_000)
    parser.add_argument("--dirs", type=int, default=1_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="usr-cmpmem-"))
    try:
        result = measure(args.files, args.dirs, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps({"bench": "comparison_memory", **result}))
        return
    print(f"{result['changes']} changes of {result['files']} files")
    for name in ("list", "changelist"):
        r = result[name]
        print(f"{name:>10}: held {r['held_bytes_per_change']} B/change, peak "
              f"{r['peak_bytes_per_change']} B, audit build peak "
              f"{r['audit_peak_bytes_per_change']} B")  # fmt: skip


if __name__ == "__main__":
    main()
