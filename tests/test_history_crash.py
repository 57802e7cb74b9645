"""kill -9 at named points of snapshot and checkout (real subprocesses, USR_FAULT_POINT):
afterwards the store is sound, the working files are a recorded state, and rerunning the
command completes."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.conftest import run_usr
from usr.layout import is_runtime_path
from usr.store import Store

LIMIT = {"USR_INLINE_LIMIT": "4096"}


@pytest.fixture(autouse=True)
def _limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USR_INLINE_LIMIT", LIMIT["USR_INLINE_LIMIT"])


def _write_state(ds: Path, n: int) -> dict[str, bytes]:
    files = {
        "records.parquet": bytes([n]) * 50_000 + os.urandom(150_000),
        "meta.md": f"# state {n}\n".encode(),
        f"_aux/only_in_{n}.txt": b"x" * n,
        "_derived/ns/part.parquet": os.urandom(20_000),
    }
    for old in ds.glob("_aux/only_in_*"):
        old.unlink()
    for rel, data in files.items():
        (ds / rel).parent.mkdir(parents=True, exist_ok=True)
        (ds / rel).write_bytes(data)
    return files


def _files(ds: Path) -> dict[str, bytes]:
    """The dataset's files, without usr's runtime state (store, staging, lock files)."""
    return {
        p.relative_to(ds).as_posix(): p.read_bytes()
        for p in ds.rglob("*")
        if p.is_file() and not is_runtime_path(p.relative_to(ds).as_posix())
    }


def _killed(root: Path, *args: str, point: str) -> None:
    result = run_usr("--root", str(root), *args, env={**LIMIT, "USR_FAULT_POINT": point})
    assert result.returncode == -signal.SIGKILL, (result.returncode, result.stderr)


def _sound(ds: Path) -> Store:
    store = Store.open(ds)  # recovers an interrupted checkout, as every command does
    assert store.fsck() == []
    assert store.verify_working() == [], "working files must equal HEAD after recovery"
    return store


@pytest.mark.parametrize(
    "point",
    [
        "chunks.pack-before-rename",
        "snapshot.after-chunks",
        "snapshot.before-ref",
        "snapshot.after-ref",
    ],
)
def test_snapshot_killed(tmp_path: Path, point: str) -> None:
    root = tmp_path / "root"
    ds = root / "ds"
    ds.mkdir(parents=True)
    _write_state(ds, 1)
    store = Store.open(ds)
    first = store.record("import").commit
    state2 = _write_state(ds, 2)
    _killed(root, "snapshot", "ds", point=point)
    assert _files(ds) == state2, "a snapshot never changes working files"
    store = Store.open(ds)
    assert store.fsck() == []
    head = store.head()
    moved = point == "snapshot.after-ref"
    assert (head != first) if moved else (head == first)
    again = run_usr("--root", str(root), "snapshot", "ds", env=LIMIT)
    assert again.returncode == 0, again.stderr
    assert ("nothing to record" in again.stdout) == moved
    store = _sound(ds)
    assert store.head() != first
    store.gc(prune_age=0)
    assert not list(ds.rglob(".usr-tmp-*")), "gc removes what the crash left"
    assert store.fsck() == []


@pytest.mark.parametrize(
    "point",
    [
        "checkout.mid-stage",
        "checkout.staged",
        "checkout.journal-written",
        "checkout.mid-promote",
        "checkout.before-ref",
        "checkout.after-ref",
    ],
)
def test_checkout_killed(tmp_path: Path, point: str) -> None:
    root = tmp_path / "root"
    ds = root / "ds"
    ds.mkdir(parents=True)
    state1 = _write_state(ds, 1)
    store = Store.open(ds)
    first = store.record("import").commit
    state2 = _write_state(ds, 2)
    second = store.record("snapshot").commit
    _killed(root, "checkout", "ds", first, point=point)
    store = _sound(ds)
    committed = point not in ("checkout.mid-stage", "checkout.staged")
    assert store.head() == (first if committed else second)
    assert _files(ds) == (state1 if committed else state2)
    assert not list(ds.glob(".usr-staging-*")) or not committed
    again = run_usr("--root", str(root), "checkout", "ds", first, env=LIMIT)
    assert again.returncode == 0, again.stderr
    store = _sound(ds)
    assert store.head() == first and _files(ds) == state1
    assert not list(ds.glob(".usr-staging-*"))
    assert store.head(f"refs/usr/saved/{second}") == second
