"""Streamed staging (usr/store/streamstage.py): a receive that gets commits and trees before
blobs writes the target's working files into the staging dir as the blobs land, and the
checkout of the same process renames those very files into place; anything changed since
it was written, or left by another process, is verified by hash again, never trusted.

Real stores on both ends and the real receive loop, fed the frames a push sends."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from usr.store import Store
from usr.store.streamstage import StreamStager
from usr.sync import packstream, pushplan, refupdate
from usr.sync import protocol as p

SAME = b"the same bytes at two paths\n"


@pytest.fixture(autouse=True)
def small_inline_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USR_INLINE_LIMIT", "4096")  # so big.bin is a chunked file


def _write(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def _source(tmp_path: Path) -> tuple[Store, str, str]:
    """A store with two states: ``first`` and ``second`` (edits, adds, a delete, an
    executable, one content at two paths, a chunked file)."""
    src = tmp_path / "src"
    _write(src, {"meta.md": b"v1\n", "a/old.txt": b"old\n", "a/keep.txt": b"keep\n"})
    store = Store.open(src)
    first = store.record("first").commit
    (src / "a/old.txt").unlink()
    _write(
        src,
        {
            "meta.md": b"v2\n",
            "a/b/c/deep.txt": b"deep\n",
            "x/one.txt": SAME,
            "y/two.txt": SAME,
            "tool.sh": b"#!/bin/sh\n",
            "big.bin": os.urandom(100_000),
        },
    )
    (src / "tool.sh").chmod(0o755)
    second = store.record("second").commit
    return store, first, second


def _stream(
    src: Store, new: str, old: str | None, trees_first: bool = True, only: str | None = None
) -> bytes:
    """The frames a push of ``new`` over ``old`` sends: chunks, then the objects (commits
    and trees first, as the client orders them, unless ``trees_first`` is false), end.
    ``only``: just the "blobs", or just the "trees" and commits."""
    oids = src.missing_objects([new], [old] if old else [])
    plan = pushplan.plan_push(src, oids, None)
    if only is not None:
        oids = [o for o in oids if plan.is_blob(o) == (only == "blobs")]
    out = io.BytesIO()
    fio = p.FrameIO(p.FileChannel(io.BytesIO(), out), peer="test")
    packstream.send_chunks(src, fio, plan.cids())
    packstream.send_objects(src, fio, plan.trees_first(oids) if trees_first else oids)
    fio.send_message("end")
    fio.flush()
    return out.getvalue()


def _receive(dst: Store, stream: bytes, tree: str | None = None) -> StreamStager:
    stager = StreamStager(dst, tree)
    fio = p.FrameIO(p.FileChannel(io.BytesIO(stream), io.BytesIO()), peer="test")
    packstream.receive(dst, fio, "test", stage=stager)
    return stager


def _files(root: Path) -> dict[str, bytes]:
    """The dataset's files (not its store, staging or locks)."""
    out = {}
    for f in root.rglob("*"):
        rel = f.relative_to(root).as_posix()
        if f.is_file() and not rel.startswith(".usr") and not rel.endswith(".lock"):
            out[rel] = f.read_bytes()
    return out


def _staged(dst: Store, tree: str) -> dict[str, int]:
    """The files in the staging dir of ``tree``, by path -> inode."""
    top = dst.path / f".usr-staging-{tree[:16]}"
    return {f.relative_to(top).as_posix(): f.stat().st_ino for f in top.rglob("*") if f.is_file()}


def _push(src: Store, dst: Store, new: str, old: str | None) -> dict[str, int]:
    """Receive and check out one push; the files streamed into staging, by inode."""
    staged = _receive(dst, _stream(src, new, old)).result()
    assert staged is not None and staged.tree == str(src.repo[new].tree_id)
    inodes = _staged(dst, staged.tree)
    assert len(staged.files) == len(inodes)
    refupdate.update_and_checkout(dst, new, old, validate=False, staged=staged)
    return inodes


def test_streamed_files_are_the_files_promoted(tmp_path: Path) -> None:
    src, first, second = _source(tmp_path)
    dst = Store.open(tmp_path / "dst")
    inodes = _push(src, dst, first, None)
    assert set(inodes) == {"meta.md", "a/old.txt", "a/keep.txt"}
    inodes = _push(src, dst, second, first)
    # Changed and added small files were streamed (both paths of one content); the
    # chunked file and the unchanged one were not.
    assert set(inodes) == {"meta.md", "a/b/c/deep.txt", "x/one.txt", "y/two.txt", "tool.sh"}
    for rel, inode in inodes.items():
        assert (dst.path / rel).stat().st_ino == inode, f"{rel} was staged again"
    assert _files(dst.path) == _files(src.path)
    assert (dst.path / "tool.sh").stat().st_mode & 0o777 == 0o755
    assert (dst.path / "meta.md").stat().st_mode & 0o777 == 0o644
    assert dst.head() == second and dst.verify_working() == [] and dst.fsck() == []
    assert not list(dst.path.glob(".usr-staging-*"))


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_streamed_files_get_their_modes_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    """Staged files are created with their mode; the chmod after is skipped only when the
    umask keeps those bits (022), and made when it does not (077)."""
    src, first, second = _source(tmp_path)
    dst = Store.open(tmp_path / "dst")
    _push(src, dst, first, None)
    old = os.umask(umask)
    try:
        stager = _receive(dst, _stream(src, second, first))
        assert stager.exact == (umask == 0o022)
        staged = stager.result()
    finally:
        os.umask(old)
    assert staged is not None
    top = dst.path / f".usr-staging-{staged.tree[:16]}"
    assert (top / "tool.sh").stat().st_mode & 0o777 == 0o755
    assert (top / "x/one.txt").stat().st_mode & 0o777 == 0o644
    refupdate.update_and_checkout(dst, second, first, validate=False, staged=staged)
    assert dst.verify_working() == [] and dst.head() == second
    assert (dst.path / "tool.sh").stat().st_mode & 0o777 == 0o755


def test_a_streamed_file_changed_before_the_checkout_is_verified_again(tmp_path: Path) -> None:
    src, first, second = _source(tmp_path)
    dst = Store.open(tmp_path / "dst")
    _push(src, dst, first, None)
    stager = _receive(dst, _stream(src, second, first))
    staged = stager.result()
    assert staged is not None
    top = dst.path / f".usr-staging-{staged.tree[:16]}"
    (top / "meta.md").write_bytes(b"v9\n")  # same size, other bytes: only a hash tells
    (top / "x/one.txt").unlink()
    (top / "tool.sh").chmod(0o644)
    refupdate.update_and_checkout(dst, second, first, validate=False, staged=staged)
    assert _files(dst.path) == _files(src.path)
    assert (dst.path / "tool.sh").stat().st_mode & 0o777 == 0o755
    assert dst.verify_working() == []


def test_files_staged_by_another_process_are_hashed_before_reuse(tmp_path: Path) -> None:
    """Leftovers of an earlier receive (a killed server) are not this process's claims:
    the new receive keeps them (created exclusively), the checkout re-verifies them."""
    src, first, second = _source(tmp_path)
    dst = Store.open(tmp_path / "dst")
    _push(src, dst, first, None)
    stream = _stream(src, second, first)
    earlier = _receive(dst, stream).result()
    assert earlier is not None
    top = dst.path / f".usr-staging-{earlier.tree[:16]}"
    (top / "a/b/c/deep.txt").write_bytes(b"torn")  # half-written when it was killed
    kept = (top / "y/two.txt").stat().st_ino
    staged = _receive(dst, stream).result()  # objects are present now; blobs come again
    assert staged is None  # every file was there already: none is this process's
    refupdate.update_and_checkout(dst, second, first, validate=False, staged=staged)
    assert _files(dst.path) == _files(src.path)
    assert (dst.path / "y/two.txt").stat().st_ino == kept  # intact: reused after hashing
    assert dst.verify_working() == []


def test_blobs_before_trees_stream_nothing_and_the_checkout_stages(tmp_path: Path) -> None:
    """An older client's order (blobs first): the receiver cannot know the paths yet."""
    src, first, _ = _source(tmp_path)
    dst = Store.open(tmp_path / "dst")
    stager = _receive(dst, _stream(src, first, None, trees_first=False))
    assert stager.result() is None
    refupdate.update_and_checkout(dst, first, None, validate=False, staged=None)
    assert _files(dst.path) == {"meta.md": b"v1\n", "a/old.txt": b"old\n", "a/keep.txt": b"keep\n"}
    assert dst.head() == first and dst.verify_working() == []


def test_a_fetch_whose_trees_came_first_stages_its_blobs(tmp_path: Path) -> None:
    """A pull's fetch: the trees are here before the contents are asked for, so the stager
    is given the target tree and stages blobs in whatever order they come."""
    src, first, second = _source(tmp_path)
    dst = Store.open(tmp_path / "dst")
    _push(src, dst, first, None)
    tree = str(src.repo[second].tree_id)
    _receive(dst, _stream(src, second, first, only="trees"))
    stager = _receive(dst, _stream(src, second, first, trees_first=False, only="blobs"), tree)
    staged = stager.result()
    assert staged is not None
    inodes = _staged(dst, tree)
    assert set(inodes) >= {"meta.md", "x/one.txt", "y/two.txt"} and len(staged.files) == 5
    refupdate.update_and_checkout(dst, second, first, validate=False, staged=staged)
    assert {rel: (dst.path / rel).stat().st_ino for rel in inodes} == inodes
    assert _files(dst.path) == _files(src.path) and dst.verify_working() == []


def test_a_target_tree_that_is_not_here_stages_nothing(tmp_path: Path) -> None:
    src, first, _ = _source(tmp_path)
    dst = Store.open(tmp_path / "dst")
    tree = str(src.repo[first].tree_id)
    stager = _receive(dst, _stream(src, first, None, trees_first=False), tree)
    assert stager.result() is None  # blobs came before the trees: nothing to walk yet
    refupdate.update_and_checkout(dst, first, None, validate=False, staged=None)
    assert dst.verify_working() == []


def test_a_refused_transfer_discards_what_it_staged(tmp_path: Path) -> None:
    """The stream or the update refused: the staging dir goes (under the dataset lock),
    unless a checkout journal exists, which recovery may still need."""
    src, first, _ = _source(tmp_path)
    dst = Store.open(tmp_path / "dst")
    stager = _receive(dst, _stream(src, first, None))
    assert list(dst.path.glob(".usr-staging-*"))
    stager.discard()
    assert not list(dst.path.glob(".usr-staging-*"))
    stager = _receive(dst, _stream(src, first, None))
    journal = dst.gitdir / "CHECKOUT"
    journal.write_text("{}")
    stager.discard()
    assert list(dst.path.glob(".usr-staging-*"))
    journal.unlink()


def test_a_push_whose_update_never_comes_leaves_nothing_staged(tmp_path: Path) -> None:
    """The serve loop, in process: ``pack`` streams in (files staged), then the client
    goes away before ``update``; the session's end discards the staging."""
    from usr.sync.server import Server

    src, first, _ = _source(tmp_path)
    out = io.BytesIO()
    fio = p.FrameIO(p.FileChannel(io.BytesIO(), out), peer="test")
    fio.send_message("hello", usr_version="test", protocol=p.PROTOCOL_VERSION)
    fio.send_message("pack", ds="densegen/streamed", create=True)
    fio.flush()
    wire = out.getvalue() + _stream(src, first, None)
    root = tmp_path / "root"
    root.mkdir()
    server_fio = p.FrameIO(p.FileChannel(io.BytesIO(wire), io.BytesIO()), peer="client")
    assert Server(root, server_fio).run() == 0
    dataset = root / "densegen" / "streamed"
    assert Store.open(dataset, create=False).has_object(first)
    assert not list(dataset.glob(".usr-staging-*"))
    assert _files(dataset) == {}


def test_a_staged_write_that_fails_turns_streaming_off_and_the_checkout_stages(
    tmp_path: Path,
) -> None:
    """A staged write that fails (here a file where a staged directory must go; a full
    disk alike) is not raised: it stops the streaming, and only the files written before
    it are claimed. The checkout stages the rest itself, and the working files come out
    whole."""
    src, first, second = _source(tmp_path)
    dst = Store.open(tmp_path / "dst")
    _push(src, dst, first, None)
    tree = str(src.repo[second].tree_id)
    blocker = dst.path / f".usr-staging-{tree[:16]}" / "x"
    blocker.parent.mkdir()
    blocker.write_bytes(b"not a directory\n")
    staged = _receive(dst, _stream(src, second, first)).result()
    assert staged is not None and staged.tree == tree
    written = _staged(dst, tree)
    assert "x/one.txt" not in written and "y/two.txt" not in written  # one blob, both paths
    assert len(staged.files) == len(written) - 1 < 5  # the blocker is no claim of its
    blocker.unlink()  # cleared, as a checkout of another tree would
    refupdate.update_and_checkout(dst, second, first, validate=False, staged=staged)
    assert _files(dst.path) == _files(src.path)
    assert dst.head() == second and dst.verify_working() == [] and dst.fsck() == []
    assert not list(dst.path.glob(".usr-staging-*"))
