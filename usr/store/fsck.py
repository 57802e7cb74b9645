"""fsck: prove the store is sound — every reachable object and chunk re-hashed, every tree
path legal, and ``.events.log`` only ever grown by appended lines along history.

Cost is bounded by what is stored, not by history length: each object and each chunk is
read and hashed once, however many states share it. The whole-file blake3 of a manifest is
checked for the states that refs point at (re-checking it for every historical state would
re-read every version of a large file); older manifests are checked chunk by chunk, which
is what makes their bytes right.

States reachable only from remote-tracking refs (``refs/remotes/*``) may lack file contents:
``diff``, ``status`` and a pull cut off midway fetch the remote's commits and trees first and
its blobs later (like ``git fetch`` of a partial clone). There a *missing* blob is expected;
a present one is still verified, and a missing commit or tree is still a problem.
"""

from __future__ import annotations

from collections.abc import Iterator

import pygit2

from usr.errors import InputError, UsrError, VerifyError
from usr.layout import EVENTS_FILE, check_relpath
from usr.store import gitpack
from usr.store.model import Problem
from usr.store.objects import MAGIC, Manifest
from usr.store.worktree import FILE_MODES, MODE_TREE

_READ = 1 << 20


def _entry_id(store, tree_id: str, relpath: str) -> str | None:
    tree = store.repo[tree_id]
    try:
        return str(tree[relpath].id)
    except KeyError:
        return None


def _pieces(store, blob_id: str, where: str) -> Iterator[bytes]:
    yield from store.open_entry(blob_id, where)


def _is_prefix(store, old_id: str, new_id: str) -> bool:
    """True if the content of ``old_id`` is a prefix of the content of ``new_id``."""
    new_iter = _pieces(store, new_id, EVENTS_FILE)
    buf = b""
    for piece in _pieces(store, old_id, EVENTS_FILE):
        view = memoryview(piece)
        while view:
            if not buf:
                buf = next(new_iter, b"")
                if not buf:
                    return False
            n = min(len(buf), len(view))
            if buf[:n] != view[:n]:
                return False
            buf, view = buf[n:], view[n:]
    return True


def _ends_with_newline(store, blob_id: str) -> bool:
    last = b""
    for piece in _pieces(store, blob_id, EVENTS_FILE):
        if piece:
            last = piece[-1:]
    return last in (b"", b"\n")


#: Trailer of a merge state's message naming its remote-side parent (see usr.merge).
MERGE_REMOTE_TRAILER = "Merge-remote-parent"


def events_parent(store, commit: str) -> str | None:
    """The parent whose ``.events.log`` ``commit``'s must extend: the only parent, or for a
    merge the remote-side one (named by its ``Merge-remote-parent:`` trailer, else its last
    parent). A merge appends the local-only lines after the remote's log, so it is exempt
    from the rule towards its local parent only."""
    c = store.repo[commit]
    parents = [str(p) for p in c.parent_ids]
    if len(parents) < 2:
        return parents[0] if parents else None
    for line in c.message.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == MERGE_REMOTE_TRAILER and value.strip() in parents:
            return value.strip()
    return parents[-1]


def check_events_append_only(store, commit: str) -> str | None:
    """None if ``commit``'s ``.events.log`` is a line-prefix extension of its parent's
    (for a merge: its remote-side parent's, see :func:`events_parent`), else a message
    saying how it is not.

    Line-prefix: the parent's log is a prefix of the child's, and ends at a line boundary
    (empty or ending in ``\\n``), so consumers that tail the shared copy only ever see
    whole lines appended.
    """
    c = store.repo[commit]
    which = events_parent(store, commit)
    if which is None:
        return None
    parent = store.repo[which]
    old = _entry_id(store, str(parent.tree_id), EVENTS_FILE)
    new = _entry_id(store, str(c.tree_id), EVENTS_FILE)
    if old is None or old == new:
        return None
    if new is None:
        return f"{EVENTS_FILE} was removed (parent {str(parent.id)[:12]} had one)"
    if not _ends_with_newline(store, old):
        return f"parent {str(parent.id)[:12]} {EVENTS_FILE} ends mid-line"
    if not _is_prefix(store, old, new):
        return f"{EVENTS_FILE} is not an append-only extension of parent {str(parent.id)[:12]}"
    return None


class _Checker:
    def __init__(self, store) -> None:
        self.store = store
        self.problems: list[Problem] = []
        self.seen: set[str] = set()
        self.chunks_ok: set[str] = set()
        self.objects = 0
        self.chunks = 0
        #: Checking states only remote-tracking refs reach: absent blobs are not problems.
        self.partial = False

    def problem(self, kind: str, oid: str, path: str | None, message: str) -> None:
        self.problems.append(Problem(kind, oid, path, message))

    def read(self, oid: str, want: str, path: str | None) -> bytes | None:
        try:
            kind, data = self.store.read_object(oid)
        except UsrError as exc:
            self.problem("object", oid, path, exc.message)
            return None
        self.objects += 1
        if kind != want:
            self.problem("object", oid, path, f"object {oid} is a {kind}, expected a {want}")
            return None
        return data

    def tree(self, tree_id: str, prefix: str, tip: bool) -> None:
        if tree_id in self.seen:
            return
        self.seen.add(tree_id)
        if self.read(tree_id, "tree", prefix or "/") is None:
            return
        for entry in self.store.repo[tree_id]:
            rel = f"{prefix}{entry.name}"
            oid = str(entry.id)
            try:
                check_relpath(rel)
            except InputError as exc:
                self.problem("tree", tree_id, rel, exc.message)
                continue
            if entry.filemode == MODE_TREE:
                self.tree(oid, rel + "/", tip)
            elif entry.filemode in FILE_MODES:
                self.blob(oid, rel, tip)
            else:
                self.problem("tree", tree_id, rel, f"mode {entry.filemode:o} is not allowed")

    def blob(self, oid: str, path: str, tip: bool) -> None:
        key = f"{oid}:tip" if tip else oid
        if key in self.seen:
            return
        first = oid not in self.seen
        if first and self.partial and not self.store.has_object(oid):
            return  # not fetched yet (see the module docstring)
        self.seen.update((oid, key))
        if first:
            data = self.read(oid, "blob", path)
        else:
            try:
                data = self.store.read_object(oid)[1]
            except UsrError:
                return  # already reported when first seen
        if data is None or not data.startswith(MAGIC):
            return
        try:
            manifest = Manifest.decode(data, where=f"{path} (manifest {oid})")
        except VerifyError as exc:
            self.problem("manifest", oid, path, exc.message)
            return
        for cid, length in manifest.chunks:
            if cid in self.chunks_ok:
                continue
            try:
                piece = self.store.chunks.get(cid)
            except VerifyError as exc:
                self.problem(
                    "chunk", cid, path, f"{exc.message} ({self.store.chunks.location(cid)})"
                )
                continue
            if len(piece) != length:
                self.problem("chunk", cid, path, f"chunk {cid} length {len(piece)} != {length}")
                continue
            self.chunks_ok.add(cid)
            self.chunks += 1
        if tip:
            try:
                for _ in self.store.open_entry(oid, path):
                    pass
            except VerifyError as exc:
                self.problem("manifest", oid, path, exc.message)


def _events_fetched(store, commit: str) -> bool:
    """True if the ``.events.log`` of ``commit`` and of its events parent are stored."""
    c = store.repo[commit]
    which = events_parent(store, commit)
    for tree in [str(c.tree_id)] + ([str(store.repo[which].tree_id)] if which else []):
        blob = _entry_id(store, tree, EVENTS_FILE)
        if blob is not None and not store.has_object(blob):
            return False
    return True


def fsck(store) -> list[Problem]:
    """Every problem in the store; empty when it is sound. See the module docstring."""
    check = _Checker(store)
    tips: set[str] = set()
    remote_only: set[str] = set()
    full: set[str] = set()
    for name in store.refs.names():
        try:
            target = store.refs.get(name)
        except InputError as exc:
            check.problem("ref", name, None, exc.message)
            continue
        if target is None:
            continue
        if store.repo.get(target) is None:
            check.problem("ref", target, None, f"{name} points at missing commit {target}")
            continue
        tips.add(target)
        (remote_only if name.startswith("refs/remotes/") else full).add(target)
    remote_only -= full
    done: set[str] = set()
    # Fully-held states first, so a state both kinds of ref reach is checked in full.
    for tip in sorted(tips, key=lambda t: (t in remote_only, t)):
        check.partial = tip in remote_only
        for c in store.repo.walk(pygit2.Oid(hex=tip), pygit2.enums.SortMode.TOPOLOGICAL):
            cid = str(c.id)
            if cid in done:
                continue
            done.add(cid)
            if check.read(cid, "commit", None) is None:
                continue
            check.tree(str(c.tree_id), "", tip=cid in tips)
            if check.partial and not _events_fetched(store, cid):
                continue
            try:
                why = check_events_append_only(store, cid)
            except UsrError as exc:
                why = f"could not compare {EVENTS_FILE}: {exc.message}"
            if why:
                check.problem("events", cid, EVENTS_FILE, why)
    for pack in store.chunks.pack_names():
        try:
            from usr.store.chunks import read_pack_index

            read_pack_index(store.chunks.packs_dir / f"{pack}.pack")
        except (VerifyError, OSError) as exc:
            check.problem("pack", pack, None, str(exc))
    pack_dir = store.gitdir / "objects" / "pack"
    for pack in gitpack.pack_names(pack_dir):
        _count, problems = gitpack.verify_pack(pack_dir / f"{pack}.idx")
        for message in problems:
            check.problem("pack", pack, None, message)
    store.fsck_counts = {"objects": check.objects, "chunks": check.chunks, "commits": len(done)}
    return check.problems
