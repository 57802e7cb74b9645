"""The thread that creates streamed files (usr/store/stagewriter.py): every file handed
over is whole, with its mode, once :meth:`close` returns, and claimed exactly then; the
first failed write stops the rest; an abandoned writer writes nothing more."""

from __future__ import annotations

import os
from pathlib import Path

from usr.store import stagewriter
from usr.store.checkout import stat_claim
from usr.store.stagewriter import StageWriter
from usr.store.worktree import MODE_EXEC, MODE_FILE


def _claims(writer: StageWriter) -> set[bytes]:
    return set(writer.claims)


def test_every_file_handed_over_is_written_and_claimed_by_close(tmp_path: Path) -> None:
    top = tmp_path / "staging"
    top.mkdir()
    writer = StageWriter(str(top), exact=False)
    n = 3 * stagewriter.BATCH_FILES + 5  # whole batches and a part one
    files = {f"d{i % 7}/sub{i % 3}/f{i}.txt": f"bytes of {i}".encode() * (i % 5) for i in range(n)}
    for rel, data in files.items():
        writer.put(rel, MODE_EXEC if rel.endswith("7.txt") else MODE_FILE, data)
    writer.close()
    assert writer.error is None
    got = {p.relative_to(top).as_posix(): p.read_bytes() for p in top.rglob("*") if p.is_file()}
    assert got == files
    assert (top / "d0/sub1/f7.txt").stat().st_mode & 0o777 == 0o755
    assert (top / "d1/sub1/f1.txt").stat().st_mode & 0o777 == 0o644
    assert _claims(writer) == {stat_claim(rel, os.lstat(top / rel)) for rel in files}


def test_a_large_file_fills_a_batch_by_itself(tmp_path: Path) -> None:
    """Bytes, not only files, close a batch: one file past BATCH_BYTES is handed over at
    once (the memory held back is bounded by bytes)."""
    writer = StageWriter(str(tmp_path), exact=True)
    big = os.urandom(stagewriter.BATCH_BYTES + 1)
    writer.put("big.bin", MODE_FILE, big)
    assert writer._batch == []  # handed over, not held
    writer.close()
    assert (tmp_path / "big.bin").read_bytes() == big and len(writer.claims) == 1


def test_the_first_failed_write_stops_every_later_one(tmp_path: Path) -> None:
    top = tmp_path / "staging"
    top.mkdir()
    (top / "blocked").write_bytes(b"a file where a directory must go")
    writer = StageWriter(str(top), exact=True)
    writer.put("a/first.txt", MODE_FILE, b"1")
    writer.put("blocked/inside.txt", MODE_FILE, b"2")  # its parent is a file: fails
    writer.put("b/after.txt", MODE_FILE, b"3")
    writer.close()
    assert isinstance(writer.error, OSError)
    assert (top / "a/first.txt").read_bytes() == b"1"
    assert not (top / "b").exists()  # nothing after the failure
    assert _claims(writer) == {stat_claim("a/first.txt", os.lstat(top / "a/first.txt"))}


def test_a_file_already_there_is_kept_and_not_claimed(tmp_path: Path) -> None:
    """One left by an earlier process is neither overwritten nor claimed: the checkout
    re-verifies it by hash."""
    (tmp_path / "old.txt").write_bytes(b"left by a killed process")
    writer = StageWriter(str(tmp_path), exact=True)
    writer.put("old.txt", MODE_FILE, b"new bytes")
    writer.put("new.txt", MODE_FILE, b"new bytes")
    writer.close()
    assert writer.error is None
    assert (tmp_path / "old.txt").read_bytes() == b"left by a killed process"
    assert _claims(writer) == {stat_claim("new.txt", os.lstat(tmp_path / "new.txt"))}


def test_an_abandoned_writer_writes_nothing_more(tmp_path: Path) -> None:
    writer = StageWriter(str(tmp_path), exact=True)
    for i in range(stagewriter.BATCH_FILES - 1):  # not yet a batch: held
        writer.put(f"f{i}", MODE_FILE, b"x")
    writer.close(abandon=True)
    writer.close()  # a second close (a discard after a result) is a no-op
    assert list(tmp_path.iterdir()) == [] and not writer.claims


def test_its_crash_point_kills_once_the_files_handed_over_are_written(tmp_path: Path) -> None:
    """``checkout.streamed-file:N`` kills on the receiving thread as the N-th file is
    handed over, once it and every earlier one are written, and before any later one: the
    same step of the stream every run (the files are fewer than a batch, which the writer
    would otherwise write only at close)."""
    import signal
    import subprocess
    import sys

    script = f"""
import sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
from usr.store.stagewriter import StageWriter
writer = StageWriter({str(tmp_path)!r}, exact=True)
for i in range(5):
    writer.put(f"d/f{{i}}", 0o100644, b"x" * (i + 1))
open({str(tmp_path / "after")!r}, "w").close()  # the receive went on past the point
writer.close()
"""
    env = dict(os.environ, USR_FAULT_POINT="checkout.streamed-file:3")
    done = subprocess.run([sys.executable, "-c", script], env=env, check=False)
    assert done.returncode == -signal.SIGKILL
    got = {p.name: p.read_bytes() for p in (tmp_path / "d").iterdir()}
    assert got == {"f0": b"x", "f1": b"xx", "f2": b"xxx"}
    assert not (tmp_path / "after").exists()
