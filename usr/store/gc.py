"""gc: remove what no ref reaches — loose objects, chunks, whole packs or their dead parts,
temporary files and staging leftovers a crash left behind — and merge the git object packs
transfers wrote (one or more per transfer) into one.

Roots are every ref (``refs/heads``, ``refs/remotes``, ``refs/usr/saved``), the stat
cache's entry ids (as git keeps its index's blobs) and an unfinished checkout's target.
Anything younger than ``prune_age`` seconds is kept even when unreachable: objects and
chunks are written without the dataset lock (a transfer streams them before it moves a
ref), so a young unreachable object may be about to become reachable.

:func:`gc` takes the store as an argument (``Store.gc`` calls it): this module imports the
store's lower modules (checkout, chunks, gitpack, ...), never :mod:`usr.store.repository`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path

import pygit2

from usr.atomic import TMP_PREFIX
from usr.layout import STORE_DIR
from usr.store import gitpack
from usr.store.checkout import STAGING_PREFIX, journal_path
from usr.store.chunks import read_pack_index
from usr.store.model import GcReport
from usr.store.objects import MAGIC, Manifest
from usr.store.worktree import MODE_TREE


def _reachable(store) -> tuple[set[str], set[str]]:
    """(git object ids, chunk ids) reachable from every root."""
    objects: set[str] = set()
    chunks: set[str] = set()
    blobs: set[str] = set()
    tips = {store.refs.get(n) for n in store.refs.names()}
    with contextlib.suppress(FileNotFoundError, ValueError):
        tips.add(json.loads(journal_path(store).read_bytes())["commit"])
    tips.discard(None)

    def tree(tid: str) -> None:
        if tid in objects:
            return
        objects.add(tid)
        for e in store.repo[tid]:
            if e.filemode == MODE_TREE:
                tree(str(e.id))
            else:
                blobs.add(str(e.id))

    for tip in tips:
        if store.repo.get(tip) is None:
            continue
        for c in store.repo.walk(pygit2.Oid(hex=tip), pygit2.enums.SortMode.NONE):
            cid = str(c.id)
            if cid in objects:
                continue
            objects.add(cid)
            tree(str(c.tree_id))
    cache = store.stat_cache()
    blobs |= {oid for oid in cache.entry_ids() if store.repo.odb.exists(oid)}
    # The cache-tree's trees too: a scan names them in new trees without reading them.
    objects |= {oid for oid in cache.tree_ids() if store.repo.odb.exists(oid)}
    objects |= blobs
    for oid in blobs:
        _, size = store.repo.odb.read_header(oid)
        if size < len(MAGIC):
            continue
        data = store.repo.odb.read(oid)[1]
        if data.startswith(MAGIC):
            chunks.update(cid for cid, _ in Manifest.decode(data).chunks)
    return objects, chunks


def _old(path: Path | str, cutoff: float) -> bool:
    try:
        return os.stat(path).st_mtime < cutoff
    except FileNotFoundError:
        return False


def _remove(path: str, report: GcReport) -> None:
    with contextlib.suppress(FileNotFoundError):
        report.bytes_freed += os.stat(path).st_size
        os.unlink(path)


def _repack_objects(store, live: set[str], cutoff: float, report: GcReport) -> None:
    """Merge the git object packs older than the cutoff into one holding only their live
    objects, deflated (a receive stores them uncompressed), when there are two or more of
    them or one holds a dead object; drop orphan
    ``.pack`` files (no idx: a crash between the two renames) older than the cutoff.

    The new pack is sealed (fsynced, renamed, directory fsynced) before an old one is
    removed, idx first: a crash in between leaves duplicates, never a missing object.
    Young packs are left whole (a transfer in flight may be about to name their objects).
    """
    pack_dir = store.gitdir / "objects" / "pack"
    if not pack_dir.is_dir():
        return
    for name in os.listdir(pack_dir):
        orphan = name.endswith(".pack") and not (pack_dir / f"{name[:-5]}.idx").exists()
        if orphan and _old(pack_dir / name, cutoff):
            _remove(str(pack_dir / name), report)
    old = [n for n in gitpack.pack_names(pack_dir) if _old(pack_dir / f"{n}.idx", cutoff)]
    listed = {n: list(gitpack.iter_pack_objects(pack_dir / f"{n}.idx")) for n in old}
    dead = {oid for oids in listed.values() for oid in oids if oid not in live}
    if len(old) < 2 and not dead:
        return
    builder = gitpack.PackBuilder(pack_dir, level=gitpack.GC_LEVEL)
    for oid in dict.fromkeys(o for oids in listed.values() for o in oids if o in live):
        type_name, data = store.read_object(oid)  # verified: a corrupt object stops gc here
        builder.add(type_name, oid, data)
        if builder.size >= gitpack.SEAL_MAX_BYTES:
            builder.seal()
    builder.seal()
    for name in old:
        if name in builder.sealed:
            continue  # the rewrite produced this very pack again
        _remove(str(pack_dir / f"{name}.idx"), report)
        _remove(str(pack_dir / f"{name}.pack"), report)
        report.packs_rewritten += 1
    report.objects_removed += len(dead)
    store.reopen_objects()  # libgit2 may still hold the removed packs in its list


#: Loose chunks are repacked once at least this many are live.
REPACK_LOOSE_MIN = 256


def gc(store, prune_age: float = 3600.0, repack_min: int = REPACK_LOOSE_MIN) -> GcReport:
    """Run gc under the dataset lock; see the module docstring."""
    report = GcReport()
    cutoff = time.time() - prune_age
    with store.lock("gc"):
        objects, live_chunks = _reachable(store)
        report.kept_refs = store.refs.names()
        objdir = store.gitdir / "objects"
        for sub in os.scandir(objdir):
            if len(sub.name) != 2 or not sub.is_dir():
                continue
            for f in os.scandir(sub.path):
                oid = sub.name + f.name
                if oid not in objects and _old(f.path, cutoff):
                    _remove(f.path, report)
                    report.objects_removed += 1
            with contextlib.suppress(OSError):
                os.rmdir(sub.path)
        _repack_objects(store, objects, cutoff, report)
        cs = store.chunks
        for cid in list(cs.loose_ids()):
            path = cs.loose_dir / cid[:2] / cid
            if cid not in live_chunks and _old(path, cutoff):
                _remove(str(path), report)
                report.chunks_removed += 1
        for pack in cs.pack_names():
            path = cs.packs_dir / f"{pack}.pack"
            if not _old(path, cutoff):
                continue
            entries = read_pack_index(path)
            dead = [e for e in entries if e[0] not in live_chunks]
            if not dead:
                continue
            # Copy the live chunks into a new pack first, then drop the old one: a crash in
            # between leaves duplicates (harmless), never a missing chunk.
            cs.forget_pack(pack)
            keep = [e for e in entries if e[0] in live_chunks]
            with open(path, "rb") as fh, cs.writer() as writer:
                for cid, offset, length in keep:
                    fh.seek(offset)
                    writer.add(cid, fh.read(length))
            _remove(str(path), report)
            report.chunks_removed += len(dead)
            report.packs_rewritten += 1
        # Repack loose chunks once there are many of them (sync writes them one by one).
        loose = [c for c in cs.loose_ids() if c in live_chunks]
        if loose and len(loose) >= repack_min:
            with cs.writer() as writer:
                for cid in loose:
                    path = cs.loose_dir / cid[:2] / cid
                    writer.add_packed(cid, path.read_bytes())
            for cid in loose:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(cs.loose_dir / cid[:2] / cid)
        for directory, names, files in os.walk(store.path):
            for name in files:
                if name.startswith(TMP_PREFIX) and _old(os.path.join(directory, name), cutoff):
                    _remove(os.path.join(directory, name), report)
                    report.temp_removed += 1
            for name in list(names):
                full = os.path.join(directory, name)
                if name.startswith(TMP_PREFIX) and _old(full, cutoff):
                    shutil.rmtree(full, ignore_errors=True)
                    report.temp_removed += 1
                    names.remove(name)
                elif name.startswith(STAGING_PREFIX) and directory == str(store.path):
                    if not journal_path(store).exists():
                        shutil.rmtree(full, ignore_errors=True)
                        report.temp_removed += 1
                    names.remove(name)
                elif name == STORE_DIR and directory != str(store.path):
                    names.remove(name)
    return report
