"""``usr snapshot`` and ``usr status`` print from a stream of changes (issue 23), and the
bytes are the ones the list-building code printed: text (short and collapsed sections,
``-v``), JSON, added, modified and deleted files, inline and chunked sizes, and names
whose path order is not their walk order (``a.txt``, ``a-b/``, ``a/``).

``tests/fixtures/snapshot_golden/`` was written by the code before the stream (commit
1f32176), by running this module as a script with that code on ``PYTHONPATH``:
``PYTHONPATH=<old checkout> python tests/test_snapshot_stream.py``. Only commit ids (a clock
and an actor decide them) are masked.
"""

from __future__ import annotations

import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

GOLDEN = Path(__file__).parent / "fixtures" / "snapshot_golden"


def _mask(text: str) -> str:
    text = re.sub(r'"(commit|head|parent)": "[0-9a-f]{40}"', r'"\1": "<commit>"', text)
    return re.sub(r"(recorded|HEAD|matches) [0-9a-f]{12}", r"\1 <commit>", text)


def _put(root: Path, rel: str, data: bytes) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def scenario(usr: Callable[..., str], ds: Path) -> dict[str, str]:
    """The outputs, by name, of status and snapshot over three states of one directory."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    ds.mkdir(parents=True)
    pq.write_table(pa.table({"id": ["r0", "r1"]}), ds / "records.parquet")
    _put(ds, "notes.md", b"# notes\n")
    out = {"snap0.txt": usr("snapshot", str(ds))}  # adopts the plain directory
    for i in range(25):
        _put(ds, f"_artifacts/a/f{i:02d}.bin", bytes([i]) * (i * 37))
    _put(ds, "_artifacts/a.txt", b"a dot txt\n")
    _put(ds, "_artifacts/a-b/x", b"dash\n")
    _put(ds, "_artifacts/a/sub/y", b"under a\n")
    _put(ds, "_artifacts/big.bin", bytes(range(256)) * 1300)  # > 256 KiB: chunked
    _put(ds, "_artifacts/empty", b"")
    _put(ds, "derived/one.csv", b"x,y\n1,2\n")
    _put(ds, "notes.md", b"# notes, longer\n")
    out["status1.txt"] = usr("status", str(ds))
    out["status1.json"] = usr("status", str(ds), "--format", "json")
    out["snap1.json"] = usr("snapshot", str(ds), "--format", "json")
    for i in (1, 2, 3):
        _put(ds, f"_artifacts/a/f{i:02d}.bin", b"changed" * i)
    for i in (4, 5):
        (ds / f"_artifacts/a/f{i:02d}.bin").unlink()
    for i in range(30):
        _put(ds, f"_artifacts/c/d{i % 3}/g{i:02d}", b"c" * i)
    _put(ds, "_artifacts/big.bin", bytes(range(256)) * 1400)
    (ds / "_artifacts/a.txt").unlink()
    _put(ds, "_artifacts/a.txt/now-a-dir", b"file became a directory\n")
    out["status2.txt"] = usr("status", str(ds))
    out["status2-v.txt"] = usr("status", "-v", str(ds))
    out["status2.json"] = usr("status", str(ds), "--format", "json")
    out["snap2.txt"] = usr("snapshot", str(ds))
    for i in range(30):
        (ds / f"_artifacts/c/d{i % 3}/g{i:02d}").unlink()
    _put(ds, "derived/two.csv", b"z\n")
    out["snap3-v.txt"] = usr("snapshot", "-v", str(ds))
    out["snap4.txt"] = usr("snapshot", str(ds))
    out["snap4.json"] = usr("snapshot", str(ds), "--format", "json")
    out["status4.json"] = usr("status", str(ds), "--format", "json")
    return {name: _mask(text).replace(str(ds), "<ds>") for name, text in out.items()}


def _runner(env: dict[str, str]) -> Callable[..., str]:
    import subprocess

    def usr(*args: str) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "usr", *args], env=env, capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    return usr


def test_snapshot_and_status_print_what_the_list_code_printed(tmp_path: Path) -> None:
    from tests.conftest import usr_env

    got = scenario(_runner(usr_env({"NO_COLOR": "1"})), tmp_path / "ds")
    for name, text in got.items():
        assert text == (GOLDEN / name).read_text(), name


if __name__ == "__main__":
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("USR_")}
    env["NO_COLOR"] = "1"
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in scenario(_runner(env), Path(tmp) / "ds").items():
            (GOLDEN / name).write_text(text)


def test_streamed_diff_equals_the_listed_one_and_sizes_new_files_unread(tmp_path: Path) -> None:
    """Store.iter_diff gives Store.diff's changes in its order, sizes included: a new file
    sized from its stat-cache row (inline, chunked, starting with the manifest magic)
    has the size reading its entry gives."""
    from usr.store import Store
    from usr.store.objects import MAGIC

    ds = tmp_path / "ds"
    _put(ds, "d/x", b"x")
    _put(ds, "d.txt", b"dot")
    _put(ds, "a b/c", b"space")
    store = Store.open(ds, create=True)
    first = store.record("one").commit
    _put(ds, "d/y", b"y" * 1000)
    _put(ds, "d-e/z", MAGIC + b"not a manifest")
    _put(ds, "big", bytes(range(256)) * 1300)
    (ds / "d.txt").unlink()
    _put(ds, "d.txt/inside", b"now a directory")
    (ds / "a b/c").unlink()
    _put(ds, "a b/c", b"changed")
    second = store.record("two").commit
    streamed = list(store.iter_diff(first, second))
    assert streamed == store.diff(first, second)
    assert [c.path for c in streamed] == sorted(c.path for c in streamed)
    assert {c.path: c.new_size for c in streamed}["big"] == 256 * 1300
    for a, b in ((None, second), (second, first)):
        assert list(store.iter_diff(a, b)) == store.diff(a, b)
