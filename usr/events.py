"""The dataset event log (``.events.log``): one JSON object per line, append-only.

Consumers tail this file and sync refuses any state whose log is not a line-prefix extension
of its parent's, so lines are only ever appended: one ``write`` of a whole line, under the
``fcntl`` events lock, fsynced. Arguments that look like secrets are redacted before they
reach the file, because the log is synced to every machine that holds the dataset.

Imports the layout, the locks, the actor and the errors; :func:`redact_text` lives in
:mod:`usr.errors` (every error message passes through it) and is re-exported here.
"""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from usr.errors import REDACTED, VerifyError, redact_text
from usr.layout import EVENTS_FILE
from usr.locks import events_lock

EVENT_VERSION = 1
_SECRET_KEY = re.compile(
    r"(pass(word|wd|phrase)?|secret|token|credential|api[_-]?key|access[_-]?key|"
    r"private[_-]?key|ssh[_-]?key|auth)",
    re.IGNORECASE,
)


def default_actor() -> str:
    """``usr/<version> <user>@<host>``: who wrote a line or a state (see usr.actor)."""
    from usr.actor import current_actor

    return current_actor().as_string()


def redact(value: Any, key: str = "") -> Any:
    """Copy of ``value`` with secret-looking keys and URL passwords replaced by ``***``."""
    if key and _SECRET_KEY.search(key) and value not in (None, "", False):
        return REDACTED
    if isinstance(value, dict):
        return {str(k): redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Path):
        return str(value)
    return value


def make_event(
    action: str, dataset: str, args: dict[str, Any] | None = None, actor: str | None = None
) -> dict[str, Any]:
    return {
        "event_version": EVENT_VERSION,
        "timestamp_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "action": action,
        "dataset": dataset,
        "args": redact(dict(args or {})),
        "actor": actor or default_actor(),
    }


def append_event(
    dataset_dir: Path,
    action: str,
    dataset: str,
    args: dict[str, Any] | None = None,
    actor: str | None = None,
) -> dict[str, Any]:
    """Append one event line to ``<dataset_dir>/.events.log``; returns the event written."""
    event = make_event(action, dataset, args, actor)
    line = (json.dumps(event, sort_keys=True, default=str) + "\n").encode("utf-8")
    path = dataset_dir / EVENTS_FILE
    with events_lock(dataset_dir):
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            # A torn last line (a writer killed mid-write) must not glue onto ours.
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
    return event


def read_events(dataset_dir: Path) -> list[dict[str, Any]]:
    """Every event, oldest first; a line that is not a JSON object is a VerifyError."""
    path = dataset_dir / EVENTS_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    return _parse(path, data.splitlines(keepends=True), first_line=1)


def tail(dataset_dir: Path, n: int) -> list[dict[str, Any]]:
    """The last ``n`` events, oldest first, reading only the end of the file."""
    path = dataset_dir / EVENTS_FILE
    if n <= 0:
        return []
    try:
        fh = path.open("rb")
    except FileNotFoundError:
        return []
    with fh:
        end = fh.seek(0, os.SEEK_END)
        pos, buf = end, b""
        # Read backwards in blocks until n complete lines (plus the one before) are in.
        while pos > 0 and buf.count(b"\n") <= n + 1:
            step = min(_BLOCK, pos)
            pos -= step
            fh.seek(pos)
            buf = fh.read(step) + buf
    lines = buf.splitlines(keepends=True)
    if pos > 0:
        lines = lines[1:]  # the first line may be cut by the block boundary
    if lines and not lines[-1].endswith(b"\n"):
        lines = lines[:-1]
    return _parse(path, [ln for ln in lines if ln.strip()][-n:], first_line=None)


_BLOCK = 64 * 1024


def _parse(path: Path, lines: list[bytes], first_line: int | None) -> list[dict[str, Any]]:
    """Parse event lines. A last line without its newline is a write still in progress
    (or torn by a crash): skipped, not an error, since the next append repairs it."""
    if lines and not lines[-1].endswith(b"\n"):
        lines = lines[:-1]
    out = []
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        where = f"line {first_line + i}" if first_line is not None else "a recent line"
        try:
            event = json.loads(raw)
        except ValueError as exc:
            raise VerifyError(f"{path}: {where} is not JSON", "the log is damaged") from exc
        if not isinstance(event, dict):
            raise VerifyError(f"{path}: {where} is not a JSON object", "the log is damaged")
        out.append(event)
    return out
