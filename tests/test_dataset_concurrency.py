"""Batch writers on a cluster append at the same time: no append may be lost."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import usr_env
from usr.dataset import Dataset
from usr.store import Store

WRITER = """
import sys
from usr.dataset import Dataset
ds = Dataset.open(sys.argv[1], "densegen/shared")
for seq in sys.argv[2:]:
    ds.append_records([{"sequence": seq}], source="job")
"""


def test_concurrent_appends_all_land_and_are_recorded(root):
    ds = Dataset.init(root, "densegen/shared")
    jobs = {"ACGT": ["AAAA", "AAAC"], "CCCC": ["CCCA", "CCCG"], "GGGG": ["GGGA", "GGGC"]}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(root), first, *rest],
            env=usr_env(),
            stderr=subprocess.PIPE,
            text=True,
        )
        for first, rest in jobs.items()
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    got = sorted(ds.to_table(False).column("sequence").to_pylist())
    assert got == sorted(s for first, rest in jobs.items() for s in [first, *rest])
    actions = [e["action"] for e in ds.events_tail(100)]
    assert actions.count("import") == 9
    assert ds.validate(strict=True)["ok"]
    store = Store.open(ds.path)
    assert store.status() == []
