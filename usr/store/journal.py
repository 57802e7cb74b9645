"""The checkout journal, ``.usr/CHECKOUT``: written as the checkout stages, read back as
it promotes, never held whole in memory.

The journal (docs/format.md §8) names the target commit, the staging dir and every
operation of a checkout: ``{"commit": ..., "staging": ..., "ops": [{"op": "delete",
"path": ...}, {"op": "put", "path": ..., "id": ...}, ...]}``, in the bytes
``json.dumps(journal, separators=(",", ":"))`` gives. A checkout of a million files used
to hold one operation a file until the promote; now :class:`JournalWriter` appends each
to a temporary file as it is decided, and only :meth:`JournalWriter.commit` (fsync,
rename over ``.usr/CHECKOUT``, fsync of the directory) makes it the journal, at the same
step as before: after every staged file is durable. A kill before that leaves a
temporary file (``usr gc`` removes it) and no journal, exactly as a kill before the
whole-document write did. :class:`Journal` reads the operations back a block at a time,
for the promote and for crash recovery alike.

May import :mod:`usr.atomic`.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from usr.atomic import TMP_PREFIX, fsync_dir

#: A journal operation in memory, one bytes each: ``D`` and the path, or ``P``, the raw
#: 20-byte entry id and the path (UTF-8, surrogateescape).
Op = bytes

_encode = json.JSONEncoder(separators=(",", ":")).encode
_quote = json.encoder.encode_basestring_ascii  # a str as json.dumps writes it (ASCII)
_READ = 1 << 16


def make_op(kind: str, path: str, oid: str | None) -> Op:
    raw = path.encode("utf-8", "surrogateescape")
    return b"D" + raw if kind == "delete" else b"P" + bytes.fromhex(str(oid)) + raw


def op_fields(op: Op) -> tuple[str, str, str | None]:
    """``("delete", path, None)`` or ``("put", path, entry id)`` of an operation."""
    if op[:1] == b"D":
        return "delete", op[1:].decode("utf-8", "surrogateescape"), None
    return "put", op[21:].decode("utf-8", "surrogateescape"), op[1:21].hex()


def op_json(op: Op) -> dict[str, str]:
    """An operation as the journal writes it (docs/format.md §8)."""
    kind, path, oid = op_fields(op)
    return {"op": kind, "path": path} if oid is None else {"op": kind, "path": path, "id": oid}


def _op_bytes(op: Op) -> bytes:
    """The bytes ``_encode(op_json(op))`` gives, put together directly (a checkout writes
    one a file: 0.9 µs against 2.7)."""
    if op[:1] == b"D":
        path = _quote(op[1:].decode("utf-8", "surrogateescape")).encode()
        return b'{"op":"delete","path":' + path + b"}"
    path = _quote(op[21:].decode("utf-8", "surrogateescape")).encode()
    return b'{"op":"put","path":' + path + b',"id":"' + op[1:21].hex().encode() + b'"}'


class JournalWriter:
    """The journal of one checkout, its operations appended as they are decided to a
    temporary file beside ``path``; :meth:`commit` makes it the journal."""

    def __init__(self, path: Path, commit: str, staging: str) -> None:
        self.path = path
        self.head = (commit, staging)
        self.count = 0
        self.deletes = 0
        fd, self._tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}journal-", dir=path.parent)
        self._fh = os.fdopen(fd, "wb")  # default buffer: on disk a few KiB behind
        head = _encode({"commit": commit, "staging": staging})[:-1]
        self._fh.write(f'{head},"ops":['.encode())

    def add(self, op: Op) -> None:
        self._fh.write((b"," if self.count else b"") + _op_bytes(op))
        self.count += 1
        self.deletes += op[:1] == b"D"

    def commit(self) -> Journal:
        """Finish, fsync and rename over the journal: from here the checkout is
        committed to (recovery rolls it forward). Returns it, to be read back."""
        try:
            self._fh.write(b"]}")
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            os.chmod(self._tmp, 0o644)
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()  # no journal: the checkout did not happen (staging is reused)
            raise
        fsync_dir(self.path.parent)
        return Journal(self.path, self.head, deletes=self.deletes > 0)

    def abort(self) -> None:
        """Drop the unfinished journal (the checkout was refused before its commit)."""
        self._fh.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)


class Journal:
    """A journal on disk: its commit and staging dir, and :meth:`ops` read from the file
    each time they are walked (a promote walks them twice: deletes, then puts; once when
    :attr:`deletes` says there are none). Any JSON
    layout of the document is read, as ``json.loads`` would."""

    def __init__(
        self, path: Path, head: tuple[str, str] | None = None, deletes: bool = True
    ) -> None:
        """Without ``head`` (commit, staging: the writer's own, known), read the whole
        file once: ValueError (json's errors) if it is not one whole journal, so a
        recovery never starts on one it cannot finish; TypeError or KeyError for a whole
        one that is no journal usr writes. ``deletes``: False only when the writer knows
        it wrote no delete (a bootstrap), so the promote skips its first walk of the
        operations; a journal read for recovery is walked for them."""
        self.path = path
        self.deletes = deletes
        if head is None:
            found: dict[str, Any] = {}
            for _ in self._walk(found.__setitem__):
                pass
            head = found["commit"], found["staging"]
        self.commit, self.staging = head
        if not isinstance(self.commit, str) or not isinstance(self.staging, str):
            raise TypeError("checkout journal: commit and staging must be strings")

    def ops(self) -> Iterator[Op]:
        """The operations in their order, decoded a block at a time."""
        return self._walk(lambda _key, _value: None)

    def _walk(self, other: Callable[[str, Any], None]) -> Iterator[Op]:
        """The document's members in order: ``ops`` item by item, the others to ``other``."""
        with open(self.path, encoding="utf-8") as fh:
            r = _Reader(fh)
            r.expect("{")
            more = not r.take("}")
            while more:
                key = r.value()
                if not isinstance(key, str):
                    raise ValueError("checkout journal: a key that is no string")
                r.expect(":")
                if key == "ops":
                    r.expect("[")
                    items = not r.take("]")
                    while items:
                        yield _op_of(r.value())
                        items = not r.take("]")
                        if items:
                            r.expect(",")
                else:
                    other(key, r.value())
                more = not r.take("}")
                if more:
                    r.expect(",")
            r.end()


class _Reader:
    """JSON tokens read from a text file a block at a time, by position (no copy of the
    rest of the buffer per value)."""

    def __init__(self, fh: Any) -> None:
        self.fh = fh
        self.buf = ""
        self.pos = 0
        self.decoder = json.JSONDecoder()

    def _fill(self) -> bool:
        more = self.fh.read(_READ)
        if not more:
            return False
        self.buf = self.buf[self.pos :] + more
        self.pos = 0
        return True

    def _next(self) -> str:
        """The next character that is not whitespace (not consumed)."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in " \t\n\r":
                self.pos += 1
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._fill():
                raise ValueError("checkout journal: cut off")

    def take(self, char: str) -> bool:
        """Consume ``char`` if it comes next."""
        if self._next() != char:
            return False
        self.pos += 1
        return True

    def expect(self, char: str) -> None:
        if not self.take(char):
            raise ValueError(f"checkout journal: expected {char!r}")

    def value(self) -> Any:
        self._next()
        while True:
            try:
                value, self.pos = self.decoder.raw_decode(self.buf, self.pos)
                return value
            except json.JSONDecodeError:
                if not self._fill():
                    raise

    def end(self) -> None:
        """Nothing but whitespace may follow the document."""
        if (self.buf[self.pos :] + self.fh.read()).strip():
            raise ValueError("checkout journal: trailing bytes after the document")


def _op_of(item: Any) -> Op:
    if not isinstance(item, dict) or item.get("op") not in ("put", "delete"):
        raise TypeError(f"checkout journal: bad operation {item!r}")
    path, oid = item.get("path"), item.get("id")
    if not isinstance(path, str) or (item["op"] == "put") != isinstance(oid, str):
        raise TypeError(f"checkout journal: bad path or id in {item!r}")
    return make_op(item["op"], path, oid)
