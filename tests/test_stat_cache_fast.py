"""The stat cache's no-op fast path (``StatCache.unchanged_tree``): the cached tree only
when every working file hits the cache, never for racy, new, gone, executable or odd files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from usr.errors import InputError
from usr.store import Store

PAST = 1_600_000_000 * 10**9  # well before any scan: the stat cache trusts these mtimes


def _dataset(tmp_path: Path, aged: bool) -> tuple[Store, Path]:
    ds = tmp_path / "ds"
    for i in range(20):
        p = ds / "_aux" / f"{i % 3}" / f"{i}.txt"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x" * i)
        if aged:
            os.utime(p, ns=(PAST, PAST))
    store = Store.open(ds)
    store.record("import")
    return store, ds


def test_unchanged_aged_files_give_the_cached_tree(tmp_path: Path) -> None:
    store, ds = _dataset(tmp_path, aged=True)
    head_tree = store.tree_of(store.head())
    assert store.stat_cache().unchanged_tree(ds) == (head_tree, 20)
    assert store.working_tree() == head_tree
    assert store.last_scan.files == 20 and store.last_scan.hashed == 0


def test_racy_files_never_take_the_fast_path(tmp_path: Path) -> None:
    store, ds = _dataset(tmp_path, aged=False)  # mtimes within the racy window of the scan
    assert store.stat_cache().unchanged_tree(ds) is None
    store.working_tree()
    assert store.last_scan.hashed == 20  # re-read, as the racy rule says


@pytest.mark.parametrize("change", ["add", "remove", "exec", "edit-same-size"])
def test_any_change_misses_and_the_full_scan_sees_it(tmp_path: Path, change: str) -> None:
    store, ds = _dataset(tmp_path, aged=True)
    head_tree = store.tree_of(store.head())
    target = ds / "_aux" / "1" / "7.txt"
    if change == "add":
        (ds / "_aux" / "new.txt").write_bytes(b"new")
    elif change == "remove":
        target.unlink()
    elif change == "exec":
        target.chmod(0o755)
    else:
        target.write_bytes(b"y" * 7)
        os.utime(target, ns=(PAST, PAST))  # same size and mtime: ctime still differs
    assert store.stat_cache().unchanged_tree(ds) is None
    assert store.working_tree() != head_tree


def test_a_symlink_is_a_miss_then_refused_by_the_full_scan(tmp_path: Path) -> None:
    store, ds = _dataset(tmp_path, aged=True)
    (ds / "link").symlink_to(ds / "_aux")
    assert store.stat_cache().unchanged_tree(ds) is None
    with pytest.raises(InputError, match="symlink"):
        store.working_tree()
