"""Checkout staging and promotion: kill -9 at every promotion step of a checkout that swaps
a file for a directory and a directory for a file, staged leftovers reused only when they
still verify, and the per-run directory bookkeeping that lets promotion skip re-checking
parents (real subprocesses, USR_FAULT_POINT)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from tests.conftest import run_usr
from usr.layout import is_runtime_path
from usr.store import Store
from usr.store.checkout import STAGING_PREFIX

# Four files in the dataset root and the swapped pair; the rest spread over directories so
# promotion meets new, existing and vanishing parents in one run.
COMMON = {f"_aux/d{i % 3}/f{i}.txt": f"common {i}\n".encode() for i in range(6)}
STATE_A = {
    **COMMON,
    "meta.md": b"# state a\n",
    "_aux/x": b"x is a file in a\n",
    "_aux/y/inner.txt": b"y is a directory in a\n",
    "_aux/y/deeper/more.txt": b"deeper in a\n",
    "_aux/only_a/one.txt": b"only in a\n",
}
STATE_B = {
    **COMMON,
    "meta.md": b"# state b\n",
    "_aux/x/inner.txt": b"x is a directory in b\n",
    "_aux/x/deeper/more.txt": b"deeper in b\n",
    "_aux/y": b"y is a file in b\n",
    "_aux/only_b/two.txt": b"only in b\n",
}


def _files(ds: Path) -> dict[str, bytes]:
    """The dataset's files, without usr's runtime state (store, staging, lock files)."""
    return {
        p.relative_to(ds).as_posix(): p.read_bytes()
        for p in ds.rglob("*")
        if p.is_file() and not is_runtime_path(p.relative_to(ds).as_posix())
    }


def _dirs(ds: Path) -> set[str]:
    return {
        p.relative_to(ds).as_posix()
        for p in ds.rglob("*")
        if p.is_dir() and not is_runtime_path(p.relative_to(ds).as_posix())
    }


def _set_state(ds: Path, files: dict[str, bytes]) -> None:
    for rel in sorted(_files(ds), reverse=True):
        (ds / rel).unlink()
    for d in sorted(_dirs(ds), key=lambda d: -d.count("/")):
        (ds / d).rmdir()
    for rel, data in files.items():
        (ds / rel).parent.mkdir(parents=True, exist_ok=True)
        (ds / rel).write_bytes(data)


def _two_states(tmp_path: Path) -> tuple[Path, Path, str, str]:
    root = tmp_path / "root"
    ds = root / "ds"
    ds.mkdir(parents=True)
    _set_state(ds, STATE_A)
    store = Store.open(ds)
    a = store.record("import").commit
    _set_state(ds, STATE_B)
    b = store.record("snapshot").commit
    assert a and b
    return root, ds, a, b


def _checkout(root: Path, commit: str, point: str | None = None) -> int:
    env = {"USR_FAULT_POINT": point} if point else None
    result = run_usr("--root", str(root), "checkout", "ds", commit, env=env)
    assert result.returncode in (0, -signal.SIGKILL), result.stderr
    return result.returncode


def _sound(ds: Path, head: str, files: dict[str, bytes]) -> None:
    store = Store.open(ds)  # finishes an interrupted checkout, as every command does
    assert store.head() == head
    assert _files(ds) == files
    assert store.fsck() == []
    assert store.verify_working() == []
    assert not list(ds.glob(f"{STAGING_PREFIX}*"))
    assert not (store.gitdir / "CHECKOUT").exists()


@pytest.mark.parametrize("direction", ["a-to-b", "b-to-a"])
def test_swaps_survive_a_kill_after_every_promoted_file(tmp_path: Path, direction: str) -> None:
    """A file where a directory must go (and the reverse), with the kill after the n-th
    file is renamed into place for every n: recovery, run twice, lands the exact target,
    and a rerun of the checkout completes."""
    root, ds, a, b = _two_states(tmp_path)
    start, target, want = (b, a, STATE_A) if direction == "b-to-a" else (a, b, STATE_B)
    have = STATE_B if start == b else STATE_A
    if start == a:
        assert _checkout(root, a) == 0
    puts = sum(1 for rel, data in want.items() if have.get(rel) != data)
    killed = -signal.SIGKILL
    n = 0
    while killed:  # until there are fewer promotions than the kill waits for
        n += 1
        # A directory the working copy lacks is promoted by one rename, with its files.
        assert n <= puts + 1, "more promotions than files to put"
        killed = _checkout(root, target, f"checkout.mid-promote:{n}")
        from usr.store.checkout import journal_path, recover

        store = Store.open(ds)  # recovery: rolls the checkout forward
        with store.lock():
            assert not recover(store)  # nothing left: a second recovery is a no-op
        _sound(ds, target, want)
        assert journal_path(store).exists() is False
        assert _checkout(root, target) == 0
        _sound(ds, target, want)
        assert _checkout(root, start) == 0
        _sound(ds, start, have)
    assert n > 2  # killed after each of several promotions before one completed


def test_a_directory_new_to_the_working_copy_is_promoted_by_one_rename(tmp_path: Path) -> None:
    """Every file under a directory the working copy lacks lands with one rename of its
    staged directory: killed right after the first promotion, all of them are in place
    with the bytes staged, none is left in the staging dir, and recovery finishes."""
    root, ds, _a, b = _two_states(tmp_path)
    many = {f"_aux/new/d{i % 4}/e{i % 3}/f{i}.txt": f"new {i}\n".encode() for i in range(40)}
    _set_state(ds, {**STATE_B, **many})
    c = Store.open(ds).record("many").commit
    assert _checkout(root, b) == 0
    assert not (ds / "_aux/new").exists()
    assert _checkout(root, c, "checkout.mid-promote:1") == -signal.SIGKILL
    # Looked at before anything opens the store (which would recover the checkout).
    assert {rel: (ds / rel).read_bytes() for rel in many} == many
    assert not (_staging(ds) / "_aux" / "new").exists()
    _sound(ds, c, {**STATE_B, **many})


def test_recovery_replayed_from_the_journal_is_idempotent(tmp_path: Path) -> None:
    """The journal replayed after the checkout already finished (every delete already
    done, every staged file already renamed) changes nothing: a directory that a put made
    where a deleted file was is kept, a file that replaced a directory is kept."""
    root, ds, a, b = _two_states(tmp_path)
    assert _checkout(root, a, "checkout.before-ref") == -signal.SIGKILL
    store = Store.open(ds, create=False)
    from usr.store.checkout import journal_path, recover

    # Store.open finished it; run the same journal again, as a crash inside recovery would.
    assert store.head() == a and _files(ds) == STATE_A
    journal = {"commit": a, "staging": f"{STAGING_PREFIX}gone", "ops": _ops(store, b, a)}
    journal_path(store).write_text(json.dumps(journal))
    with store.lock():
        assert recover(store)
    assert not journal_path(store).exists()
    _sound(ds, a, STATE_A)


def _ops(store: Store, old: str, new: str) -> list[dict]:
    ops: list[dict] = []
    for c in store.diff(old, new, sizes=False):
        if c.new_id is None:
            ops.append({"op": "delete", "path": c.path})
        else:
            ops.append({"op": "put", "path": c.path, "id": c.new_id})
    return ops


def _staging(ds: Path) -> Path:
    (staging,) = ds.glob(f"{STAGING_PREFIX}*")
    return staging


def test_staged_leftovers_are_reused_only_when_they_verify(tmp_path: Path) -> None:
    """A checkout killed after staging leaves its files; the rerun renames the intact ones
    into place (same inode) and rewrites a truncated one (a half-written file) and one with
    other bytes of the same size, so the working files are exactly the target."""
    root, ds, a, _b = _two_states(tmp_path)
    assert _checkout(root, a, "checkout.staged") == -signal.SIGKILL
    staging = _staging(ds)
    intact = staging / "_aux/x"
    truncated = staging / "_aux/y/inner.txt"
    other = staging / "meta.md"
    inode = intact.stat().st_ino
    truncated.write_bytes(truncated.read_bytes()[:5])
    other.write_bytes(b"# state ?\n")
    assert _checkout(root, a) == 0
    _sound(ds, a, STATE_A)
    assert (ds / "_aux/x").stat().st_ino == inode


def test_a_staged_leftover_that_is_a_symlink_is_never_followed(tmp_path: Path) -> None:
    """A staged name replaced by a symlink (to a file outside the dataset) is not written
    through, and not taken as staged content: the target file is untouched and the rerun
    lands the real content."""
    root, ds, a, _b = _two_states(tmp_path)
    assert _checkout(root, a, "checkout.staged") == -signal.SIGKILL
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"not usr's\n")
    staged = _staging(ds) / "meta.md"
    staged.unlink()
    staged.symlink_to(outside)
    assert _checkout(root, a) == 0
    _sound(ds, a, STATE_A)
    assert outside.read_bytes() == b"not usr's\n"
    assert not (ds / "meta.md").is_symlink()


def test_a_stage_killed_midway_is_completed_by_the_rerun(tmp_path: Path) -> None:
    root, ds, a, _b = _two_states(tmp_path)
    assert _checkout(root, a, "checkout.mid-stage:3") == -signal.SIGKILL
    assert len([p for p in _staging(ds).rglob("*") if p.is_file()]) == 3
    _sound_before = Store.open(ds)
    assert _files(ds) == STATE_B and _sound_before.head() != a
    assert _checkout(root, a) == 0
    _sound(ds, a, STATE_A)


def test_diff_without_sizes_lists_the_same_changes(tmp_path: Path) -> None:
    _root, ds, a, b = _two_states(tmp_path)
    store = Store.open(ds)
    full = store.diff(a, b)
    bare = store.diff(a, b, sizes=False)
    assert [(c.path, c.status, c.old_id, c.new_id) for c in full] == [
        (c.path, c.status, c.old_id, c.new_id) for c in bare
    ]
    assert all(c.old_size is None and c.new_size is None for c in bare)
    assert any(c.new_size for c in full)


def test_staged_files_land_with_their_recorded_modes(tmp_path: Path) -> None:
    """Staging creates each file with 644 or 755 exactly (whatever the umask), so an
    executable lands executable and the checked-out state is recorded as it was."""
    root, ds, a, _b = _two_states(tmp_path)
    tool = ds / "_aux/only_b/tool.sh"
    tool.write_bytes(b"#!/bin/sh\n")
    os.chmod(tool, 0o755)
    c = Store.open(ds).record("snapshot").commit
    assert c
    assert _checkout(root, a) == 0
    assert _checkout(root, c) == 0
    assert os.stat(tool).st_mode & 0o777 == 0o755
    assert os.stat(ds / "_aux/only_b/two.txt").st_mode & 0o777 == 0o644
    assert Store.open(ds).status() == []
