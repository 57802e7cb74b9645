"""Checkout: make the working files equal a recorded state, atomically enough to survive
kill -9 at any point.

The steps, all under the dataset lock:

1. Record or refuse unrecorded changes (refuse unless ``force``).
2. Stage every file to add or change under ``<dataset>/.usr-staging-<tree>/``, each one
   verified against its id while it is written (chunks by blake3, the whole file by the
   manifest). A kill can leave a staged file half-written, so leftovers of an earlier,
   crashed checkout of the same tree are reused only when they still hash to their id
   (anything else there is removed and written again); staging dirs of other trees are
   removed. Files the same process staged itself while their blobs arrived
   (:mod:`usr.store.streamstage`) are taken after one ``lstat`` shows them unchanged.
3. Write the journal ``.usr/CHECKOUT`` (atomic): target commit, staging dir, and the list
   of paths to promote and to delete. Its operations go to a temporary file while step 2
   decides them (:mod:`usr.store.journal`), which is renamed into place only now, after
   the staged files are durable. From here on the checkout is committed to.
4. Promote: delete removed paths, rename staged files into place (rename is atomic per
   file; a file where a directory must go, or a directory where a file must go, is moved
   out of the way), move ``refs/heads/main``, remove the journal and the staging dir.

A crash before 3 leaves the working files and the ref untouched (staging is reused or
removed later). A crash after 3 is rolled forward by :func:`recover`, which any
``Store.open`` runs first: every step of 4 is idempotent.

Every function takes the store as an argument: this module sits below
:mod:`usr.store.repository` (which calls it for ``Store.checkout``) and never imports it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat as statmod
from collections.abc import Callable, Container, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

from usr import faults
from usr.atomic import syncfs
from usr.errors import ConflictError, InputError
from usr.layout import check_relpath
from usr.store.claims import Claims
from usr.store.diff_tree import iter_diff
from usr.store.index import StatKey, sorted_updates
from usr.store.journal import Journal, JournalWriter, make_op, op_fields, op_json
from usr.store.objects import inline_limit
from usr.store.refs import MAIN
from usr.store.worktree import FILE_MODES, MODE_EXEC, hash_file, write_entry

STAGING_PREFIX = ".usr-staging-"
#: Above this many files to write, staging flushes the filesystem once instead of
#: fsyncing each file.
BATCH_FSYNC_FILES = 16
JOURNAL = "CHECKOUT"

FAULT_MID_STAGE = faults.register("checkout.mid-stage", "some files staged, not all")
FAULT_STAGED = faults.register("checkout.staged", "all files staged; no journal yet")
FAULT_JOURNAL = faults.register("checkout.journal-written", "journal written; nothing promoted")
FAULT_MID_PROMOTE = faults.register("checkout.mid-promote", "some staged files promoted")
FAULT_BEFORE_REF = faults.register("checkout.before-ref", "files promoted; ref not moved")
FAULT_AFTER_REF = faults.register("checkout.after-ref", "ref moved; journal not yet removed")


def journal_path(store) -> Path:
    return store.gitdir / JOURNAL


def staging_dir(store, tree: str) -> Path:
    """Where the checkout of ``tree`` stages its files (and a push streams them:
    :mod:`usr.store.streamstage`)."""
    return store.path / f"{STAGING_PREFIX}{tree[:16]}"


def _clean_other_staging(store, keep: Path | None) -> None:
    for entry in os.scandir(store.path):
        if entry.name.startswith(STAGING_PREFIX) and Path(entry.path) != keep:
            shutil.rmtree(entry.path, ignore_errors=True)


def _stage(
    store, target: str, target_tree: str, changes, staged: Staged | None = None
) -> JournalWriter:
    """Write every added/modified file of the target into the staging dir, verified, and
    each operation into the journal as it is decided (not held: one a file); the caller
    commits the journal once the staged files are durable.

    ``staged``: files this process wrote there itself from verified bytes while a push
    streamed in (:mod:`usr.store.streamstage`); each is taken after one ``lstat`` shows it
    is still the file written, without reading it again. Everything else found there is
    re-verified by hash (:func:`_staged_intact`)."""
    staging = staging_dir(store, target_tree)
    _clean_other_staging(store, staging)
    try:
        staging.mkdir()
        fresh = True  # nothing was staged for this tree before: no leftover to look for
    except FileExistsError:
        fresh = False
    modes = _Modes(store.repo, target_tree)
    journal = JournalWriter(journal_path(store), target, staging.name)
    limit = inline_limit()
    top, root = str(staging), str(store.path)
    made = {""}  # staging directories that exist (relative): each is made once
    # One fsync per file costs a journal commit each (measured: 7.4 of 13 s checking out
    # 2,000 small files). Past a few files, stage without them and flush the filesystem
    # once before the journal is written: the journal still only ever names durable files,
    # and a crash before it leaves staged files that are re-verified by hash before reuse.
    claims = staged.files if staged is not None and staged.tree == target_tree else Claims()
    took = False  # streamed files were taken: they are flushed with the filesystem below
    try:
        batched, changes = _many_puts(changes)  # reads ahead: may meet a refused entry
        for change in changes:
            rel = check_relpath(change.path)
            if change.status == "D":
                journal.add(make_op("delete", rel, None))
                continue
            mode = modes(rel)  # refuses a mode that is no regular file's, streamed or not
            parent = rel.rpartition("/")[0]
            if parent not in made:
                make_dirs(top, parent, made, clear=False)
            dest = f"{top}/{rel}"
            if claims and staged_as_written(dest, rel, claims):
                took = True
            elif fresh or not _staged_intact(dest, change.new_id, mode, limit):
                base = (f"{root}/{rel}", change.old_id) if change.status == "M" else None
                write_entry(
                    store.repo,
                    store.chunks,
                    change.new_id,
                    mode,
                    dest,
                    rel,
                    fsync=not batched,
                    base=base,
                )
            journal.add(make_op("put", rel, change.new_id))
            faults.point(FAULT_MID_STAGE)
        if batched or took:
            syncfs(staging)
    except BaseException as exc:
        journal.abort()
        # A refused tree (found as the changes stream in): nothing of it stays on disk.
        if fresh and isinstance(exc, InputError):
            shutil.rmtree(staging, ignore_errors=True)
        raise
    return journal


def _many_puts(changes) -> tuple[bool, Iterator]:
    """Whether ``changes`` (an iterable, e.g. a lazy diff) writes more than
    BATCH_FSYNC_FILES files, and the same changes to go through: only those up to the
    answer are held, not the whole comparison."""
    it = iter(changes)
    ahead, puts = [], 0
    for change in it:
        ahead.append(change)
        puts += change.status != "D"
        if puts > BATCH_FSYNC_FILES:
            break
    return puts > BATCH_FSYNC_FILES, chain(ahead, it)


#: Entries of a directory read ahead for one mode lookup before it is looked up by name.
_AHEAD = 64


class _Modes:
    """File modes of the files a checkout writes, looked up in the target tree one
    directory at a time (the changes come in path order, each directory's files together):
    no map of every path of the state for a bootstrap, and a one-file change reads the
    trees on that file's path only.

    Within a directory the entries are read forward from where the last lookup stopped
    (the changes come in the tree's order), by position: pygit2 1.21 keeps every name
    string passed to ``tree[name]`` (measured: 61 bytes a file, held to the exit). A name
    not among the next :data:`_AHEAD` entries (a few changes in a large directory) is
    looked up by name, so no lookup reads more than that many entries."""

    def __init__(self, repo, target_tree: str) -> None:
        self.repo = repo
        self.root = repo[target_tree]
        self.dir: str | None = ""
        self.tree = self.root
        self.at = 0  # the next entry of self.tree to look at

    def __call__(self, rel: str) -> int:
        parent, _, name = rel.rpartition("/")
        if parent != self.dir:
            self.tree = self.repo[self.root[parent].id] if parent else self.root
            self.dir = parent
            self.at = 0
        mode = self._forward(name)
        if mode is None:  # not ahead (not in tree order): looked up by name
            mode = self.tree[name].filemode
        if mode not in FILE_MODES:
            raise InputError(f"tree entry {rel!r} has mode {mode:o}; refused")
        return mode

    def _forward(self, name: str) -> int | None:
        tree = self.tree
        for i in range(self.at, min(len(tree), self.at + _AHEAD)):
            entry = tree[i]
            if entry.name == name:
                self.at = i + 1
                return entry.filemode
        return None


# The journal's operations (one bytes each) and their JSON form, under the names the
# tests of their shapes use.
_op, _op_fields, _op_json = make_op, op_fields, op_json


@dataclass
class Staged:
    """Files of the checkout of ``tree`` that this process wrote into its staging dir from
    verified bytes (:mod:`usr.store.streamstage`), each as :func:`stat_claim` of its path
    and its stat once written (16 bytes a file in :class:`Claims`: a transfer of 100,000
    files holds them through its checkout)."""

    tree: str
    files: Claims = field(default_factory=Claims)


def stat_claim(rel: str, st: os.stat_result) -> bytes:
    """A 128-bit digest of a staged file's path, size, mtime, ctime and inode: any write,
    chmod or replacement since it was staged changes one of them."""
    key = f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0{st.st_ino}"
    return hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=16).digest()


def staged_as_written(dest: str, rel: str, claims: Container[bytes]) -> bool:
    """True if ``dest`` (staged for ``rel``) is still the file this process staged."""
    try:
        return stat_claim(rel, os.lstat(dest)) in claims
    except OSError:
        return False


def _staged_intact(dest: str, oid: str, mode: int, limit: int) -> bool:
    """True if a file left at ``dest`` by a crashed checkout of the same tree hashes to
    ``oid`` and has the permissions of ``mode``. Anything else there (half-written by a
    kill, changed, chmodded, a symlink) is removed, so the file is written afresh and
    nothing staged is ever trusted unverified."""
    try:
        st = os.lstat(dest)
    except FileNotFoundError:
        return False
    perm = 0o755 if mode == MODE_EXEC else 0o644
    if statmod.S_ISREG(st.st_mode) and statmod.S_IMODE(st.st_mode) == perm:
        with contextlib.suppress(OSError, InputError):
            if hash_file(dest, limit, None, None)[0] == oid:
                return True
    os.unlink(dest)
    return False


def make_dirs(top: str, rel_dir: str, made: set[str], clear: bool) -> None:
    """Make directory ``top/rel_dir`` and its missing parents, adding each to ``made`` so
    later files under it skip every check. With ``clear``, a file (or anything not a
    directory) where one of them must go is moved out of the way; without, it is left for
    the write below it to fail on."""
    parts = rel_dir.split("/")
    for i in range(1, len(parts) + 1):
        sub = "/".join(parts[:i])
        if sub in made:
            continue
        path = f"{top}/{sub}"
        try:
            os.mkdir(path)
        except FileExistsError:
            if clear and not os.path.isdir(path):
                os.unlink(path)
                os.mkdir(path)
        made.add(sub)


def _delete(root: str, paths: Iterable[str]) -> None:
    """Delete removed files, then the directories that left empty (deepest first).

    Idempotent: a path already gone, or under a parent that is a file now, is done; a
    directory at a deleted file's path was made by a put of this same journal (a file
    replaced by a directory) in an earlier run, and is kept.
    """
    parents: set[str] = set()
    for rel in paths:
        path = f"{root}/{rel}"
        try:
            os.unlink(path)
        except (FileNotFoundError, NotADirectoryError):
            pass
        except OSError:  # EISDIR on Linux, EPERM elsewhere
            if not os.path.isdir(path) or os.path.islink(path):
                raise
        parents.add(rel.rpartition("/")[0])
    ancestors: set[str] = set()
    for d in parents:
        while d and d not in ancestors:
            ancestors.add(d)
            d = d.rpartition("/")[0]
    for d in sorted(ancestors, key=lambda d: d.count("/"), reverse=True):
        with contextlib.suppress(OSError):
            os.rmdir(f"{root}/{d}")  # fails, as it should, on any directory not empty


def _put(root: str, staging: str, rel: str, ready: set[str]) -> bool:
    """Rename the staged file for ``rel`` into place; False if an earlier run of the same
    journal already did. ``ready`` holds the directories made or checked in this run."""
    src, dest = f"{staging}/{rel}", f"{root}/{rel}"
    parent = rel.rpartition("/")[0]
    if parent not in ready:
        if not os.path.lexists(src):
            return False
        make_dirs(root, parent, ready, clear=True)
    try:
        os.replace(src, dest)
    except FileNotFoundError:
        return False  # the parent is a directory, so it is the staged file that is gone
    except IsADirectoryError:
        shutil.rmtree(dest)  # a directory where this file must go is moved out of the way
        os.replace(src, dest)
    return True


def _new_dir(root: str, staging: str, rel: str, ready: set[str]) -> str | None:
    """The highest directory on ``rel``'s path that the working directory lacks and the
    staging dir holds (a real directory): promoted by one rename, with every file under it.

    That is every file of the target tree under it, each staged and verified: the checkout
    compares the target with the working directory, so a file under a directory it lacks
    is an add (written, re-verified or taken as streamed), and nothing but files of the
    target tree at their own paths is ever written into its staging dir. The puts under it
    are consecutive in the journal (tree order), so they are skipped by prefix. A recovery
    that meets the directory in place takes the per-file path, each file already gone from
    the staging dir (:func:`_put`). Directories found in place go into ``ready``."""
    parent = rel.rpartition("/")[0]
    if parent in ready:
        return None
    at = ""
    for part in parent.split("/"):
        at = f"{at}/{part}" if at else part
        if at in ready:
            continue
        try:
            st = os.lstat(f"{root}/{at}")
        except FileNotFoundError:
            with contextlib.suppress(OSError):
                if statmod.S_ISDIR(os.lstat(f"{staging}/{at}").st_mode):
                    return at
            return None
        if not statmod.S_ISDIR(st.st_mode):
            return None  # a file where a directory must go: :func:`_put` moves it away
        ready.add(at)
    return None


def _promote(store, journal: Journal) -> None:
    """Apply a journal: idempotent, so recovery can run it again from any point. Its
    operations are read from the file, deletes first, then puts (in path order, as the
    diff gave them), whose stat cache rows go straight into the next cache file
    (:func:`usr.store.index.sorted_updates`), saved once the ref has moved."""
    root = str(store.path)
    staging = f"{root}/{journal.staging}"
    if journal.deletes:  # a bootstrap's journal, known to have none, is walked once
        _delete(root, (p for kind, p, _ in map(_op_fields, journal.ops()) if kind == "delete"))
    ready = {""}  # the root exists; no later put of this run can remove what is added
    moved = "\0"  # the last directory renamed whole, with a "/": its puts are done
    with sorted_updates(store.stat_cache()) as cache:
        for kind, rel, oid in map(_op_fields, journal.ops()):
            if kind != "put":
                continue
            if rel.startswith(moved):
                pass  # renamed with its directory
            elif (new := _new_dir(root, staging, rel, ready)) is not None:
                os.replace(f"{staging}/{new}", f"{root}/{new}")
                moved = f"{new}/"
                faults.point(FAULT_MID_PROMOTE)
            elif _put(root, staging, rel, ready):
                faults.point(FAULT_MID_PROMOTE)
            with contextlib.suppress(FileNotFoundError):
                # After the rename: it changes the ctime, which the cache key holds.
                st = os.stat(f"{root}/{rel}")
                cache.update(rel, StatKey.of(st), str(oid), st.st_mode)
        faults.point(FAULT_BEFORE_REF)
        current = store.head()
        if current != journal.commit:
            store.update_ref(MAIN, journal.commit, current)
        faults.point(FAULT_AFTER_REF)
        cache.save()
    journal_path(store).unlink(missing_ok=True)
    shutil.rmtree(staging, ignore_errors=True)


def recover(store) -> bool:
    """Roll forward a checkout that a crash interrupted after its journal was written.

    Caller holds the dataset lock. True if there was one to finish.
    """
    path = journal_path(store)
    try:
        journal = Journal(path)
    except FileNotFoundError:
        return False
    except ValueError:
        path.unlink()  # the journal is written atomically, so this cannot be half of one
        return False
    _promote(store, journal)
    return True


def checkout(
    store,
    commit: str,
    force: bool = False,
    expect_head: object = ...,
    staged: Staged | None = None,
    ready: Callable[[], None] | None = None,
) -> str:
    """See :meth:`usr.store.repository.Store.checkout`; ``staged`` names files a push
    streamed into the staging dir (see :func:`_stage`). ``ready`` is called once every file
    is staged and durable, before the journal commits to the promote: raising there
    refuses the checkout with nothing promoted (a gate run meanwhile, for one)."""
    target = store.resolve(commit)
    with store.lock(f"checkout {target[:12]}"):
        recover(store)
        head = store.head()
        if expect_head is not ... and head != expect_head:
            raise ConflictError(
                f"HEAD moved: expected {expect_head or 'no state'}, found {head or 'no state'}",
                "re-read and retry",
            )
        work = store.working_tree()
        head_tree = str(store.repo[head].tree_id) if head else None
        if head is None and work == _empty_tree(store):
            head_tree = work
        if work != head_tree:
            pending = store.diff(head, work, sizes=False)
            if not force:
                names = ", ".join(c.path for c in pending[:3]) + (
                    " ..." if len(pending) > 3 else ""
                )
                raise ConflictError(
                    f"{store.path} has unrecorded changes ({len(pending)} files: {names})",
                    "run 'usr snapshot' first, or use --force to record them and go on",
                )
            recorded = store.record("checkout: record unrecorded changes")
            head = recorded.commit
        target_tree = str(store.repo[target].tree_id)
        if head is not None and head != target and not store.is_ancestor(head, target):
            saved = f"refs/usr/saved/{head}"
            if store.refs.get(saved) is None:
                store.update_ref(saved, head, None)  # no recorded state is ever lost
        # One change at a time: the comparison is never held whole (100,000 files: ~44 MiB
        # of FileChange objects); each operation goes to the journal's file as it comes.
        changes = iter_diff(store.repo, store.tree_of(work), target_tree, None)
        journal = _stage(store, target, target_tree, changes, staged)
        try:
            faults.point(FAULT_STAGED)
            if ready is not None:
                ready()
        except BaseException:
            journal.abort()
            raise
        committed = journal.commit()
        faults.point(FAULT_JOURNAL)
        _promote(store, committed)
    return target


def _empty_tree(store) -> str:
    return str(store.repo.TreeBuilder().write())
