"""A state of a dataset as the sidecar checks see it: the working files, or a recorded
commit read from the store (:class:`StateView`, :class:`WorkingState`,
:class:`CommitState`, :func:`open_state`), and the :class:`Problem` a check reports.

The same checks run on working files and on a commit received from a peer, so they reach a
state only through this interface. Imports the ledger, the layout, the errors and the
store's stat cache (the store itself only when a commit is opened); :mod:`usr.sidecars`
builds on it and re-exports its names.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import blake3

from usr import ledger
from usr.errors import NotFoundError, VerifyError
from usr.layout import STORE_DIR, is_runtime_path
from usr.store.index import StatKey


@dataclass(frozen=True)
class Problem:
    """One failed check: ``path`` failed ``check``; ``expected`` vs ``found`` say how."""

    path: str
    check: str
    expected: str
    found: str

    def line(self) -> str:
        """The plumbing text form: tab-separated, one problem per line."""
        return "\t".join(one_line(v) for v in (self.path, self.check, self.expected, self.found))

    def to_json(self) -> dict[str, str]:
        return asdict(self)


def one_line(text: str) -> str:
    """``text`` on one line (whitespace runs as one space), ``-`` when empty."""
    return " ".join(str(text).split()) or "-"


class StateView(Protocol):
    """One state of a dataset as the checks see it (working files or a commit)."""

    label: str
    #: True when the checked state's working files are expected to equal it (HEAD/working).
    is_working: bool

    def paths(self) -> list[str]: ...
    def read(self, path: str) -> bytes | None: ...
    def stream(self, path: str) -> Iterator[bytes]: ...
    def digest(self, path: str) -> str: ...
    def problems_of(self, path: str) -> list[Problem]: ...
    def parents(self) -> list[StateView]: ...
    def local_path(self, path: str) -> Path | None: ...


class WorkingState:
    """The working files of a dataset; its parent is the recorded HEAD (if any)."""

    is_working = True

    def __init__(self, dataset_dir: Path) -> None:
        self.dataset_dir = Path(dataset_dir)
        self.label = "working"
        self._digests: dict[str, str] = {}

    def paths(self) -> list[str]:
        out: list[str] = []
        for dirpath, dirnames, filenames in os.walk(self.dataset_dir):
            rel_dir = Path(dirpath).relative_to(self.dataset_dir).as_posix()
            prefix = "" if rel_dir == "." else rel_dir + "/"
            keep = []
            for d in dirnames:
                rel = prefix + d
                if is_runtime_path(rel):
                    continue
                if os.path.islink(os.path.join(dirpath, d)):
                    out.append(rel)  # reported by problems_of, never followed
                    continue
                keep.append(d)
            dirnames[:] = keep
            out.extend(prefix + f for f in filenames if not is_runtime_path(prefix + f))
        return sorted(out)

    def local_path(self, path: str) -> Path | None:
        target = self.dataset_dir / path
        return target if target.is_file() and not target.is_symlink() else None

    def read(self, path: str) -> bytes | None:
        target = self.local_path(path)
        return target.read_bytes() if target is not None else None

    def stream(self, path: str) -> Iterator[bytes]:
        target = self.local_path(path)
        if target is None:
            raise OSError(f"{path}: {_kind(self.dataset_dir / path)}")
        with open(target, "rb") as fh:
            while block := fh.read(1 << 20):
                yield block

    def digest(self, path: str) -> str:
        if path not in self._digests:
            self._digests[path] = ledger.file_digest(self.dataset_dir / path)[0]
        return self._digests[path]

    def problems_of(self, path: str) -> list[Problem]:
        if self.local_path(path) is None:
            return [Problem(path, "file-type", "regular file", _kind(self.dataset_dir / path))]
        return []

    def parents(self) -> list[StateView]:
        store = _open_store(self.dataset_dir)
        head = store.head() if store is not None else None
        return [CommitState(store, head, self.dataset_dir, is_head=False)] if head else []


def _kind(path: Path) -> str:
    if path.is_symlink():
        return "symlink"
    if not path.exists():
        return "missing"
    return "directory" if path.is_dir() else "special file"


class CommitState:
    """A recorded state (commit) in the dataset's store. When it is HEAD, its sidecars are
    also compared with the working files (a push checks exactly what it will send)."""

    is_working = False

    def __init__(self, store: Any, commit: str, dataset_dir: Path, is_head: bool) -> None:
        self.store = store
        self.commit = str(commit)
        self.label = self.commit
        self.dataset_dir = Path(dataset_dir)
        self.is_head = is_head
        self._parents = [str(p) for p in store.repo[self.commit].parent_ids]
        self._entries = {rel: oid for rel, oid, _mode in store.ls_tree(self.commit)}
        self._digests: dict[str, str] = {}
        self._local: dict[str, Path | None] = {}

    def paths(self) -> list[str]:
        return sorted(self._entries)

    def read(self, path: str) -> bytes | None:
        """The entry's bytes (verified while read), or None when absent or corrupt (a
        corrupt entry is reported by its ``tree-hash`` check)."""
        oid = self._entries.get(path)
        if oid is None:
            return None
        try:
            return b"".join(self.store.open_entry(oid, path))
        except VerifyError:
            return None

    def stream(self, path: str) -> Iterator[bytes]:
        oid = self._entries.get(path)
        if oid is None:
            raise OSError(f"{path}: not in state {self.commit[:12]}")
        try:
            yield from self.store.open_entry(oid, path)
        except VerifyError as exc:
            raise OSError(exc.message) from None

    def digest(self, path: str) -> str:
        """blake3 of the entry's bytes: from the manifest, or of the inline blob."""
        if path not in self._digests:
            oid = self._entries[path]
            manifest = self.store.manifest_of(oid)
            if manifest is not None:
                self._digests[path] = manifest.blake3
            else:
                self._digests[path] = blake3.blake3(self.store.read_object(oid)[1]).hexdigest()
        return self._digests[path]

    def _tree_problem(self, path: str) -> Problem | None:
        """Re-hash every byte behind the entry (chunks and whole file) against its ids."""
        oid = self._entries[path]
        try:
            for _piece in self.store.open_entry(oid, path):
                pass
            self.digest(path)
        except (VerifyError, NotFoundError) as exc:
            return Problem(path, "tree-hash", f"entry {oid[:12]} intact", exc.message)
        return None

    def problems_of(self, path: str) -> list[Problem]:
        bad = self._tree_problem(path)
        if bad is not None:
            return [bad]
        if not self.is_head:
            return []
        target = self.dataset_dir / path
        if target.is_symlink() or not target.is_file():
            return [
                Problem(path, "working-hash", f"blake3 {self.digest(path)[:16]}", _kind(target))
            ]
        found = ledger.file_digest(target)[0]
        if found != self.digest(path):
            return [
                Problem(
                    path,
                    "working-hash",
                    f"blake3 {self.digest(path)[:16]}",
                    f"blake3 {found[:16]} (changed since recorded)",
                )
            ]
        self._local[path] = target
        return []

    def local_path(self, path: str) -> Path | None:
        """The working file, when it is known to hold exactly the entry's bytes: re-hashed
        by :meth:`problems_of`, or (``records.parquet``, never re-hashed here) unchanged
        since the store last hashed it, by its stat-cache entry."""
        if path in self._local or not self.is_head or path not in self._entries:
            return self._local.get(path)
        target = self.dataset_dir / path
        found = None
        try:
            st = os.lstat(target)
            if stat.S_ISREG(st.st_mode):
                cached = self.store.stat_cache().lookup(path, StatKey.of(st))
                found = target if cached == self._entries[path] else None
        except OSError:
            found = None
        self._local[path] = found
        return found

    def parents(self) -> list[StateView]:
        return [CommitState(self.store, p, self.dataset_dir, is_head=False) for p in self._parents]


def _open_store(dataset_dir: Path) -> Any | None:
    if not (Path(dataset_dir) / STORE_DIR).is_dir():
        return None
    from usr.store import Store

    return Store.open(Path(dataset_dir), create=False)


def open_state(dataset_dir: Path, commit: str | None = None) -> StateView:
    """The state to check: the working files, or ``commit`` (an id, ``HEAD``, a ref...)."""
    if commit is None:
        return WorkingState(dataset_dir)
    store = _open_store(dataset_dir)
    if store is None:
        raise NotFoundError(f"{dataset_dir} has no recorded states", "run: usr snapshot DS")
    resolved = store.resolve(commit)
    return CommitState(store, resolved, dataset_dir, is_head=resolved == store.head())
