"""Streamed staging of chunked files: a large file's working copy written as its chunks land.

With manifests first (docs/protocol.md, "Manifests first") a receiver learns each chunked
file of the target tree (its manifest: size, whole-file blake3, ordered chunks) before
any of its chunks. :class:`ChunkStager` then opens the file in the checkout's staging dir
(:func:`usr.store.checkout.staging_dir`) at once, sized as the manifest says, and:

* copies the leading chunks it shares with the current working file (at least
  :data:`usr.store.worktree.REUSE_MIN` bytes) in the kernel (``os.copy_file_range``);
* fills every other chunk the chunk store already holds from there;
* writes each chunk that arrives at its offset(s) as it lands, already verified by blake3
  and checked here against the length the manifest claims.

The whole-file blake3 is computed in file order as the bytes become contiguous (a chunk
that lands in order is hashed from memory; anything else is read back), and a file counts
as staged only once every chunk is in place and the whole hashes to the manifest's
blake3: then it is claimed like a streamed small file (:func:`usr.store.checkout.stat_claim`)
and the checkout renames it without reading it. A file that fails any check is removed,
and one still incomplete when the stream ends is completed from the (now sealed) chunk
store by :meth:`ChunkStager.finish`, or removed: the checkout writes what is not claimed,
so nothing unverified is ever promoted and a good working file is never replaced by a
broken one. At most :data:`MAX_OPEN` files are open at once; later manifests are left to
the checkout.
"""

from __future__ import annotations

import contextlib
import os
import stat as statmod
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import blake3

from usr import faults
from usr.errors import VerifyError
from usr.store.checkout import stat_claim
from usr.store.chunks import WRITEBACK_BYTES, start_writeback
from usr.store.claims import Claims
from usr.store.index import CACHE_FILE, RACY_NS, trusted_before
from usr.store.objects import Manifest
from usr.store.worktree import MODE_EXEC, REUSE_MIN, read_blob

FAULT_STREAMED_CHUNK = faults.register(
    "checkout.streamed-chunk",
    "receiver: a verified chunk written into a chunked file in the staging dir mid-stream",
)

#: Told ``(path in the tree, blob id, staged file, its stat)`` of a file verified whole.
Verified = Callable[[str, str, str, os.stat_result], None]

#: Chunked files open for writing at once, at most (each holds one descriptor).
MAX_OPEN = 64
#: Bytes read back at a time to hash what was not hashed on arrival.
READ_BACK = 8 << 20
#: A verified staged file's mtime is set back at most this far (see :func:`_backdate`).
MAX_BACKDATE_NS = 3600 * 1_000_000_000


@dataclass(eq=False)
class _File:
    """One chunked file being staged."""

    rel: str
    dest: str
    fd: int
    manifest: Manifest
    offsets: list[int]
    present: bytearray
    #: The manifest's blob id (empty when the caller did not say).
    oid: str = ""
    hasher: Any = field(default_factory=blake3.blake3)
    #: Index of the first chunk not yet fed to ``hasher`` (all before it are hashed).
    next: int = 0
    missing: int = 0
    #: Writeback bookkeeping: lowest offset written and bytes written since the last push.
    dirty_from: int = -1
    dirty: int = 0
    dead: bool = False


class ChunkStager:
    """Stages the chunked files of a target tree while their chunks arrive.

    ``top``: the staging dir (made); ``files``: the claims set shared with the small-file
    stager (:class:`usr.store.streamstage.StreamStager`), to which each verified file adds
    its claim; ``base_tree``: the tree of the current working files (the head), whose
    version of a path lends its shared prefix; ``on_verified``: told ``(path, blob id,
    staged file, its stat)`` of each file once it is verified whole (its claim made)."""

    def __init__(
        self,
        store: Any,
        top: str,
        files: Claims,
        base_tree: str | None,
        on_verified: Verified | None = None,
    ) -> None:
        self.store = store
        self.top = top
        self.files = files
        self.base_tree = base_tree
        self.on_verified = on_verified
        self.open: list[_File] = []
        #: chunk id -> [(file, index)] still to be written from the stream.
        self.waiting: dict[str, list[tuple[_File, int]]] = {}

    # -- the stream ------------------------------------------------------------------------
    def on_manifest(self, data: bytes, targets: list[tuple[str, int]], oid: str = "") -> None:
        """A verified manifest (blob ``oid``) naming ``targets`` = ``[(path, mode)]`` of the
        target tree."""
        try:
            manifest = Manifest.decode(data)
        except VerifyError:
            return  # the receive refuses it; the checkout would say so too
        for rel, mode in targets:
            if len(self.open) >= MAX_OPEN:
                return  # the checkout writes the rest
            f = self._open(rel, mode, manifest, oid)
            if f is None:
                continue
            try:
                self._fill_local(f)
            except (OSError, VerifyError):
                self._drop(f)
                continue
            self._settle(f)

    def on_chunk(self, cid: str, data: bytes) -> None:
        """A chunk of the stream, verified against ``cid``: write it wherever it is awaited."""
        for f, i in self.waiting.pop(cid, ()):
            if f.dead or f.present[i]:
                continue
            if len(data) != f.manifest.chunks[i][1]:
                self._drop(f)  # the manifest lies about a length: the checkout refuses it
                continue
            try:
                self._put(f, i, data)
            except OSError:
                self._drop(f)
                continue
            faults.point(FAULT_STREAMED_CHUNK)
            self._settle(f)

    def finish(self) -> None:
        """After the stream (its chunks sealed): complete each open file from the chunk
        store, verify it and claim it, or remove it."""
        self.waiting = {}
        for f in list(self.open):
            try:
                for i, (cid, length) in enumerate(f.manifest.chunks):
                    if not f.present[i]:
                        self._put(f, i, self._stored(cid, length))
            except (OSError, VerifyError):
                self._drop(f)
                continue
            self._settle(f)
        for f in list(self.open):
            self._drop(f)  # not reached: nothing half-done stays behind

    def abort(self) -> None:
        """The stream or the update was refused: remove every file not yet complete."""
        self.waiting = {}
        for f in list(self.open):
            self._drop(f)

    # -- one file --------------------------------------------------------------------------
    def _open(self, rel: str, mode: int, manifest: Manifest, oid: str) -> _File | None:
        """Create (or take over, after a killed receive of the same tree) the staged file,
        sized as the manifest says. None if it cannot be."""
        dest = f"{self.top}/{rel}"
        perm = 0o755 if mode == MODE_EXEC else 0o644
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            try:
                fd = os.open(dest, flags | os.O_CREAT | os.O_EXCL, perm)
            except FileExistsError:
                fd = os.open(dest, flags)  # left by a killed receive: rewritten in place
        except OSError:
            return None
        try:
            if not statmod.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(f"{dest} is not a regular file")
            os.fchmod(fd, perm)
            os.ftruncate(fd, manifest.size)
        except OSError:
            os.close(fd)
            return None
        offsets, pos = [], 0
        for _cid, length in manifest.chunks:
            offsets.append(pos)
            pos += length
        n = len(manifest.chunks)
        f = _File(rel, dest, fd, manifest, offsets, bytearray(n), oid, missing=n)
        self.open.append(f)
        return f

    def _fill_local(self, f: _File) -> None:
        """Everything of ``f`` this side already holds: the prefix shared with the current
        working file (copied in the kernel), then chunks in the chunk store. The rest is
        awaited from the stream."""
        self._copy_prefix(f)
        for i, (cid, length) in enumerate(f.manifest.chunks):
            if f.present[i]:
                continue
            if self.store.chunks.has(cid):
                self._put(f, i, self._stored(cid, length))
            else:
                self.waiting.setdefault(cid, []).append((f, i))

    def _stored(self, cid: str, length: int) -> bytes:
        data = self.store.chunks.get(cid)  # verified by blake3
        if len(data) != length:
            raise VerifyError(f"chunk {cid} has {len(data)} bytes, its manifest claims {length}")
        return data

    def _copy_prefix(self, f: _File) -> None:
        """Copy the leading chunks ``f`` shares with the working file at its path (when they
        are at least REUSE_MIN bytes), and hash them read back from ``f`` itself: a base
        that changed since it was recorded only makes the whole-file check fail."""
        base = self._base(f.rel)
        if base is None or not hasattr(os, "copy_file_range"):
            return
        count, shared = 0, 0
        for a, b in zip(base.chunks, f.manifest.chunks, strict=False):
            if a != b:
                break
            count += 1
            shared += a[1]
        if shared < REUSE_MIN:
            return
        try:
            with open(f"{self.store.path}/{f.rel}", "rb", buffering=0) as src:
                if not _copy_range(src.fileno(), f.fd, shared):
                    return
        except OSError:
            return  # the base went away or cannot be copied: chunks fill it instead
        for i in range(count):
            f.present[i] = 1
        f.missing -= count
        self._note_written(f, 0, shared)

    def _base(self, rel: str) -> Manifest | None:
        """The manifest of ``rel`` in the current tree, if it is chunked there."""
        if self.base_tree is None:
            return None
        try:
            entry = self.store.repo[self.base_tree][rel]
            return Manifest.decode(read_blob(self.store.repo, str(entry.id)))
        except (KeyError, ValueError, VerifyError):
            return None

    def _put(self, f: _File, i: int, data: bytes) -> None:
        """Write chunk ``i`` of ``f`` at its offset; hash it now if it is next in order."""
        offset = f.offsets[i]
        view = memoryview(data)
        done = 0
        while done < len(view):
            done += os.pwrite(f.fd, view[done:], offset + done)
        f.present[i] = 1
        f.missing -= 1
        if i == f.next:
            f.hasher.update(data)
            f.next += 1
        self._note_written(f, offset, len(data))

    def _note_written(self, f: _File, offset: int, length: int) -> None:
        """Start writing dirty pages to disk every WRITEBACK_BYTES, so the checkout's
        filesystem flush waits for the tail only (as the checkout's own writes do)."""
        f.dirty_from = offset if f.dirty_from < 0 else min(f.dirty_from, offset)
        f.dirty += length
        if f.dirty >= WRITEBACK_BYTES:
            start_writeback(f.fd, f.dirty_from, 0)
            f.dirty_from, f.dirty = -1, 0

    def _settle(self, f: _File) -> None:
        """Hash what became contiguous; once every chunk is in place, verify and claim."""
        try:
            self._advance(f)
        except OSError:
            self._drop(f)
            return
        if f.missing == 0:
            self._complete(f)

    def _advance(self, f: _File) -> None:
        """Feed the hasher every chunk from ``f.next`` on that is in place, reading the
        bytes back in READ_BACK runs (a copied prefix, chunks that landed out of order)."""
        chunks = f.manifest.chunks
        while f.next < len(chunks) and f.present[f.next]:
            start = f.next
            length = 0
            while f.next < len(chunks) and f.present[f.next] and length < READ_BACK:
                length += chunks[f.next][1]
                f.next += 1
            _hash_range(f.fd, f.hasher, f.offsets[start], length)

    def _complete(self, f: _File) -> None:
        """Every chunk in place: the file counts as staged only if it hashes as claimed."""
        self.open.remove(f)
        try:
            st = os.fstat(f.fd)
            good = (
                f.next == len(f.manifest.chunks)
                and st.st_size == f.manifest.size
                and f.hasher.hexdigest() == f.manifest.blake3
            )
            if good:
                if _backdate(f.fd, trusted_before(self.store.gitdir / CACHE_FILE)):
                    st = os.fstat(f.fd)  # utime changed the ctime the claim holds
                self.files.add(stat_claim(f.rel, st))
        finally:
            os.close(f.fd)
        if not good:
            f.dead = True
            with contextlib.suppress(OSError):
                os.unlink(f.dest)
        elif self.on_verified is not None:
            self.on_verified(f.rel, f.oid, f.dest, st)

    def _drop(self, f: _File) -> None:
        """Give up on ``f``: close and remove it; the checkout writes it from the store."""
        if f.dead:
            return
        f.dead = True
        if f in self.open:
            self.open.remove(f)
        with contextlib.suppress(OSError):
            os.close(f.fd)
        with contextlib.suppress(OSError):
            os.unlink(f.dest)


def _backdate(fd: int, line: int | None) -> bool:
    """Set the mtime of a verified staged file back, so that the checkout's stat cache
    entry for it is trusted by the next scan instead of being racy (a freshly written
    file is, and every scan would re-read it whole: 380 MB of blake3 on each side of every
    append push, docs/performance.md). True if it was set.

    The time set is 1 s below the cache's trust line ``line``
    (:func:`usr.store.index.trusted_before`; the entry then hits at once), or, when that
    is unknown (no cache yet: a bootstrap), in the future of ``now - RACY_NS``, or more
    than :data:`MAX_BACKDATE_NS` ago, ``now - RACY_NS - 1 s`` (the entry hits once a scan
    that starts after now has saved the cache: the checkout's own, on a bootstrap).

    Safe because the time set is at least :data:`usr.store.index.RACY_NS` before now,
    while any later write to the file (after the promote, by anyone) stamps the current
    time, which no filesystem tick of up to ``RACY_NS`` rounds back onto the one set
    here: the next scan sees a different stat and reads the file. The file is in the
    private staging dir, verified, and not yet visible, so no write is hidden by this."""
    now = time.time_ns()
    when = now - RACY_NS - 1_000_000_000
    if line is not None and now - MAX_BACKDATE_NS <= line - 1_000_000_000 < when:
        when = line - 1_000_000_000
    try:
        os.utime(fd, ns=(now, when))
    except OSError:
        return False
    return True


def _copy_range(src: int, dst: int, length: int) -> bool:
    """Copy the first ``length`` bytes of ``src`` to the same offsets of ``dst`` in the
    kernel; False if the source is shorter."""
    done = 0
    while done < length:
        n = os.copy_file_range(src, dst, length - done, done, done)
        if n == 0:
            return False
        done += n
    return True


def _hash_range(fd: int, hasher: Any, offset: int, length: int) -> None:
    """Feed ``hasher`` ``length`` bytes of ``fd`` from ``offset`` (OSError if short)."""
    end = offset + length
    while offset < end:
        data = os.pread(fd, min(end - offset, READ_BACK), offset)
        if not data:
            raise OSError(f"short read at offset {offset}")
        hasher.update(data)
        offset += len(data)
