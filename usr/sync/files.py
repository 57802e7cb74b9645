"""Moving one plain file over the frame protocol (file mode's ``file-*`` requests).

Both ends use these helpers: the server for ``file-stat``/``file-get``/``file-put``, the
client for the mirror image. A file travels as ``K`` frames of at most :data:`PIECE` bytes,
each named by the blake3 of its bytes (so every piece is checked the moment it lands), and
the sender's ``file-end`` names the whole file's size and blake3. Memory stays bounded by one
piece whatever the file size. The receiver writes a temp file beside the target, checks the
whole-file hash, checks the target still holds what the sender compared against (so a file
changed by someone else meanwhile is never overwritten), and only then renames it into place
(:func:`usr.atomic.atomic_writer`: fsync, rename, fsync of the directory).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import blake3

from usr import atomic, faults
from usr.errors import (
    ConflictError,
    InputError,
    NotFoundError,
    TransportError,
    UsrError,
    VerifyError,
)
from usr.layout import check_relpath, dataset_holding
from usr.ledger import file_digest
from usr.sync import protocol as p

#: Bytes per ``K`` frame of a file: small enough to bound memory, large enough that the
#: per-frame cost (header, blake3 call) is noise.
PIECE = 1024 * 1024
#: The message that closes a file stream, naming the whole file's size and blake3.
END = "file-end"

FAULT_RECEIVED_PIECE = faults.register(
    "file.received-piece", "a file-mode receiver has written one more piece to its temp file"
)


def regular_or_absent(path: Path, shown: str) -> os.stat_result | None:
    """The ``lstat`` of ``path`` when it is a regular file, None when absent; anything
    else (a symlink, a directory, a device) is refused: file mode moves plain files only."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        what = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a regular file"
        raise InputError(f"{shown} is {what}", "file mode moves one regular file")
    return st


def state(path: Path, shown: str) -> dict[str, Any]:
    """``{"exists", "size", "blake3"}`` of a file (size and hash None when absent)."""
    if regular_or_absent(path, shown) is None:
        return {"exists": False, "size": None, "blake3": None}
    digest, size = file_digest(path)
    return {"exists": True, "size": size, "blake3": digest}


def confine(root: Path, relpath: Any) -> Path:
    """The file ``root/relpath``, refusing anything that could leave ``root``.

    ``relpath`` must be a relative POSIX path with no empty, ``.`` or ``..`` part and no usr
    runtime name (``.usr`` and friends: file mode must never write into a store), no
    component below ``root`` may be a symlink (so a link can not lead out of the root), and
    no directory on the way may be a dataset (its files change only through the dataset).
    """
    if not isinstance(relpath, str):
        raise InputError("file path missing or not a string")
    check_relpath(relpath)
    if not root.is_dir():
        raise NotFoundError(
            f"{root} does not exist on this machine", "create it, or fix the profile"
        )
    here = root
    parts = relpath.split("/")
    for part in parts[:-1]:
        here = here / part
        if here.is_symlink():
            raise InputError(f"{relpath}: {part!r} is a symlink", "file mode follows no links")
        if here.exists() and not here.is_dir():
            raise InputError(f"{relpath}: {part!r} is not a directory")
    return outside_datasets(here / parts[-1], relpath, root)


def outside_datasets(path: Path, shown: str, stop: Path | None = None) -> Path:
    """``path``, unless it lies in a dataset directory (up to ``stop``): file mode never
    reads or writes what a dataset tracks (its lock, history and event log would be
    bypassed)."""
    inside = dataset_holding(path, stop)
    if inside is not None:
        raise InputError(
            f"{shown} is a path of the dataset at {inside}: file mode never reads or writes "
            "what a dataset tracks",
            "sync the dataset instead: usr pull|push DATASET REMOTE",
        )
    return path


def send(fio: p.FrameIO, path: Path, shown: str) -> None:
    """Stream ``path`` as ``K`` frames, then ``file-end {size, blake3}`` of what was sent.

    The hash is of the bytes actually sent, so a file rewritten mid-read is caught by the
    receiver's comparison with the stat it was asked to match.
    """
    h = blake3.blake3()
    size = 0
    with open(path, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise InputError(f"{shown} is not a regular file")
        while piece := fh.read(PIECE):
            h.update(piece)
            size += len(piece)
            fio.send_chunk(blake3.blake3(piece).hexdigest(), piece)
    fio.send_message(END, size=size, blake3=h.hexdigest())


def receive(
    fio: p.FrameIO,
    dest: Path,
    peer: str,
    expect_current: str | None,
    want: str | None = None,
    meter: Any = None,
    failure: UsrError | None = None,
) -> dict[str, Any]:
    """Read ``K`` frames up to ``file-end`` into a temp file beside ``dest``, then replace it.

    ``expect_current`` is the blake3 ``dest`` had when the sides were compared (None:
    ``dest`` must still be absent); ``want`` is the blake3 the file must have (what was
    compared), checked besides the sender's ``file-end``. Every piece is checked by blake3
    as it lands. On any failure (or a ``failure`` the caller already has) the rest of the
    stream is still read so the session stays in step, the temp file vanishes, ``dest`` is
    untouched, and the error is raised. Returns ``{"size", "blake3"}`` of the new ``dest``.
    """
    if failure is not None:
        drain(fio, peer)
        raise failure
    h = blake3.blake3()
    size = 0
    mode = 0o644
    try:
        current = regular_or_absent(dest, str(dest))
        if current is not None:
            mode = stat.S_IMODE(current.st_mode)
    except UsrError as exc:
        failure = exc
    with atomic.atomic_writer(dest, mode) as out:
        while True:
            kind, payload = fio.read_frame()
            if kind == p.JSON:
                msg = p.stream_end(payload, END, peer, "mid-file")
                break
            if kind != p.CHUNK:
                raise TransportError(f"protocol error from {peer}: an object frame mid-file")
            if meter is not None:
                meter.update(fio.bytes_in)
            if failure is not None:
                continue
            cid, piece = p.decode_chunk(payload, peer)
            if blake3.blake3(piece).hexdigest() != cid:
                failure = VerifyError(f"{dest.name}: a piece from {peer} hashes differently")
                continue
            out.write(piece)
            h.update(piece)
            size += len(piece)
            faults.point(FAULT_RECEIVED_PIECE)
        failure = failure or _check_end(msg, want, size, h.hexdigest(), dest, peer)
        failure = failure or _check_unchanged(dest, expect_current)
        if failure is not None:
            raise failure  # inside the writer: the temp file vanishes, dest stays as it was
    return {"size": size, "blake3": h.hexdigest()}


def _check_end(
    msg: dict[str, Any], want: str | None, size: int, got: str, dest: Path, peer: str
) -> UsrError | None:
    sent_size = p.require(msg, "size", int, peer)
    sent_hash = p.require(msg, "blake3", str, peer)
    if sent_size != size:
        return VerifyError(f"{dest.name}: {size} bytes arrived, {peer} sent {sent_size}")
    for expected in (sent_hash, want or sent_hash):
        if expected != got:
            return VerifyError(
                f"{dest.name}: the received bytes hash to {got[:16]}, expected {expected[:16]}",
                "nothing was replaced; rerun the transfer",
            )
    return None


def drain(fio: p.FrameIO, peer: str) -> None:
    """Read and drop a file stream up to its ``file-end`` (after a refusal, to stay in step)."""
    while True:
        kind, payload = fio.read_frame()
        if kind == p.JSON:
            p.stream_end(payload, END, peer, "mid-file")
            return


def _check_unchanged(dest: Path, expect_current: str | None) -> UsrError | None:
    """Refuse to replace a file that changed since the comparison (someone else wrote it)."""
    try:
        now = state(dest, str(dest))["blake3"]
    except UsrError as exc:
        return exc
    if now != expect_current:
        return ConflictError(
            f"{dest} changed while the transfer ran; it was not replaced",
            "compare again with usr diff, then rerun",
        )
    return None
