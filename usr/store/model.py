"""Plain value types the store returns (kept apart so every store module can import them)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True, weakref_slot=True)
class FileChange:
    """One path that differs between two trees. ``status`` is ``A``, ``M`` or ``D``.

    Slotted: a bootstrap's comparison holds one per file (96 bytes, against 136 with an
    instance dict)."""

    path: str
    status: str
    section: str
    old_id: str | None
    new_id: str | None
    old_size: int | None
    new_size: int | None

    def as_dict(self) -> dict:
        return {
            "path": self.path,
            "status": self.status,
            "section": self.section,
            "old_id": self.old_id,
            "new_id": self.new_id,
            "old_size": self.old_size,
            "new_size": self.new_size,
        }


@dataclass(frozen=True)
class Recorded:
    """What :meth:`Store.record` did: ``commit`` is HEAD after; ``created`` if it moved."""

    commit: str | None
    created: bool


@dataclass(frozen=True)
class LogEntry:
    """One recorded state as ``usr log`` shows it."""

    id: str
    parents: tuple[str, ...]
    tree: str
    time: int  # seconds since the epoch, UTC
    offset: int  # author's UTC offset in minutes
    actor: str
    action: str
    message: str

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            "parents": list(self.parents),
            "tree": self.tree,
            "time": self.time,
            "offset": self.offset,
            "actor": self.actor,
            "action": self.action,
            "message": self.message,
        }


@dataclass
class ScanStats:
    """What the last :meth:`Store.working_tree` did: files seen and files actually read."""

    files: int = 0
    hashed: int = 0
    bytes_hashed: int = 0
    #: Files checked by the forked child (usr.store.treefork), not walked by this process.
    forked: int = 0


@dataclass(frozen=True)
class Problem:
    """One integrity problem found by fsck: what, which object or chunk, and which path."""

    kind: str
    id: str
    path: str | None
    message: str

    def as_dict(self) -> dict:
        return {"kind": self.kind, "id": self.id, "path": self.path, "message": self.message}


@dataclass
class GcReport:
    """What ``gc`` removed and kept."""

    objects_removed: int = 0
    chunks_removed: int = 0
    packs_rewritten: int = 0
    temp_removed: int = 0
    bytes_freed: int = 0
    kept_refs: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return dict(self.__dict__)
