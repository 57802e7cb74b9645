"""The store facade: one object per dataset that every layer (porcelain, sync, lifecycle)
talks to. See the contract in :mod:`usr.store`.

It owns the open repository, the object reads and writes, recording a state and moving
refs. The modules below it (revisions, revlist, checkout, gc, fsck, worktree, chunks, ...)
take the store or its repository as an argument and never import this module.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pygit2

from usr import faults, hooks
from usr.actor import Actor, current_actor
from usr.atomic import syncfs
from usr.errors import InputError, NotFoundError, StoreDamage, UsrError, VerifyError
from usr.layout import STORE_DIR
from usr.locks import dataset_lock
from usr.store import checkout, fsck, gc, revisions, revlist
from usr.store.chunks import ChunkStore
from usr.store.diff_tree import cached_sizes, diff_trees, iter_diff
from usr.store.gitpack import ObjectWriter, write_loose
from usr.store.index import CACHE_FILE, RACY_NS, StatCache
from usr.store.model import FileChange, LogEntry, Recorded, ScanStats
from usr.store.objects import (
    MAGIC,
    OBJECT_NAMES,
    OBJECT_TYPES,
    Manifest,
    git_object_id,
    inline_limit,
)
from usr.store.refs import MAIN, Refs
from usr.store.treescan import StaleTree, TreeScan
from usr.store.worktree import (
    ScannedFile,
    confirm_entry,
    hash_file,
    scan,
    stream_entry,
    walk_tree,
)

FAULT_SNAPSHOT_CHUNKS = faults.register(
    "snapshot.after-chunks", "working files hashed; chunks, blobs and trees written; no commit yet"
)
FAULT_SNAPSHOT_BEFORE_REF = faults.register(
    "snapshot.before-ref", "commit object written; refs/heads/main not moved"
)
FAULT_SNAPSHOT_AFTER_REF = faults.register(
    "snapshot.after-ref", "refs/heads/main moved; lock not yet released"
)

#: libgit2 reads packs through mmap windows (1 GiB each, 8 GiB mapped in all, by default on
#: 64-bit), and every page it touches stays in the process's resident set until unmapped.
#: Checking 100,000 packed blobs (a tree write's existence checks touch each header, and the
#: kernel maps 64 KiB around each fault) kept whole packs resident: 1.1-1.2 GiB peak RSS for
#: status, snapshot, push and pull of 100,000 files (20,000 files: 261 MiB, of it 215 MiB
#: pack pages). Small windows with a small mapped limit make libgit2 unmap the least
#: recently used ones: 93 MiB, same time. Process-wide, set once at import.
pygit2.settings.mwindow_size = 8 << 20
pygit2.settings.mwindow_mapped_limit = 32 << 20

# Dataset locks this process holds, with a depth: fcntl locks are per open file, so taking
# the same lock twice in one process would wait on itself. Store.lock() is reentrant.
_HELD: dict[str, int] = {}  # key: dataset path + thread id


class Store:
    """The object store of one dataset directory (``<dataset>/.usr/``)."""

    def __init__(self, dataset_dir: Path, repo: pygit2.Repository) -> None:
        self.path = dataset_dir
        self.gitdir = dataset_dir / STORE_DIR
        self.repo = repo
        self.refs = Refs(self.gitdir, repo)
        self.chunks = ChunkStore(self.gitdir / "chunks")
        #: The open :meth:`object_writer`, if any: new objects go into its pending pack.
        self._objects: ObjectWriter | None = None
        self.last_scan = ScanStats()
        #: Set by a terminal UI: called as ``progress(path, bytes_done, bytes_total)`` while
        #: large files are hashed. Library callers leave it None (silent).
        self.progress: Callable[[str, int, int], None] | None = None

    # -- opening --------------------------------------------------------------------------

    @classmethod
    def open(cls, dataset_dir: str | os.PathLike[str], create: bool = True) -> Store:
        """Open the store of ``dataset_dir``; with ``create``, make it (adopting whatever
        files are already there — they are recorded by the next ``record``).

        With ``create`` a missing directory is made too (a bootstrap push). Raises
        NotFoundError if, without ``create``, the directory or its store is missing.
        Completes a checkout that a crash interrupted.
        """
        path = Path(dataset_dir).absolute()
        if create and not path.exists():
            path.mkdir(parents=True)
        if not path.is_dir():
            raise NotFoundError(f"dataset directory {path} does not exist")
        gitdir = path / STORE_DIR
        if not (gitdir / "HEAD").exists():
            if not create:
                raise NotFoundError(
                    f"{path} has no usr store (.usr/)", "run 'usr snapshot' to adopt it"
                )
            repo = cls._create(gitdir)
        else:
            try:
                repo = pygit2.Repository(str(gitdir))
            except pygit2.GitError as exc:
                raise VerifyError(f"store {gitdir} cannot be opened: {exc}") from None
        store = cls(path, repo)
        if checkout.journal_path(store).exists():
            with store.lock("recover checkout"):
                checkout.recover(store)
        return store

    @staticmethod
    def _create(gitdir: Path) -> pygit2.Repository:
        # Created under a temporary name and renamed, so a crash never leaves a half-made
        # store that later looks valid. HEAD names refs/heads/main like any git repo.
        tmp = gitdir.with_name(f".usr-tmp-store-{os.getpid()}")
        repo = pygit2.init_repository(str(tmp), bare=True, initial_head="main")
        (tmp / "chunks").mkdir(exist_ok=True)
        del repo
        try:
            os.rename(tmp, gitdir)
        except OSError:
            # Another process created it first: use theirs.
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
            if not (gitdir / "HEAD").exists():
                raise
        return pygit2.Repository(str(gitdir))

    def reopen_objects(self) -> None:
        """Open the git repository afresh (after gc removed packs libgit2 had listed)."""
        self.repo = pygit2.Repository(str(self.gitdir))
        self.refs = Refs(self.gitdir, self.repo)

    def close(self) -> None:
        """Release open pack file handles."""
        self.chunks.close()

    @contextlib.contextmanager
    def lock(self, what: str = "usr", timeout: float | None = None) -> Iterator[None]:
        """The dataset lock (``<dataset>/.usr.lock``), reentrant within this process.

        Hold it (rather than :func:`usr.locks.dataset_lock` directly) around a sequence of
        store calls that must see no other writer: record, checkout and compare-and-swap
        take it themselves, and nesting is then free.
        """
        key = f"{self.path}\0{threading.get_ident()}"  # another thread must really wait
        if _HELD.get(key):
            _HELD[key] += 1
            try:
                yield
            finally:
                _HELD[key] -= 1
            return
        with dataset_lock(self.path, what=what, timeout=timeout):
            _HELD[key] = 1
            try:
                yield
            finally:
                _HELD.pop(key, None)

    # -- refs and revisions ---------------------------------------------------------------

    def head(self, ref: str = MAIN) -> str | None:
        """Commit id ``ref`` points at, or None (an empty history). A ref naming an object
        the store lacks, or one that is not a commit, is :class:`StoreDamage` (exit 5)."""
        oid = self.refs.get(ref)
        if oid is not None:
            obj = self.repo.get(oid)
            if obj is None or obj.type_str != "commit":
                what = "is not in the store" if obj is None else f"is a {obj.type_str}"
                raise StoreDamage(f"{ref} names {oid}, which {what}")
        return oid

    def update_ref(self, name: str, new: str | None, old: str | None) -> None:
        """Compare-and-swap ``name`` from ``old`` (None: must not exist) to ``new`` (None:
        delete). Raises ConflictError ("ref moved") if it holds something else."""
        if new is not None:
            obj = self.repo.get(new)
            if obj is None or obj.type != pygit2.enums.ObjectType.COMMIT:
                raise NotFoundError(f"commit {new} is not in the store", "send its objects first")
            syncfs(self.gitdir)
        self.refs.update(name, new, old)

    def resolve(self, rev: str) -> str:
        """A commit id for ``rev``: a full or abbreviated id, ``HEAD``, a ref name
        (``main``, ``refs/heads/main``, ``<remote>/main``), each optionally followed by
        ``~N`` / ``^`` (first parents). NotFoundError if nothing matches."""
        return revisions.resolve(self.repo, self.refs, rev)

    def tree_of(self, rev: str | None) -> str | None:
        """The tree id of a commit or revision, or ``rev`` itself if it is a tree id."""
        return revisions.tree_of(self.repo, self.refs, rev)

    # -- the working state ----------------------------------------------------------------

    def stat_cache(self) -> StatCache:
        return StatCache(self.gitdir / CACHE_FILE, inline_limit())

    def working_tree(self) -> str:
        """Tree id of the working files now. Writes blobs, manifests, chunks and trees
        (like ``git add`` and ``git write-tree``) but commits nothing and moves no ref.
        Files whose stat matches the stat cache are not read, and directories where every
        file did keep their cached trees (:mod:`usr.store.treescan`); ``self.last_scan``
        says how many files were read."""
        cache = self.stat_cache()
        try:
            return self._scan(cache, use_trees=True)
        except StaleTree:
            return self._scan(cache, use_trees=False)  # a cached tree was removed: rebuild

    def _scan(self, cache: StatCache, use_trees: bool) -> str:
        """One sorted walk against ``cache``; the next cache is written unless every file
        and directory hit (it only ever saves work: a read-only store still works)."""
        limit = inline_limit()
        scan_ns = time.time_ns()
        out = cache.writer(scan_ns)
        try:
            # Blobs and trees go into one pack when there are many (object_writer); chunks
            # are sealed first (the inner block closes first), so no stored manifest names
            # a chunk that is not durable, and the cache names only sealed objects.
            with self.object_writer(), self.chunks.writer() as writer:

                def hasher(rel: str, path: str, st: os.stat_result, candidate: str | None):
                    f = ScannedFile(rel, path, st)
                    return self._confirm_or_hash(f, candidate, limit, writer)

                scan = TreeScan(
                    self.path,
                    cache,
                    cache.scan_ns - RACY_NS,
                    hasher,
                    write_tree=lambda data: self.write_object("tree", data),
                    tree_exists=self.has_object,
                    out=out,
                    use_trees=use_trees,
                )
                tree, _ = scan.run()
            faults.point(FAULT_SNAPSHOT_CHUNKS)
            if scan.changed:
                with contextlib.suppress(OSError):
                    out.commit()
        finally:
            out.close()
        self.last_scan = scan.stats
        return tree

    def _confirm_or_hash(
        self, f: ScannedFile, candidate: str | None, limit: int, writer
    ) -> tuple[str, os.stat_result]:
        """A file the cache misses: confirmed by one blake3 pass when the cache holds its
        exact stat (``candidate``: racy only), else hashed and stored in full. A racy
        inline-sized file is simply hashed (reading its blob to confirm it would cost
        more), and not written again when it hashes to its cached id (the cache keeps
        that id from gc)."""
        if candidate is not None and f.st.st_size > limit:
            key = (f.st.st_size, f.st.st_mtime_ns, f.st.st_ctime_ns, f.st.st_ino)
            st = confirm_entry(self.repo, f.abspath, candidate, key)
            if st is not None:
                return candidate, st
        progress = self._file_progress(f)
        return hash_file(f.abspath, limit, self.write_blob, writer, progress, stored=candidate)

    def _file_progress(self, f) -> Callable[[int], None] | None:
        if self.progress is None:
            return None
        done = [0]
        report, total = self.progress, f.st.st_size

        def step(n: int) -> None:
            done[0] += n
            report(f.relpath, done[0], total)

        return step

    def status(self) -> list[FileChange]:
        """Working files against HEAD: what the next ``record`` would commit."""
        head = self.head()
        return self.diff(head, self.working_tree())

    def record(
        self,
        action: str,
        actor: Actor | str | None = None,
        message: str | None = None,
        check: Callable[[str], None] | None = None,
        scanned: tuple[str, str | None] | None = None,
    ) -> Recorded:
        """Under the dataset lock, commit the working state on ``refs/heads/main`` if it
        differs from HEAD (or there is no HEAD). The ONE way states are recorded.
        ``check`` is called with the working tree before anything is committed (the sync's
        gate); raising refuses the record, which then changes nothing. ``scanned``: a
        ``(tree, head)`` walk made under this lock moments ago (a sync walks both sides at
        once), taken instead of walking again if HEAD has not moved since."""
        with self.lock(f"record {action}"):
            fresh = scanned is not None and scanned[1] == self.head()
            tree = scanned[0] if fresh and scanned else self.working_tree()
            if check is not None:
                check(tree)
            head = self.head()
            if head is not None and str(self.repo[head].tree_id) == tree:
                return Recorded(head, False)
            hooks.run_pre_snapshot(self.path, action, head)  # may refuse: nothing recorded
            commit = self.commit_tree(tree, [head] if head else [], action, actor, message)
            faults.point(FAULT_SNAPSHOT_BEFORE_REF)
            self.update_ref(MAIN, commit, head)
            faults.point(FAULT_SNAPSHOT_AFTER_REF)
            return Recorded(commit, True)

    def commit_tree(
        self,
        tree: str,
        parents: list[str],
        action: str,
        actor: Actor | str | None = None,
        message: str | None = None,
        when: int | None = None,
    ) -> str:
        """Write a commit object (no ref moves): message is the action, then a blank line
        and ``message`` if given; author and committer are the actor."""
        if not action or "\n" in action:
            raise InputError(f"bad action {action!r}: one non-empty line")
        if isinstance(actor, Actor) or actor is None:
            who = actor or current_actor()
            name, email = who.as_string(), who.email
        else:
            name, email = actor, actor.rpartition(" ")[2] or "unknown"
        stamp = int(time.time()) if when is None else when
        offset = time.localtime(stamp).tm_gmtoff // 60
        sig = pygit2.Signature(name, email, stamp, offset)
        text = action + "\n" if not message else f"{action}\n\n{message.rstrip()}\n"
        oid = self.repo.create_commit(
            None, sig, sig, text, pygit2.Oid(hex=tree), [pygit2.Oid(hex=p) for p in parents]
        )
        return str(oid)

    def checkout(
        self, commit: str, force: bool = False, expect_head: str | None | object = ...
    ) -> str:
        """Make the working files equal ``commit`` and point ``refs/heads/main`` at it, in
        one locked step (staged under ``.usr-staging-*``, verified, promoted by rename).

        Refuses unrecorded changes (ConflictError) unless ``force``, which records them
        first. With ``expect_head`` given, HEAD must equal it (the compare-and-swap a push
        needs). A previous HEAD that ``commit`` does not contain is kept reachable under
        ``refs/usr/saved/<id>``. Returns the commit checked out.
        """
        return checkout.checkout(self, commit, force=force, expect_head=expect_head)

    def verify_working(self, commit: str | None = None) -> list[FileChange]:
        """Re-hash every working file (ignoring the stat cache) and compare with ``commit``
        (default HEAD): an empty list means the files are exactly that state."""
        limit = inline_limit()
        files = {}
        for f in scan(self.path):
            oid, _ = hash_file(f.abspath, limit, None, None)
            files[f.relpath] = (oid, f.mode)
        want = self.tree_of(commit or self.resolve("HEAD"))
        have = {rel: oid for rel, oid, _ in walk_tree(self.repo, want)}
        out = []
        for rel in sorted(set(files) | set(have)):
            old, new = have.get(rel), files.get(rel, (None, 0))[0]
            if old != new:
                out.append(self._change(rel, old, new))
        return out

    def _change(self, rel: str, old: str | None, new: str | None) -> FileChange:
        from usr.layout import section_of

        status = "A" if old is None else "D" if new is None else "M"
        sizes = [self._safe_size(x) for x in (old, new)]
        return FileChange(rel, status, section_of(rel), old, new, sizes[0], sizes[1])

    def _safe_size(self, oid: str | None) -> int | None:
        if oid is None:
            return None
        try:
            return self.entry_size(oid)
        except UsrError:
            return None

    # -- history --------------------------------------------------------------------------

    def diff(self, a: str | None, b: str | None, sizes: bool = True) -> list[FileChange]:
        """Exact per-file comparison of two trees or commits (either may be None = empty).

        ``sizes=False`` leaves ``old_size``/``new_size`` None: sizing reads (and verifies)
        every changed inline blob, which a caller that only needs paths and ids (checkout,
        which reads each blob once as it writes it) should not pay for."""
        size_of = self.entry_size if sizes else None
        return diff_trees(self.repo, self.tree_of(a), self.tree_of(b), size_of)

    def iter_diff(self, a: str | None, b: str | None) -> Iterator[FileChange]:
        """:meth:`diff` with sizes, one change at a time in the same order. A new side whose
        path and id the stat cache holds is sized from its row, unread (after a
        ``record`` or ``working_tree`` the cache describes the new tree; read when asked)."""
        sizes = cached_sizes(self.gitdir / CACHE_FILE, inline_limit(), self.entry_size)
        return iter_diff(self.repo, self.tree_of(a), self.tree_of(b), self.entry_size, sizes)

    def log(self, commit: str | None = None, limit: int | None = None) -> list[LogEntry]:
        """Recorded states reachable from ``commit`` (default HEAD), newest first."""
        start = self.resolve(commit) if commit else self.head()
        if start is None:
            return []
        walker = self.repo.walk(
            pygit2.Oid(hex=start), pygit2.enums.SortMode.TOPOLOGICAL | pygit2.enums.SortMode.TIME
        )
        out = []
        for c in walker:
            if limit is not None and len(out) >= limit:
                break
            out.append(self.log_entry(str(c.id)))
        return out

    def log_entry(self, commit: str) -> LogEntry:
        """One commit as a :class:`LogEntry`."""
        c = self.repo[commit]
        action, _, rest = c.message.partition("\n")
        return LogEntry(
            id=str(c.id),
            parents=tuple(str(p) for p in c.parent_ids),
            tree=str(c.tree_id),
            time=c.author.time,
            offset=c.author.offset,
            actor=c.author.name,
            action=action,
            message=rest.strip("\n"),
        )

    def merge_base(self, a: str, b: str) -> str | None:
        """Best common ancestor of two commits, or None if they share no history."""
        base = self.repo.merge_base(pygit2.Oid(hex=a), pygit2.Oid(hex=b))
        return str(base) if base is not None else None

    def is_ancestor(self, a: str, b: str) -> bool:
        """True if commit ``a`` is ``b`` or one of its ancestors."""
        return a == b or self.repo.descendant_of(pygit2.Oid(hex=b), pygit2.Oid(hex=a))

    # -- objects --------------------------------------------------------------------------

    def has_object(self, oid: str) -> bool:
        """True if the git object is stored or pending in the open object writer (not
        verified); False for anything not an id."""
        if not re.match(r"^[0-9a-f]{40}$", oid or ""):
            return False
        if self._objects is not None and oid in self._objects:
            return True
        return self.repo.odb.exists(oid)

    def read_object(self, oid: str) -> tuple[str, bytes]:
        """``(type_name, bytes)`` of a git object, verified against its id."""
        pending = self._objects.read(oid) if self._objects is not None else None
        if pending is not None:
            return pending
        name, data = self.read_stored(oid)
        if git_object_id(name, data) != oid:
            raise VerifyError(f"object {oid} is corrupt: its bytes hash differently")
        return name, data

    def read_stored(self, oid: str) -> tuple[str, bytes]:
        """``(type_name, bytes)`` of a stored object as libgit2 reads it: libgit2 checks it
        against its id (strict hash verification, its default); pending objects are not
        seen. :meth:`read_object` hashes it once more."""
        try:
            obj_type, data = self.repo.odb.read(oid)
        except KeyError:
            raise NotFoundError(f"object {oid} is not in the store") from None
        except (pygit2.GitError, ValueError) as exc:
            raise VerifyError(f"object {oid} is corrupt: {exc}") from None
        return OBJECT_NAMES.get(int(obj_type), "unknown"), data

    def write_object(self, type_name: str, data: bytes, expect: str | None = None) -> str:
        """Store a git object; VerifyError if ``expect`` is given and differs (nothing
        written). Blobs that claim to be manifests must parse. Inside
        :meth:`object_writer` the object goes into the pending pack, else it is written
        loose."""
        if type_name not in OBJECT_TYPES:
            raise InputError(f"bad object type {type_name!r}")
        oid = git_object_id(type_name, data)
        if expect is not None and oid != expect:
            raise VerifyError(f"object {expect}: received bytes hash to {oid}; refused")
        if type_name == "blob" and data.startswith(MAGIC):
            Manifest.decode(data, where=f"manifest {oid}")
        if self._objects is not None:
            self._objects.add(type_name, oid, data)
        elif not self.repo.odb.exists(oid):
            write_loose(self.repo, type_name, oid, data)
        return oid

    def write_blob(self, data: bytes) -> str:
        """Store a file's blob (or manifest) the way :meth:`write_object` does."""
        return self.write_object("blob", data)

    @contextlib.contextmanager
    def object_writer(self) -> Iterator[ObjectWriter]:
        """Write the objects of a batch into git packs usr writes itself (docs/format.md
        §3) instead of one loose file each: within the block :meth:`write_object` (or the
        yielded writer's ``add(type, oid, data)`` for bytes already checked against
        ``oid``) queues them, :meth:`has_object` and :meth:`read_object` see them, and
        they are sealed into a pack at a size threshold and when the block ends, even on
        error. After a crash only sealed packs count. Nested blocks share one writer."""
        if self._objects is not None:
            yield self._objects
            return
        writer = ObjectWriter(self.repo, self.gitdir / "objects" / "pack")
        self._objects = writer
        try:
            yield writer
        finally:
            self._objects = None
            writer.finish()

    def manifest_of(self, blob_id: str) -> Manifest | None:
        """The manifest behind a tree entry, or None for an inline blob."""
        name, data = self.read_object(blob_id)
        if name != "blob":
            raise InputError(f"{blob_id} is a {name}, not a file entry")
        if not data.startswith(MAGIC):
            return None
        return Manifest.decode(data, where=f"manifest {blob_id}")

    def entry_size(self, blob_id: str) -> int:
        """Whole-file size behind a tree entry (the manifest's size for chunked files)."""
        try:
            _, size = self.repo.odb.read_header(blob_id)
        except KeyError:
            raise NotFoundError(f"object {blob_id} is not in the store") from None
        if size < len(MAGIC) or size > (1 << 28):
            return size
        manifest = self.manifest_of(blob_id)
        return manifest.size if manifest is not None else size

    def open_entry(self, blob_id: str, where: str = "") -> Iterator[bytes]:
        """The file content behind a tree entry, streamed and verified piece by piece."""
        return stream_entry(self.repo, self.chunks, blob_id, where or blob_id)

    def read_range(self, blob_id: str, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` of the file behind an entry, verified; for a
        chunked file only the chunks covering the range are read."""
        manifest = self.manifest_of(blob_id)
        if manifest is None:
            return self.read_object(blob_id)[1][offset : offset + length]
        out = []
        pos = 0
        end = offset + length
        for cid, size in manifest.chunks:
            if pos + size > offset and pos < end:
                data = self.chunks.get(cid)
                out.append(data[max(0, offset - pos) : end - pos])
            pos += size
            if pos >= end:
                break
        return b"".join(out)

    def ls_tree(self, rev: str | None) -> list[tuple[str, str, int]]:
        """``(path, entry_id, mode)`` of every file in a tree or commit, sorted by path."""
        return list(walk_tree(self.repo, self.tree_of(rev)))

    def chunk_ids(self, blob_ids: Iterable[str]) -> list[str]:
        """The chunk ids named by the manifests among ``blob_ids``, without repeats."""
        seen: dict[str, None] = {}
        for oid in blob_ids:
            manifest = self.manifest_of(oid)
            if manifest is not None:
                for cid, _ in manifest.chunks:
                    seen.setdefault(cid, None)
        return list(seen)

    def missing_objects(self, wants: Iterable[str], haves: Iterable[str]) -> list[str]:
        """Git ids reachable from the commits ``wants`` but not from ``haves``, in an order
        a receiver can write them as they come (:func:`usr.store.revlist.missing_objects`)."""
        return revlist.missing_objects(self.repo, wants, haves)

    # -- maintenance ----------------------------------------------------------------------

    def gc(self, prune_age: float = 3600.0, repack_min: int = 256):
        """Remove objects, chunks and temp files no ref reaches (older than ``prune_age``
        seconds, so a transfer in flight keeps what it has sent). See usr.store.gc."""
        return gc.gc(self, prune_age, repack_min)

    def fsck(self):
        """Verify every reachable object and chunk and the events append-only rule;
        returns a list of :class:`Problem` (empty when the store is sound)."""
        return fsck.fsck(self)
