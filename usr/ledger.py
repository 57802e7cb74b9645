"""The sidecar digest ledger: which sidecar bytes usr (or an operator) has validated.

A sidecar (a file under ``_derived/`` or in the auxiliary section) counts as *verified*
only when its path and blake3 digest appear together in the ledger. Digests get there these
ways, never as a side effect of recording a state:

- a Python-API writer (``attach``, batch writers, annotation tools) validates what it wrote
  and calls :func:`record` right after writing;
- an operator vouches for files after checking them: ``usr plumbing verify-sidecars DS
  --record``, which calls :func:`record_digests` only when every other check passed;
- a merge that builds a file from two inputs both sides had vouched for (the union of two
  frozen registry copies) vouches for the result in the merged ledger (``via: merge``).

The ledger lives *inside* the dataset (``_registry/sidecar-ledger.jsonl``) so it travels
with pull and push: a part verified on the cluster stays verified on the laptop. It is an
append-only JSON-lines file, like ``.events.log``, and ``verify-sidecars`` refuses a state
whose ledger is not a line-prefix extension of its parent's, so a vouch can be added but
never silently rewritten. The ledger is a record of validation, not a signature: anyone who
can write the dataset can append to it, and each line names who did and how.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import blake3

from usr.actor import current_actor
from usr.errors import InputError
from usr.layout import check_relpath

LEDGER_PATH = "_registry/sidecar-ledger.jsonl"
LEDGER_VERSION = 1
#: How a digest got into the ledger. ``merge``: a file a merge built from two vouched
#: inputs (the union of two frozen registry copies, see usr.merge).
VIA = ("attach", "api", "vouch", "merge")
_BLOCK = 1 << 20


@dataclass(frozen=True)
class Entry:
    """One ledger line: ``path`` had exactly these bytes when ``actor`` validated it."""

    path: str
    blake3: str
    size: int
    via: str
    actor: str
    recorded_at: str

    def to_line(self) -> str:
        doc = {
            "ledger_version": LEDGER_VERSION,
            "path": self.path,
            "blake3": self.blake3,
            "size": self.size,
            "via": self.via,
            "actor": self.actor,
            "recorded_at": self.recorded_at,
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n"


class Ledger:
    """The parsed ledger of one state. Malformed lines vouch for nothing."""

    def __init__(self, entries: Iterable[Entry] = ()) -> None:
        self.entries: list[Entry] = list(entries)
        self._digests: dict[str, set[str]] = {}
        for e in self.entries:
            self._digests.setdefault(e.path, set()).add(e.blake3)

    def vouches(self, path: str, digest: str) -> bool:
        """True when ``path`` with exactly these bytes was validated."""
        return digest in self._digests.get(path, ())

    def digests_for(self, path: str) -> set[str]:
        return set(self._digests.get(path, ()))

    def __len__(self) -> int:
        return len(self.entries)


def is_ledger_path(relpath: str) -> bool:
    return relpath == LEDGER_PATH


def parse(data: bytes) -> Ledger:
    """Parse ledger bytes (a working file or a tree entry). An unterminated last line (a
    crash mid-append) and malformed lines are skipped: they vouch for nothing."""
    entries: list[Entry] = []
    for raw in data.split(b"\n")[:-1]:  # the last piece is "" or a torn line
        entry = _parse_line(raw)
        if entry is not None:
            entries.append(entry)
    return Ledger(entries)


def _parse_line(raw: bytes) -> Entry | None:
    try:
        doc = json.loads(raw)
        return Entry(
            path=str(doc["path"]),
            blake3=str(doc["blake3"]),
            size=int(doc["size"]),
            via=str(doc.get("via", "")),
            actor=str(doc.get("actor", "")),
            recorded_at=str(doc.get("recorded_at", "")),
        )
    except (ValueError, KeyError, TypeError):
        return None


def load(dataset_dir: Path) -> Ledger:
    """The ledger of the working dataset (empty when there is none yet)."""
    try:
        return parse((Path(dataset_dir) / LEDGER_PATH).read_bytes())
    except FileNotFoundError:
        return Ledger()


def file_digest(path: Path) -> tuple[str, int]:
    """Streaming blake3 hex digest and size of a file (bounded memory for any size)."""
    h = blake3.blake3()
    size = 0
    with open(path, "rb") as fh:
        while block := fh.read(_BLOCK):
            h.update(block)
            size += len(block)
    return h.hexdigest(), size


def record_digests(
    dataset_dir: Path,
    items: Iterable[tuple[str, str, int]],
    via: str = "api",
    actor: str | None = None,
) -> list[Entry]:
    """Append ``(relpath, blake3, size)`` vouches not already in the ledger; return them.

    The append holds an ``fcntl`` lock on the ledger file itself, writes whole lines with
    ``O_APPEND`` and fsyncs, so concurrent writers never interleave or lose lines.
    """
    if via not in VIA:
        raise ValueError(f"via must be one of {VIA}")
    wanted = []
    for relpath, digest, size in items:
        check_relpath(relpath)
        if is_ledger_path(relpath):
            continue
        wanted.append((relpath, digest, size))
    if not wanted:
        return []
    who = actor or current_actor().as_string()
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    path = Path(dataset_dir) / LEDGER_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            current = parse(_read_fd(fd))
            added: list[Entry] = []
            payload = b""
            if os.fstat(fd).st_size and not _ends_with_newline(fd):
                payload += b"\n"  # seal a torn line so it stays one malformed line
            for relpath, digest, size in wanted:
                if current.vouches(relpath, digest) or any(
                    e.path == relpath and e.blake3 == digest for e in added
                ):
                    continue
                entry = Entry(relpath, digest, int(size), via, who, now)
                added.append(entry)
                payload += entry.to_line().encode()
            if added:
                os.write(fd, payload)
                os.fsync(fd)
            return added
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def record(
    dataset_dir: Path,
    relpaths: Iterable[str],
    via: str = "api",
    actor: str | None = None,
) -> list[Entry]:
    """Vouch for the working files ``relpaths`` as they are now (call right after writing
    and validating them). Hashes each file and appends the digests not yet recorded."""
    dataset_dir = Path(dataset_dir)
    items = []
    for relpath in relpaths:
        check_relpath(relpath)
        target = dataset_dir / relpath
        if target.is_symlink() or not target.is_file():
            raise InputError(f"cannot record {relpath!r} in the sidecar ledger: not a file")
        digest, size = file_digest(target)
        items.append((relpath, digest, size))
    return record_digests(dataset_dir, items, via=via, actor=actor)


def _read_fd(fd: int) -> bytes:
    chunks = []
    offset = 0
    while block := os.pread(fd, _BLOCK, offset):
        chunks.append(block)
        offset += len(block)
    return b"".join(chunks)


def _ends_with_newline(fd: int) -> bool:
    size = os.fstat(fd).st_size
    with contextlib.suppress(OSError):
        return os.pread(fd, 1, size - 1) == b"\n"
    return True


def is_line_prefix(parent: bytes, child: bytes) -> bool:
    """True when ``child`` is ``parent`` plus appended whole lines (the append-only rule
    shared by the ledger and ``.events.log``)."""
    if not child.startswith(parent):
        return False
    return child == parent or not parent or parent.endswith(b"\n")


def vouching(book: Ledger, path: str, digest: str) -> list[Entry]:
    """The entries of ``book`` that vouch for ``path`` with exactly these bytes."""
    return [e for e in book.entries if e.path == path and e.blake3 == digest]
