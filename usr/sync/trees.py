"""Reading the two sides' trees for a sync: sizes, per-file comparison, summaries, and the
few files the sync reads by name (``records.parquet``, ``.events.log``).

Owns :class:`Sizes` (whole-file sizes of tree entries, from the store or a fetch's
listing), :func:`tree_diff` (the store's one comparison), :func:`summarize` (files per
section of one side) and the event-log reading used by the append-only rule. Reads the
store only; may import :mod:`usr.layout`, :mod:`usr.store` and
:mod:`usr.sync.changelist`, nothing else of the sync.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from usr.errors import InputError
from usr.layout import EVENTS_FILE, SECTIONS, check_relpath, section_of
from usr.store import FileChange
from usr.store.index import ROW
from usr.store.worktree import FILE_MODES, MODE_TREE
from usr.sync.changelist import ChangeList, collect


class CachedSizes:
    """Whole-file sizes by entry id from the stat cache's rows (a working file's size is
    its entry's), held as 28 bytes a row: the raw ids and sizes in path order, where a
    dict of them took ~137 bytes a file (a bootstrap sizes every file).

    Asked in path order (a diff's, a tree walk's), each answer is the next row; any other
    id is found by a binary search of the ids, sorted once (8 more bytes a row) on the
    first such miss. Only the cache's saved rows are read (a store's ``stat_cache()`` is
    a fresh load: it has no updates)."""

    def __init__(self, store: Any) -> None:
        import numpy as np

        raw = store.stat_cache().files.raw
        rows = np.frombuffer(raw, dtype=_ROW_SIZE_ID, count=len(raw) // ROW.size)
        self.ids = rows["id"].tobytes()
        self.sizes = array("Q", rows["size"].tobytes())
        self.at = 0
        self._order: Any = None

    def __len__(self) -> int:
        return len(self.sizes)

    def __iter__(self) -> Iterator[bytes]:
        ids = self.ids
        return (ids[i : i + 20] for i in range(0, len(ids), 20))

    def get(self, raw: bytes) -> int | None:
        """The size of the entry ``raw`` (20 bytes), or None if no row names it."""
        i = self.at
        if self.ids[20 * i : 20 * i + 20] != raw:
            found = self._find(raw)
            if found is None:
                return None
            i = found
        self.at = i + 1
        return self.sizes[i]

    def _find(self, raw: bytes) -> int | None:
        import numpy as np

        keys = np.frombuffer(self.ids, dtype="S20")
        if self._order is None:
            self._order = np.argsort(keys, kind="stable")
        j = int(np.searchsorted(keys, np.array(raw, dtype="S20"), sorter=self._order))
        if j == len(keys):
            return None
        i = int(self._order[j])
        return i if self.ids[20 * i : 20 * i + 20] == raw else None


#: A stat cache row (:data:`usr.store.index.ROW`) as numpy reads it: its size and raw id.
_ROW_SIZE_ID = {
    "names": ["size", "id"],
    "formats": ["<u8", "S20"],
    "offsets": [0, ROW.size - 20],
    "itemsize": ROW.size,
}


class Sizes:
    """Whole-file sizes of tree entries: from the store, else from what a fetch reported.

    Remote trees are fetched without file contents, so their blobs' sizes come from the
    server's listing; the comparison itself is still the store's one ``diff_trees``.
    """

    def __init__(self, store: Any) -> None:
        self.store = store
        #: Sizes by raw 20-byte blob id (53 bytes a key, where a hex str takes 89): what a
        #: fetch reported and the few read from the store.
        self.known: dict[bytes, int] = {}
        #: The stat cache's sizes, once more than :attr:`SEED_AFTER` were missed.
        self.cached: CachedSizes | None = None
        self.misses = 0

    def add(self, stats: Any) -> None:
        """Take the sizes a fetch reported (``TransferStats.sizes``, by raw id). The first
        are adopted, not copied: a bootstrap pull's are one per file."""
        sizes = getattr(stats, "sizes", None) or {}
        if not self.known and type(sizes) is dict:
            self.known = sizes
        else:
            self.known.update(sizes)

    def _seed(self) -> None:
        """Take the sizes the stat cache already has (a working file's size is the size of
        its entry): sizing from the store reads each object, ~40 us per file."""
        with suppress(OSError, AttributeError, ValueError):
            self.cached = CachedSizes(self.store)

    #: Sizes asked for and not known before the stat cache is loaded whole: a few are read
    #: from the store (~40 us each), so a one-file push or its comparison never holds a
    #: size for every file of the state.
    SEED_AFTER = 256

    def seeded(self) -> Mapping[str, int]:
        """The sizes for a push's blobs: what is known, and the stat cache's once more than
        :attr:`SEED_AFTER` were missed (a bootstrap push), not before."""
        return _SeedAfter(self)

    def few(self, oid: str) -> int | None:
        """The size of one of a few entries: from the store unless known, without loading
        the whole stat cache (sizing a side's named files must not cost the no-op that)."""
        raw = bytes.fromhex(oid)
        if self.lookup(raw) is None and self.store.has_object(oid):
            self.known[raw] = self.store.entry_size(oid)
        return self.lookup(raw)

    def lookup(self, raw: bytes) -> int | None:
        """The size of ``raw`` if it is known (reported, read, or in the loaded cache)."""
        got = self.known.get(raw)
        if got is None and self.cached is not None:
            got = self.cached.get(raw)
        return got

    def known_or_missed(self, raw: bytes) -> int | None:
        """:meth:`lookup`, counting a miss toward loading the stat cache (past
        :attr:`SEED_AFTER` of them) and looking again once it is loaded."""
        got = self.lookup(raw)
        return self.missed(raw) if got is None else got

    def missed(self, raw: bytes) -> int | None:
        """Count a size asked for and not known; past :attr:`SEED_AFTER` of them load the
        stat cache's and look again."""
        self.misses += 1
        if self.cached is None and self.misses > self.SEED_AFTER:
            self._seed()
            return self.lookup(raw)
        return None

    def __call__(self, oid: str) -> int | None:
        raw = bytes.fromhex(oid)
        got = self.known_or_missed(raw)
        if got is None and self.store.has_object(oid):
            # Remembered: sizing reads the object, and both sides' listings ask for the
            # same unchanged files.
            got = self.known[raw] = self.store.entry_size(oid)
        return got


class _SeedAfter(Mapping[str, int]):
    """:class:`Sizes` as the mapping a push plan reads with ``get``: a miss counts toward
    loading the stat cache (:meth:`Sizes.missed`) instead of loading it at once."""

    def __init__(self, sizes: Sizes) -> None:
        self.sizes = sizes

    def get(self, oid: str, default: Any = None) -> Any:
        raw = bytes.fromhex(oid)
        got = self.sizes.lookup(raw)  # a push plan asks once per object: kept short
        if got is None:
            got = self.sizes.missed(raw)
        return default if got is None else got

    def __getitem__(self, oid: str) -> int:
        got = self.get(oid)
        if got is None:
            raise KeyError(oid)
        return got

    def __iter__(self) -> Iterator[str]:
        cached = self.sizes.cached or ()
        return (raw.hex() for part in (self.sizes.known, cached) for raw in part)

    def __len__(self) -> int:
        return len(self.sizes.known) + len(self.sizes.cached or ())


def tree_diff(store: Any, a: str | None, b: str | None, sizes: Sizes | None = None) -> ChangeList:
    """The store's exact per-file comparison, tolerating blobs only listed, not fetched.

    Spooled (:mod:`usr.sync.changelist`): a bootstrap's names every file, and a list of
    ``FileChange`` objects was ~270 bytes a file held until the push is decided."""
    from usr.store.diff_tree import iter_diff

    size_of = sizes or Sizes(store)
    return collect(iter_diff(store.repo, store.tree_of(a), store.tree_of(b), size_of))


def listing(store: Any, tree: str | None, sizes: Sizes | None = None) -> Sequence[FileChange]:
    """Every file of ``tree`` as an addition (sized)."""
    return [] if tree is None else tree_diff(store, None, tree, sizes)


def _unsized(_oid: str) -> None:
    return None


def changed_paths(store: Any, a: str | None, b: str | None) -> set[str]:
    """Paths that differ between two states: the same comparison with nothing sized
    (sizing a stored file may read its whole object)."""
    if a == b:
        return set()
    from usr.store.diff_tree import iter_diff

    return {c.path for c in iter_diff(store.repo, store.tree_of(a), store.tree_of(b), _unsized)}


def blob_bytes(store: Any, blob_id: str) -> bytes:
    """The whole file behind a tree entry (inline blob, or manifest + chunks), verified."""
    return b"".join(store.open_entry(blob_id, where=blob_id))


def top_blob(store: Any, rev: str, name: str) -> str | None:
    """Blob id of the top-level file ``name`` in a state or tree, or None (found by path:
    listing, and sizing, every file just to find one cost seconds at 10,000 files)."""
    tree = store.repo[store.tree_of(rev)]
    try:
        entry = tree[name]
    except KeyError:
        return None
    return str(entry.id) if entry.type_str == "blob" else None


def events_blob(store: Any, rev: str) -> str | None:
    """Blob id of ``.events.log`` in a state or tree, found by path."""
    tree = store.repo[store.tree_of(rev)]
    try:
        return str(tree[EVENTS_FILE].id)
    except KeyError:
        return None


#: The sections whose one file the audit names (id and size): kept whole in a summary.
NAMED_SECTIONS = frozenset({"primary", "meta", "events"})


@dataclass
class Summary:
    """What the audit needs of one side's tree: files per section, and the listing entries
    of the single files it names. A full listing held (and sized) an entry per file:
    100,000 files cost ~40 MiB per side for the whole command."""

    counts: dict[str, int]
    named: list[FileChange]


def summarize(store: Any, tree: str | None, sizes: Sizes | None = None) -> Summary:
    """Count ``tree``'s files per section with one walk of its trees (no blob read), with
    the same refusals as a listing: a bad name or a mode other than file/directory."""
    counts = dict.fromkeys(SECTIONS, 0)
    named: list[FileChange] = []
    if tree is None:
        return Summary(counts, named)
    size_of = sizes or Sizes(store)
    repo = store.repo
    stack: list[tuple[str, str | None, Any]] = [("", None, repo[tree])]
    while stack:
        prefix, section, node = stack.pop()
        for entry in node:
            check_relpath(entry.name)
            mode = entry.filemode
            if mode == MODE_TREE:
                sub = section or section_of(f"{prefix}{entry.name}/")
                stack.append((f"{prefix}{entry.name}/", sub, repo[entry.id]))
                continue
            if mode not in FILE_MODES:
                rel = prefix + entry.name
                raise InputError(f"tree entry {rel!r} has mode {mode:o}; refused")
            here = section or section_of(entry.name)
            counts[here] += 1
            if section is None and here in NAMED_SECTIONS:
                oid = str(entry.id)
                size = size_of.few(oid)
                named.append(FileChange(entry.name, "A", here, None, oid, None, size))
    named.sort(key=lambda c: c.path)
    return Summary(counts, named)


def entry_at(files: list[FileChange], path: str) -> FileChange | None:
    """The entry of ``path`` in a short list (a summary's named files)."""
    for f in files:
        if f.path == path:
            return f
    return None


def event_lines(data: bytes) -> list[bytes]:
    return data.splitlines(keepends=True)


def events_of(store: Any, files: list[FileChange]) -> list[bytes] | None:
    """The ``.events.log`` lines among a summary's named files, or None when absent."""
    entry = entry_at(files, EVENTS_FILE)
    if entry is None or entry.new_id is None:
        return None
    return event_lines(blob_bytes(store, entry.new_id))


def events_relation(local: list[bytes] | None, remote: list[bytes] | None) -> str:
    """How two ``.events.log`` copies relate line by line (the append-only view)."""
    if local is None and remote is None:
        return "absent"
    local = local or []
    remote = remote or []
    if local == remote:
        return "equal"
    if remote[: len(local)] == local:
        return "remote-extends"
    if local[: len(remote)] == remote:
        return "local-extends"
    return "diverged"
