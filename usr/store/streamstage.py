"""Streamed staging: the working files of a pushed state written while its blobs arrive.

A push sends its commits and trees before its blobs (docs/protocol.md, "Push"), so the
receiver knows the target tree before any file content. As each verified inline blob
lands, :class:`StreamStager` writes it at every path of the target tree that names it, into
the staging dir the checkout of that tree uses (:func:`usr.store.checkout.staging_dir`),
each directory made once, and remembers the stat of each file it wrote. The checkout of
the same process then takes those files (:class:`usr.store.checkout.Staged`) after one
``lstat`` each, without reading or hashing them again: each byte is handled once on its
way from the wire to the working copy, where it was written to the store, read back,
hashed and written again. Anything else in the staging dir (left by an earlier, killed
process, or changed since it was written) is re-verified by hash as before, so nothing
unverified is ever promoted.

No lock is held (a push streams without the dataset lock): the staging dir is only work
the checkout may take. A write that fails (the dir removed by a checkout of another tree,
a full disk) turns streaming off for the rest of the receive, and the checkout stages
those files itself. Large files (manifests) are left to the checkout, unless the stream
sends each manifest before its chunks (``chunked``: the "manifest_first" capability): then
:class:`usr.store.chunkstage.ChunkStager` writes them as their chunks land.
"""

from __future__ import annotations

import contextlib
import shutil
from typing import Any

from usr.errors import UsrError
from usr.store.checkout import Staged, journal_path, make_dirs, staging_dir
from usr.store.chunkstage import ChunkStager, Verified
from usr.store.claims import Claims
from usr.store.objects import is_manifest_bytes
from usr.store.stagewriter import StageWriter
from usr.store.worktree import MODE_EXEC, MODE_FILE, MODE_TREE


class StreamStager:
    """Fed each verified object of a receive (``tree``, ``commit``, ``blob``); stages the
    files of the last commit's tree as their blobs land. :meth:`result` says which."""

    def __init__(
        self,
        store: Any,
        tree: str | None = None,
        base: str | None = None,
        chunked: bool = False,
        on_verified: Verified | None = None,
    ) -> None:
        """``tree``: the target, when known before the stream (a pull has fetched it);
        else the tree of the last commit before the first blob (a push). ``base``: the
        receiver's own tree (its head's: a pull's local one, a push's stored one), whose
        equal subtrees are not walked. ``chunked``: the stream sends each manifest before
        its chunks, so chunked files are staged too; ``on_verified``: told of each chunked
        file once it is staged and verified whole (:class:`ChunkStager`)."""
        self.store = store
        self.on_verified = on_verified
        self.base = base
        self.chunked = chunked
        self.chunks: ChunkStager | None = None
        self.fixed = tree is not None
        #: Raw bytes of the trees in the stream (already verified and parsed), until the
        #: first blob: the target tree is walked through them.
        self.trees: dict[str, bytes] = {}
        self.tree = tree
        #: raw blob id -> its path in the target tree with its mode (:func:`_target`), or a
        #: list of them for a blob at several paths; None until the first blob. One bytes
        #: and one str a file, where hex ids and lists of (path, mode) tuples took ~2.2x.
        self.paths: dict[bytes, str | list[str]] | None = None
        self.top = ""
        self.made = {""}
        self.off = False
        self.files = Claims()  # what stat_claim says of each file written
        #: Creates the small files on its own thread (made with the staging dir).
        self.writer: StageWriter | None = None
        #: The umask keeps every permission bit os.open is asked for: no fchmod a file.
        self.exact = _umask() & 0o755 == 0

    def on_tree(self, oid: str, data: bytes) -> None:
        if self.paths is None:
            self.trees[oid] = data

    def on_commit(self, tree: str) -> None:
        """A commit of the stream: the last one before the blobs is the state pushed (a
        push sends its commits oldest first)."""
        if self.paths is None and not self.fixed:
            self.tree = tree

    def on_blob(self, oid: str, data: bytes) -> None:
        """Stage a verified blob at each path of the target tree that names it."""
        if self.off:
            return
        if self.paths is None:
            self._plan()
            if self.off:
                return
        found = self.paths.pop(bytes.fromhex(oid), None)  # type: ignore[union-attr]
        if not found:
            return
        targets = _targets(found)
        if is_manifest_bytes(data):
            self._on_manifest(oid, data, targets)
            return
        writer = self.writer
        if writer is None or writer.error is not None:
            self.off = True  # a write failed: the checkout stages what is not claimed
            return
        for rel, mode in targets:
            writer.put(rel, mode, data)
        self._collect()

    def on_chunk(self, cid: str, data: bytes) -> None:
        """A verified chunk of the stream: written into the chunked files awaiting it."""
        if self.chunks is not None:
            self.chunks.on_chunk(cid, data)

    def _on_manifest(self, oid: str, data: bytes, targets: list[tuple[str, int]]) -> None:
        if self.chunks is None:
            return
        try:
            for rel, _mode in targets:
                parent = rel.rpartition("/")[0]
                if parent not in self.made:
                    make_dirs(self.top, parent, self.made, clear=False)
        except OSError:
            return  # the checkout writes them
        self.chunks.on_manifest(data, targets, oid)

    def drain(self) -> None:
        """Return once every file handed to the writer thread so far is written. A crash
        point reached after the stream calls this when armed, so that a kill there leaves
        the same whole staged files every run, not one torn by the thread's progress."""
        if self.writer is not None:
            self.writer.drain()

    def result(self) -> Staged | None:
        """The files staged, for the checkout of the same process (None: none). Chunked
        files still awaiting chunks are completed from the store (sealed by now) first."""
        if self.writer is not None:
            self.writer.close()
            self._collect()
            error = self.writer.error
            if error is not None and not isinstance(error, OSError):
                raise error
        if self.chunks is not None:
            self.chunks.finish()
        self.trees, self.paths = {}, {}
        if self.tree is None or not self.files:
            return None
        return Staged(self.tree, self.files)

    def discard(self) -> None:
        """Remove the staging dir when no checkout will take it (the stream or the update
        was refused): a refused transfer leaves nothing in the working directory. Under
        the dataset lock, as a checkout removes a staging dir it does not need, and not
        while a checkout journal exists (recovery may still need it); if the lock is busy
        it is left, a cache that the next checkout removes or re-verifies."""
        self.trees, self.paths = {}, {}
        if self.writer is not None:
            self.writer.close(abandon=True)  # nothing is written into the dir once removed
        if self.chunks is not None:
            self.chunks.abort()
        if not self.top:
            return
        with contextlib.suppress(UsrError, OSError), self.store.lock("discard staging", 0):
            if not journal_path(self.store).exists():
                shutil.rmtree(self.top, ignore_errors=True)

    def _plan(self) -> None:
        """At the first blob: map the blobs of the target tree to their paths, and make the
        staging dir. Only what can still arrive is walked: the paths where the target
        differs from ``base`` (a blob equal at the same path is stored already), so one
        new file among a million maps one file, not every file. Without a commit before
        the blobs (an older client sends blobs first) nothing is streamed."""
        self.paths = {}
        if self.tree is None:
            self.off = True
            return
        try:
            self._walk(self.tree, "", self.base)
        except (KeyError, ValueError, UnicodeDecodeError):
            self.off = True  # a tree neither streamed nor stored: the checkout will say so
            return
        finally:
            self.trees = {}
        staging = staging_dir(self.store, self.tree)
        try:
            staging.mkdir(exist_ok=True)
        except OSError:
            self.off = True
        self.top = str(staging)
        self.writer = StageWriter(self.top, self.exact)
        if self.chunked and not self.off:
            head = self.store.head()
            base = self.store.tree_of(head) if head else None
            self.chunks = ChunkStager(self.store, self.top, self.files, base, self.on_verified)

    def _walk(self, tree: str, prefix: str, base: str | None) -> None:
        """Map the files of ``tree`` that differ from ``base`` (the tree at this path in
        the receiver's state) to their paths."""
        if tree == base:
            return
        theirs = {name: oid for _, name, oid in self._entries(base)} if base else {}
        for mode, name, oid in self._entries(tree):
            if mode == MODE_TREE:
                self._walk(oid, f"{prefix}{name}/", theirs.get(name))
            elif theirs.get(name) != oid:  # the same blob at the same path: not fetched
                self._map(oid, _target(f"{prefix}{name}", mode))

    def _map(self, oid: str, target: str) -> None:
        key = bytes.fromhex(oid)
        got = self.paths.get(key)  # type: ignore[union-attr]
        if got is None:
            self.paths[key] = target  # type: ignore[index]
        elif isinstance(got, str):
            self.paths[key] = [got, target]  # type: ignore[index]
        else:
            got.append(target)

    def _entries(self, tree: str) -> list[tuple[int, str, str]]:
        """``(mode, name, id)`` of a tree of the stream (its bytes were parsed and refused
        if unsafe on arrival) or of the store."""
        data = self.trees.get(tree)
        if data is None:
            return [(e.filemode, e.name, str(e.id)) for e in self.store.repo[tree]]
        out = []
        i = 0
        while i < len(data):
            sp = data.index(b" ", i)
            nul = data.index(b"\x00", sp)
            out.append(
                (int(data[i:sp], 8), data[sp + 1 : nul].decode(), data[nul + 1 : nul + 21].hex())
            )
            i = nul + 21
        return out

    def _collect(self) -> None:
        """Take the claims of the files the writer has made so far (on this thread: the
        claims table is not shared with the writer's)."""
        claims = self.writer.claims  # type: ignore[union-attr]
        add = self.files.add
        while claims:
            add(claims.popleft())


def _target(rel: str, mode: int) -> str:
    """A path of the target tree and its mode as one string: "x" and the path for an
    executable file, "f" and the path otherwise (the mode decides only the permissions)."""
    return ("x" if mode == MODE_EXEC else "f") + rel


def _targets(found: str | list[str]) -> list[tuple[str, int]]:
    """``[(path, mode)]`` of what :func:`_target` made for a blob."""
    items = [found] if isinstance(found, str) else found
    return [(t[1:], MODE_EXEC if t[0] == "x" else MODE_FILE) for t in items]


def _umask() -> int:
    """The process's umask, read without setting it (``os.umask`` sets it, and another
    thread may create a file meanwhile); every bit when Linux's ``/proc`` does not say."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status", "rb") as fh:
        for line in fh:
            if line.startswith(b"Umask:"):
                return int(line.split()[1], 8)
    return 0o777
