"""The fingerprint memo: a row group's id-column fingerprint (:mod:`usr.idkeys`) by the
identity of the bytes it covers, so that a table sharing its leading chunks with one
checked before is fingerprinted without reading them again.

The id-keys cache finds its chain by the fingerprint of every row group's id column chunk,
which means reading that column's bytes (about 40% of a table of core ids) on every check,
even of a table grown by a 1% append whose first row groups are byte for byte the ones
checked last time. A store entry read through :class:`usr.store.entryfile.EntryFile` names
the content-defined chunks holding any byte range (blake3 ids), so a range's bytes are
known by those ids, its offset in the first one and its length, without reading them. The
memo keeps, per checked table, ``blake3(that identity and the fingerprint's other
inputs) -> fingerprint``; a later check looks each group up before reading it.

Where: ``<dataset>/.usr/idkeys/<32 hex>.idmemo``, written whole by atomic rename, the
:data:`KEEP` most recent kept. A file that fails its checksum is ignored: a lost or
damaged memo only costs the reading. The format is in docs/format.md ("The id-keys
cache"). May import blake3, :mod:`usr.atomic`.
"""

from __future__ import annotations

import contextlib
import struct
from pathlib import Path

import blake3

from usr.atomic import atomic_writer

SUFFIX = ".idmemo"
MAGIC = b"USRIDMEM"
VERSION = 1
#: magic, version, pairs, blake3 of the pairs.
HEADER = struct.Struct("<8sIQ32s")
#: One pair: the key (identity of a group's id-column bytes), the fingerprint.
PAIR = 64
#: Memo files kept (the most recently written).
KEEP = 3
KEY_TAG = b"usr-idmemo-key-v1\0"


def key(what: bytes, covering: list[tuple[int, str]], start: int, length: int) -> bytes:
    """The memo key of the ``length`` bytes at ``start`` held by ``covering`` (``(offset,
    chunk id)`` of the chunks from the one holding ``start``), with ``what`` (the rest of
    what the fingerprint hashes)."""
    h = blake3.blake3(KEY_TAG + what + b"\0")
    h.update(b"%d|%d\0" % (start - covering[0][0], length))
    for _, cid in covering:
        h.update(cid.encode() + b"\0")
    return h.digest()


def load(cache: Path) -> dict[bytes, bytes]:
    """Every pair of the valid memo files in ``cache`` (none if there are none)."""
    memo: dict[bytes, bytes] = {}
    try:
        paths = [p for p in cache.iterdir() if p.name.endswith(SUFFIX)]
    except OSError:
        return memo
    for path in paths:
        try:
            raw = path.read_bytes()
        except OSError:
            continue
        if len(raw) < HEADER.size:
            continue
        magic, version, count, digest = HEADER.unpack_from(raw)
        body = raw[HEADER.size :]
        if (magic, version) != (MAGIC, VERSION) or len(body) != count * PAIR:
            continue
        if blake3.blake3(body).digest() != digest:
            continue
        for i in range(0, len(body), PAIR):
            memo[body[i : i + 32]] = body[i + 32 : i + PAIR]
    return memo


def save(cache: Path, name: str, pairs: dict[bytes, bytes]) -> None:
    """Write the memo of one table (``name``: hex naming it), then keep the :data:`KEEP`
    most recent. Best effort: a memo that cannot be written only costs time."""
    body = b"".join(k + pairs[k] for k in sorted(pairs))
    head = HEADER.pack(MAGIC, VERSION, len(pairs), blake3.blake3(body).digest())
    path = cache / f"{name[:32]}{SUFFIX}"
    try:
        with atomic_writer(path) as fh:
            fh.write(head + body)
        files = sorted(
            (p for p in cache.iterdir() if p.name.endswith(SUFFIX) and p != path),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
        for old in files[KEEP - 1 :]:
            with contextlib.suppress(OSError):
                old.unlink()
    except OSError:
        pass
