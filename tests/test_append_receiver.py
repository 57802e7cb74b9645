"""The receiver of an append push does not re-read the file it just wrote.

A chunked file staged from the stream (usr/store/chunkstage.py) is verified whole before
it is claimed; its mtime is then set just below the stat cache's trust line, so the
checkout's cache entry for it is trusted by the next scan instead of being racy (a racy
entry is confirmed by reading the whole file: for a 380 MB table, every push paid that on
the receiver). These tests hold both halves: the next scan reads nothing of the file,
and any change to it afterwards, even one that keeps its size within the same second, is
still seen. In-process tests drive the real receive loop; end-to-end ones push real
Parquet over a ``local`` remote and the real sshd fixture."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
import tomli_w

from tests.conftest import run_usr
from tests.test_idkeys import _ids, _write
from tests.test_streamed_chunks import BIG, _push, _states
from usr.dataset import Dataset
from usr.layout import RECORDS_FILE
from usr.store import Store, chunkstage
from usr.store.index import CACHE_FILE, RACY_NS, trusted_before


@pytest.fixture(autouse=True)
def small_reuse(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chunkstage, "REUSE_MIN", 256 << 10)


def _scan(store: Store) -> tuple[str, int]:
    """The working tree as a server's ``heads`` scan records it, and the bytes it read."""
    tree = store.working_tree()
    return tree, store.last_scan.bytes_hashed


def test_a_streamed_file_is_trusted_by_the_next_scan(tmp_path: Path) -> None:
    src, first, second = _states(tmp_path)
    dst = Store.open(tmp_path / "dst")
    _push(src, dst, first, None)
    _scan(dst)  # as the server's heads does before a push: the cache's scan time
    line = trusted_before(dst.gitdir / CACHE_FILE)
    assert line is not None
    _push(src, dst, second, first)
    st = (dst.path / BIG).stat()
    assert st.st_mtime_ns < line  # below the trust line of the cache the checkout saved
    tree, read = _scan(dst)
    assert tree == src.tree_of(second)
    assert read < st.st_size  # the big files were not read again (small ones may be)
    assert dst.verify_working() == []


def test_a_change_after_the_checkout_is_still_seen(tmp_path: Path) -> None:
    """Same size, same second: the write stamps the current time, never the one set."""
    src, first, second = _states(tmp_path)
    dst = Store.open(tmp_path / "dst")
    _push(src, dst, first, None)
    _scan(dst)
    _push(src, dst, second, first)
    work = dst.path / BIG
    data = bytearray(work.read_bytes())
    data[-10] ^= 0xFF
    with work.open("r+b") as fh:
        fh.write(bytes(data))
    tree, read = _scan(dst)
    assert tree != src.tree_of(second)
    assert read >= len(data)
    assert [c.path for c in dst.diff(second, tree, sizes=False)] == [BIG]


def test_a_bootstrap_without_a_stat_cache_is_trusted_after_its_checkout(tmp_path: Path) -> None:
    """No stat cache when the file is staged (a bootstrap): it is set back by RACY_NS and
    a second, so the entry is trusted once the checkout's own scan has saved the cache."""
    src, first, _second = _states(tmp_path)
    dst = Store.open(tmp_path / "dst")
    assert trusted_before(dst.gitdir / CACHE_FILE) is None
    _push(src, dst, first, None)
    st = (dst.path / BIG).stat()
    assert st.st_mtime_ns <= st.st_ctime_ns - RACY_NS - 1_000_000_000
    tree, read = _scan(dst)
    assert tree == src.tree_of(first)
    assert read < st.st_size


def test_the_time_set_is_never_within_racy_ns_of_now(tmp_path: Path) -> None:
    """Whatever the trust line says (unknown, in the future, long ago), the mtime set is at
    least RACY_NS + 1 s in the past and at most MAX_BACKDATE_NS back."""
    path = tmp_path / "f"
    path.write_bytes(b"x")
    now = time.time_ns()
    lines = [None, now + 10**9, now - RACY_NS, now - 10 * 10**9]
    lines.append(now - chunkstage.MAX_BACKDATE_NS - 10**9)
    for line in lines:
        fd = os.open(path, os.O_RDWR)
        try:
            assert chunkstage._backdate(fd, line)
        finally:
            os.close(fd)
        mtime = path.stat().st_mtime_ns
        after = time.time_ns()
        assert now - chunkstage.MAX_BACKDATE_NS - 10**9 <= mtime <= after - RACY_NS - 10**9
        if line == now - 10 * 10**9:
            assert mtime == line - 10**9


def _config(tmp_path: Path, kind: str, request: pytest.FixtureRequest) -> Path:
    remote = tmp_path / "cluster"
    remote.mkdir(exist_ok=True)
    if kind == "ssh":
        table = request.getfixturevalue("sshd").profile(remote)
    else:
        table = {"type": "local", "base_dir": str(remote), "remote_usr": f"{sys.executable} -m usr"}
    config = tmp_path / "remotes.toml"
    config.write_text(tomli_w.dumps({"remotes": {"bu": table}}))
    config.chmod(0o600)
    return config


@pytest.mark.parametrize("kind", ["local", "ssh"])
def test_an_append_push_leaves_the_remote_table_trusted(
    tmp_path: Path, kind: str, request: pytest.FixtureRequest
) -> None:
    laptop = tmp_path / "laptop"
    ds = Dataset.init(laptop, "ds", source="test")
    _write(ds.records_path, _ids(0, 40_000))
    Store.open(ds.path).record("import")
    env = {"USR_REMOTES_PATH": str(_config(tmp_path, kind, request))}
    for n, rows in enumerate((41_000, 42_000)):
        if n:
            _write(ds.records_path, _ids(0, rows))
            Store.open(ds.path).record("append")
        done = run_usr("--root", str(laptop), "push", "ds", "bu", "-y", env=env)
        assert done.returncode == 0, done.stderr
    remote = Store.open(tmp_path / "cluster" / "ds")
    table = remote.path / RECORDS_FILE
    assert table.read_bytes() == ds.records_path.read_bytes()
    tree, read = _scan(remote)
    assert tree == Store.open(ds.path).tree_of(Store.open(ds.path).head())
    assert read < table.stat().st_size  # the table the push wrote is not read again
    assert remote.verify_working() == []
    os.truncate(table, table.stat().st_size - 1)  # and a change is still seen
    assert _scan(remote)[0] != tree
