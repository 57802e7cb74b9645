"""References: named pointers to commits, moved only by compare-and-swap.

``refs/heads/main`` is the dataset's history; ``refs/remotes/<remote>/main`` the last state
seen on a remote. Refs are git loose refs (``<store>/refs/...`` holding ``<40 hex>\\n``) so
git tools can read the store, but usr writes them itself: under the refs lock
(``<store>/refs.lock``) it reads the current value, compares it with what the caller
expects, and replaces the file by an fsynced rename. A crash leaves the old ref or the new
one, and a writer that raced with another gets :class:`ConflictError` instead of silently
overwriting it.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

import pygit2

from usr.atomic import fsync_dir, write_bytes
from usr.errors import ConflictError, InputError
from usr.locks import hold

MAIN = "refs/heads/main"
_REF_RE = re.compile(r"^refs/(heads|remotes|tags|usr)(/[A-Za-z0-9][A-Za-z0-9_.-]*)+\Z")
_OID_RE = re.compile(r"^[0-9a-f]{40}\Z")


def check_ref_name(name: str) -> str:
    """Refuse ref names that could escape ``refs/`` or confuse git (``..``, ``.lock``, ...)."""
    if not _REF_RE.match(name) or ".." in name or name.endswith((".lock", ".")):
        raise InputError(f"bad ref name {name!r}", "use refs/heads/NAME or refs/remotes/R/NAME")
    return name


class Refs:
    """The refs of one store (``gitdir``), with compare-and-swap updates."""

    def __init__(self, gitdir: Path, repo: pygit2.Repository) -> None:
        self.gitdir = gitdir
        self.repo = repo

    def _path(self, name: str) -> Path:
        return self.gitdir / name

    def get(self, name: str) -> str | None:
        """The commit id ``name`` points at, or None if the ref does not exist."""
        check_ref_name(name)
        try:
            text = self._path(name).read_text().strip()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            ref = self.repo.references.get(name)  # packed-refs, if a git tool packed them
            return str(ref.target) if ref is not None else None
        if not _OID_RE.match(text):
            raise InputError(f"ref {name} is malformed: {text[:60]!r}")
        return text

    def names(self) -> list[str]:
        """All ref names, sorted (loose and packed)."""
        return sorted(n for n in self.repo.references if n.startswith("refs/"))

    def lock(self):
        """The refs lock: held only for the read-compare-rename of one update."""
        return hold(self.gitdir / "refs.lock", what="ref update", timeout=None)

    def update(self, name: str, new: str | None, old: str | None) -> None:
        """Move ``name`` from ``old`` to ``new`` atomically, or raise ConflictError.

        ``old=None`` means the ref must not exist yet; ``new=None`` deletes it.
        """
        check_ref_name(name)
        if new is not None and not _OID_RE.match(new):
            raise InputError(f"bad commit id {new!r}")
        with self.lock():
            current = self.get(name)
            if current != old:
                raise ConflictError(
                    f"ref {name} moved: expected {old or 'absent'}, found {current or 'absent'}",
                    "re-read the ref and retry",
                )
            if new is None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._path(name))
                    fsync_dir(self._path(name).parent)
                ref = self.repo.references.get(name)
                if ref is not None:
                    ref.delete()
                return
            write_bytes(self._path(name), (new + "\n").encode())
