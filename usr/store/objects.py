"""Tree entries for file contents: inline git blobs, or manifests of chunks for large files.

A file at most :func:`inline_limit` bytes long is stored as a plain git blob of its bytes.
A larger file is stored as a *manifest* blob: a small, deterministic text that names the
file's size, its whole-file blake3, and the ordered chunks (blake3 id and length) that the
chunk store holds. Same bytes -> same chunks -> same manifest -> same git id, so tree
comparisons stay exact without ever reading large files through zlib.

Byte format (ASCII, ``\\n`` line ends, no trailing spaces; see docs/format.md)::

    \\x00usr-manifest v1\\n
    size <decimal bytes>\\n
    blake3 <64 hex>\\n
    chunks <decimal count>\\n
    <64 hex> <decimal length>\\n      (one line per chunk, in file order)

A blob is a manifest exactly when it starts with :data:`MAGIC`. So that an ordinary small
file that happens to begin with those bytes still round-trips, such a file is always stored
chunked (as a manifest), whatever its size: no inline blob ever starts with the magic.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass

from usr.errors import VerifyError

#: Git's object type codes (pack entry headers, libgit2's odb): the store's one table.
OBJECT_TYPES = {"commit": 1, "tree": 2, "blob": 3, "tag": 4}
OBJECT_NAMES = {v: k for k, v in OBJECT_TYPES.items()}

MAGIC = b"\x00usr-manifest v1\n"

#: Default inline limit; larger files are chunked. 256 KiB, by measurement on this project's
#: machine (docs/format.md "Choosing the parameters"): libgit2 writes zlib blobs at ~25 MiB/s
#: whatever their size, the chunk path at ~150 MiB/s from 64 KiB up; below ~16 KiB the
#: per-file cost of a manifest plus a chunk wins. Up to 256 KiB text sidecars keep zlib's
#: compression; above it Parquet (already compressed) gains speed and chunk dedupe.
DEFAULT_INLINE_LIMIT = 256 << 10
INLINE_LIMIT_ENV = "USR_INLINE_LIMIT"

#: FastCDC parameters. pyfastcdc's effective average is avg_size + min_size (cut-point
#: skipping), so these give chunks of 16 KiB..256 KiB, ~64 KiB on average.
CHUNK_AVG = 48 * 1024
CHUNK_MIN = 16 * 1024
CHUNK_MAX = 256 * 1024

_LINE_RE = re.compile(rb"^([0-9a-f]{64}) (0|[1-9][0-9]*)$")
_HEX64_RE = re.compile(r"^[0-9a-f]{64}\Z")

#: A manifest may name at most this many chunks (a 64 GiB file at the minimum chunk size
#: would need 4 Mi); anything larger is refused before it is parsed, so a hostile peer
#: cannot make a reader allocate without bound.
MAX_MANIFEST_CHUNKS = 1 << 22


def inline_limit() -> int:
    """Bytes up to which a file is a plain blob. ``$USR_INLINE_LIMIT`` overrides it.

    The override exists so tests can exercise the chunked path with small files; every
    machine that exchanges a dataset must use the same value, or identical files would get
    different tree entries.
    """
    raw = os.environ.get(INLINE_LIMIT_ENV)
    if raw:
        return max(0, int(raw))
    return DEFAULT_INLINE_LIMIT


def is_chunk_id(text: str) -> bool:
    """True for a 64-hex-digit blake3 id."""
    return bool(_HEX64_RE.match(text))


@dataclass(frozen=True)
class Manifest:
    """A large file: its size, whole-file blake3, and ordered ``(chunk_id, length)`` pairs."""

    size: int
    blake3: str
    chunks: tuple[tuple[str, int], ...]

    def encode(self) -> bytes:
        """The canonical bytes of this manifest (the same manifest always encodes the same)."""
        lines = [
            MAGIC,
            b"size %d\n" % self.size,
            b"blake3 %s\n" % self.blake3.encode(),
            b"chunks %d\n" % len(self.chunks),
        ]
        lines.extend(b"%s %d\n" % (cid.encode(), length) for cid, length in self.chunks)
        return b"".join(lines)

    @classmethod
    def decode(cls, data: bytes, where: str = "manifest") -> Manifest:
        """Parse canonical manifest bytes; anything else raises :class:`VerifyError`."""
        if not data.startswith(MAGIC):
            raise VerifyError(f"{where}: not a manifest (bad magic)")
        lines = data[len(MAGIC) :].split(b"\n")
        try:
            if lines[-1] != b"":
                raise ValueError("no final newline")
            size_line, hash_line, count_line = lines[0], lines[1], lines[2]
            if not size_line.startswith(b"size "):
                raise ValueError("no size line")
            size = int(size_line[5:])
            if not hash_line.startswith(b"blake3 ") or not _HEX64_RE.match(hash_line[7:].decode()):
                raise ValueError("no blake3 line")
            if not count_line.startswith(b"chunks "):
                raise ValueError("no chunks line")
            count = int(count_line[7:])
            if count > MAX_MANIFEST_CHUNKS or len(lines) != count + 4:
                raise ValueError("chunk count does not match")
            chunks = []
            total = 0
            for raw in lines[3:-1]:
                m = _LINE_RE.match(raw)
                if not m:
                    raise ValueError(f"bad chunk line {raw[:80]!r}")
                length = int(m.group(2))
                chunks.append((m.group(1).decode(), length))
                total += length
            if total != size:
                raise ValueError(f"chunk lengths add to {total}, size says {size}")
            manifest = cls(size=size, blake3=hash_line[7:].decode(), chunks=tuple(chunks))
        except (ValueError, IndexError, UnicodeDecodeError) as exc:
            raise VerifyError(f"{where}: malformed manifest: {exc}") from None
        if manifest.encode() != data:
            raise VerifyError(f"{where}: manifest is not in canonical form")
        return manifest


def is_manifest_bytes(data: bytes) -> bool:
    """True if a blob's bytes are a manifest (they start with :data:`MAGIC`)."""
    return data.startswith(MAGIC)


def git_object_id(type_name: str, data: bytes) -> str:
    """The git id (sha1 of ``"<type> <len>\\0" + data``) of an object, computed by us.

    Used to verify objects on read and on receipt without trusting the object database.
    """
    h = hashlib.sha1(usedforsecurity=False)
    h.update(b"%s %d\x00" % (type_name.encode(), len(data)))
    h.update(data)
    return h.hexdigest()
