"""Stand-in for ``infer run --preset ... --usr DATASET --root ROOT`` in the runbook test.

The real Infer tool writes derived outputs into a USR dataset; this does the same through
usr's dataset API (register the ``infer`` namespace, attach one overlay column), so the
chained DenseGen -> USR -> Infer -> USR runbook runs as written.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pyarrow as pa

from usr.dataset import Dataset
from usr.registry import register


def main() -> None:
    parser = argparse.ArgumentParser(prog="infer")
    parser.add_argument("command")
    parser.add_argument("--preset", required=True)
    parser.add_argument("--usr", required=True)
    parser.add_argument("--root", required=True)
    args = parser.parse_args()
    register(Path(args.root), "infer", [("infer__ll", "float64")])
    ds = Dataset.open(args.root, args.usr)
    ids = ds.to_table(overlay=False).column("id").to_pylist()
    scores = [float(-i) for i in range(len(ids))]
    ds.attach(pa.table({"id": ids, "infer__ll": scores}), namespace="infer")


if __name__ == "__main__":
    main()
