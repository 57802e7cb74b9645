"""The wire format between ``usr`` and ``usr plumbing serve``: versioned, length-prefixed frames.

Both ends speak over a pair of byte streams (a subprocess's stdin/stdout, an SSH exec
channel, or the connection holder's unix socket). The server opens with an 8-byte magic so a
client can tell "this is usr" from a login banner, a missing command or a shell error, and
every frame thereafter is::

    kind: 1 byte | length: 4 bytes big-endian | payload: length bytes

``length`` never exceeds :data:`MAX_FRAME`; a peer that announces more, stops mid-frame or
sends a kind we do not know is refused with a one-line :class:`TransportError`. Kinds:

``J``  a JSON object (UTF-8) with key ``"t"`` naming the message (see docs/protocol.md)
``O``  one git object: ``type code (1) | oid (20 raw bytes) | object bytes``
``K``  one chunk: ``blake3 id (32 raw bytes) | chunk bytes``

Objects and chunks are raw frames rather than JSON so that bulk data costs no encoding and
the receiver can verify each one against its id the moment it lands.
"""

from __future__ import annotations

import json
import os
import select
import struct
from collections.abc import Iterator
from typing import Any, BinaryIO, Protocol

from usr.errors import (
    AuthError,
    ConflictError,
    InputError,
    LockTimeout,
    NotFoundError,
    TransportError,
    UsageError,
    UsrError,
    VerifyError,
)
from usr.sync.peercheck import peer_text

#: Bumped on any incompatible change; hello refuses a peer with a different major.
PROTOCOL_VERSION = 1
MAGIC = b"USRP\x00\x01\r\n"
HEADER = struct.Struct(">cI")
#: Capability offered in ``hello`` (and answered by a server that has it): a pushed stream
#: sends each chunked file's manifest before its chunks, so the receiver can write the
#: working file while the chunks arrive (docs/protocol.md, "Manifests first").
MANIFEST_FIRST = "manifest_first"
#: ``USR_MANIFEST_FIRST=0`` turns it off on this side (A/B runs, a peer to be treated as old).
MANIFEST_FIRST_ENV = "USR_MANIFEST_FIRST"


def manifest_first_enabled() -> bool:
    """True unless ``$USR_MANIFEST_FIRST`` is ``0`` (or ``false``/``no``/``off``)."""
    raw = os.environ.get(MANIFEST_FIRST_ENV, "").strip().lower()
    return raw not in ("0", "false", "no", "off")


#: Largest frame either side accepts (a manifest of a multi-GiB file fits with room).
MAX_FRAME = 64 * 1024 * 1024

#: Most object ids, and most chunk ids, one ``have`` or ``get`` request may name (each list
#: of its own): a push negotiates and a fetch asks in batches of at most this many, so
#: neither side holds a JSON list of every id at once (200,000 files: ~19 MB of id strings
#: and ~9 MB of JSON text on each side, per list), and a request of a million ids stays far
#: below MAX_FRAME. A request naming more is refused.
MAX_IDS = 65536

#: Environment variable lowering the batch a client sends (tests: many batches from a few
#: files); a server still accepts up to MAX_IDS.
MAX_IDS_ENV = "USR_MAX_IDS"


def batch_size() -> int:
    """Ids per ``have``/``get`` request this side sends: MAX_IDS, or fewer by
    ``$USR_MAX_IDS``."""
    raw = os.environ.get(MAX_IDS_ENV, "").strip()
    try:
        return max(1, min(MAX_IDS, int(raw))) if raw else MAX_IDS
    except ValueError:
        return MAX_IDS


#: Bytes asked of the channel per read. More than asyncssh's channel window (2 MiB) on
#: purpose: asyncssh grants the peer a whole new window each time it resumes delivering
#: after a pause, so a reader that takes less than a window per read lets a fast sender run
#: ahead and asyncssh buffers the difference without bound (measured: 994 MiB peak RSS
#: pulling 1 GiB). Taking all that is buffered per read keeps it near one window.
READ_SIZE = 4 * 1024 * 1024

JSON = b"J"
OBJECT = b"O"
CHUNK = b"K"
KINDS = frozenset({JSON, OBJECT, CHUNK})

#: Git object type names and their one-byte codes on the wire (pygit2/git numbering).
OBJECT_TYPES = {"commit": 1, "tree": 2, "blob": 3, "tag": 4}
OBJECT_NAMES = {v: k for k, v in OBJECT_TYPES.items()}
OID_LEN = 20
CID_LEN = 32

#: Error kinds carried in ``{"t": "error"}`` frames, mapped back to our error classes.
ERROR_CLASSES: dict[str, type[UsrError]] = {
    cls.kind: cls
    for cls in (
        UsrError,
        UsageError,
        InputError,
        NotFoundError,
        VerifyError,
        TransportError,
        AuthError,
        ConflictError,
        LockTimeout,
    )
}


class ByteChannel(Protocol):
    """What a frame reader/writer needs from a transport: blocking reads and writes."""

    def read(self, n: int) -> bytes:  # up to n bytes; b"" at EOF
        ...

    def write(self, data: bytes) -> None: ...

    def flush(self) -> None: ...


#: Pipe buffer asked for on a :class:`FileChannel`'s pipes (Linux default: 64 KiB). With
#: 64 KiB, streaming 256 MiB to a local serve or through sshd woke each side ~4,000 times
#: (measured: ~6,000 voluntary context switches on the client); 1 MiB cuts that to ~1,400.
PIPE_SIZE = 1024 * 1024


def widen_pipe(fileobj: Any) -> None:
    """Grow the kernel buffer of a pipe to :data:`PIPE_SIZE` where allowed (else no-op)."""
    try:
        import fcntl

        fcntl.fcntl(fileobj.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_SIZE)
    except (AttributeError, OSError, ValueError, ImportError):
        pass  # not a pipe, not Linux, or over /proc/sys/fs/pipe-max-size: keep the default


class FileChannel:
    """A :class:`ByteChannel` over two binary file objects (pipes, stdin/stdout).

    With ``idle_timeout`` (seconds), a read that gets no byte for that long is a
    TransportError instead of a hang: a peer that stops sending without closing (wedged,
    suspended, a hostile server) must not stall the client forever. It needs an unbuffered
    ``rfile`` (its fd is polled; a buffered reader could hold bytes the poll cannot see).
    """

    def __init__(self, rfile: BinaryIO, wfile: BinaryIO, idle_timeout: float | None = None) -> None:
        self.rfile = rfile
        self.wfile = wfile
        self.idle_timeout = idle_timeout
        widen_pipe(rfile)
        widen_pipe(wfile)

    def read(self, n: int) -> bytes:
        if self.idle_timeout is not None:
            ready, _, _ = select.select([self.rfile], [], [], self.idle_timeout)
            if not ready:
                raise TransportError(
                    f"remote sent nothing for {self.idle_timeout:g}s",
                    "check the remote; raise idle_timeout in the profile if it is just slow",
                )
        reader = getattr(self.rfile, "read1", None) or self.rfile.read
        return reader(n)

    def write(self, data: bytes) -> None:
        """All of ``data``: a raw (unbuffered) file's ``write`` may take only part of it (a
        pipe write interrupted by a signal or a ptrace stop, a non-blocking pipe that is
        full) and says how much; the rest is written again, never dropped, or the frame
        stream would lose bytes mid-frame."""
        view = memoryview(data)
        while view:
            view = view[self.wfile.write(view) or 0 :]

    def flush(self) -> None:
        self.wfile.flush()


class FrameIO:
    """Reads and writes frames on a channel, with buffering and strict validation.

    ``peer`` names the other end in error messages ("remote bu-scc", "client").
    """

    def __init__(self, channel: ByteChannel, peer: str = "peer") -> None:
        self.channel = channel
        self.peer = peer
        self._buf = bytearray()
        self._out: list[bytes] = []
        self._out_size = 0
        self.bytes_in = 0
        self.bytes_out = 0

    # -- reading -------------------------------------------------------------------------
    def _fill(self, n: int, what: str) -> bytes:
        while len(self._buf) < n:
            piece = self.channel.read(max(n - len(self._buf), READ_SIZE))
            if not piece:
                got = len(self._buf)
                raise TransportError(
                    f"connection to {self.peer} closed mid-{what} (got {got} of {n} bytes)",
                    "the peer died or the connection dropped; rerun to resume",
                )
            self._buf += piece
        data = bytes(self._buf[:n])
        del self._buf[:n]
        self.bytes_in += n
        return data

    def read_magic(self) -> None:
        """Consume the server's opening magic, or say clearly what came instead."""
        got = bytearray()
        while len(got) < len(MAGIC):
            piece = self.channel.read(len(MAGIC) - len(got))
            if not piece:
                break
            got += piece
        if bytes(got) != MAGIC:
            shown = bytes(got)[:40].decode("utf-8", "replace") or "nothing"
            raise TransportError(
                f"{self.peer} did not start the usr protocol (got {shown!r})",
                "check that remote_usr runs usr on the remote and that the login shell "
                "prints nothing on stdout",
            )
        self.bytes_in += len(MAGIC)

    def read_frame(self, eof_ok: bool = False) -> tuple[bytes, bytes] | None:
        """One ``(kind, payload)``; refuses unknown kinds, oversized and truncated frames.

        With ``eof_ok`` a close exactly between frames returns None (a server's normal end).
        """
        if eof_ok and not self._buf:
            piece = self.channel.read(READ_SIZE)
            if not piece:
                return None
            self._buf += piece
        kind, length = HEADER.unpack(self._fill(HEADER.size, "frame header"))
        if kind not in KINDS:
            raise TransportError(f"bad frame from {self.peer}: unknown kind {kind!r}")
        if length > MAX_FRAME:
            raise TransportError(
                f"bad frame from {self.peer}: {length} bytes exceeds the {MAX_FRAME} limit"
            )
        return kind, self._fill(length, "frame")

    def read_message(self, expect: str | None = None) -> dict[str, Any]:
        """The next JSON message; an ``error`` message is raised as its error class."""
        kind, payload = self.read_frame()
        if kind != JSON:
            raise TransportError(f"bad frame from {self.peer}: expected a message, got {kind!r}")
        msg = decode_json(payload, self.peer)
        if msg["t"] == "error":
            raise error_from_message(msg, self.peer)
        if expect is not None and msg["t"] != expect:
            raise TransportError(
                f"protocol error from {self.peer}: expected {expect!r}, got {msg['t']!r}"
            )
        return msg

    # -- writing -------------------------------------------------------------------------
    def _queue(self, kind: bytes, payload: bytes | memoryview) -> None:
        if len(payload) > MAX_FRAME:
            raise TransportError(f"refusing to send a {len(payload)}-byte frame (over limit)")
        self._out.append(HEADER.pack(kind, len(payload)))
        self._out.append(bytes(payload))
        self._out_size += HEADER.size + len(payload)
        if self._out_size >= 1024 * 1024:
            self._drain()

    def _drain(self) -> None:
        if self._out:
            data = b"".join(self._out)
            self._out.clear()
            self._out_size = 0
            self.channel.write(data)
            self.bytes_out += len(data)

    def flush(self) -> None:
        """Send everything queued; messages are batched until a reply is awaited."""
        self._drain()
        self.channel.flush()

    def send_message(self, t: str, **fields: Any) -> None:
        self._queue(JSON, json.dumps({"t": t, **fields}, separators=(",", ":")).encode())

    def send_error(self, exc: UsrError) -> None:
        self.send_message("error", kind=exc.kind, message=exc.message, hint=exc.hint)

    def send_object(self, type_name: str, oid: str, data: bytes) -> None:
        self._queue(OBJECT, bytes([OBJECT_TYPES[type_name]]) + bytes.fromhex(oid) + data)

    def send_chunk(self, cid: str, data: bytes) -> None:
        self._queue(CHUNK, bytes.fromhex(cid) + data)


def decode_json(payload: bytes, peer: str) -> dict[str, Any]:
    try:
        msg = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise TransportError(f"bad frame from {peer}: unparseable message") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("t"), str):
        raise TransportError(f"bad frame from {peer}: message without a type")
    return msg


def decode_object(payload: bytes, peer: str) -> tuple[str, str, bytes]:
    """``(type_name, hex oid, data)`` of an ``O`` frame; the data is not yet verified."""
    if len(payload) < 1 + OID_LEN or payload[0] not in OBJECT_NAMES:
        raise TransportError(f"bad object frame from {peer}")
    return OBJECT_NAMES[payload[0]], payload[1 : 1 + OID_LEN].hex(), payload[1 + OID_LEN :]


def decode_chunk(payload: bytes, peer: str) -> tuple[str, bytes]:
    """``(hex blake3 id, data)`` of a ``K`` frame; the data is not yet verified."""
    if len(payload) < CID_LEN:
        raise TransportError(f"bad chunk frame from {peer}")
    return payload[:CID_LEN].hex(), payload[CID_LEN:]


def stream_end(payload: bytes, end: str, peer: str, where: str) -> dict[str, Any]:
    """The message that closes a stream of data frames: ``end`` (returned), a peer's error
    (raised as its error class), or anything else (a protocol error ``where``, e.g.
    "mid-file")."""
    msg = decode_json(payload, peer)
    if msg["t"] == "error":
        raise error_from_message(msg, peer)
    if msg["t"] != end:
        raise TransportError(f"protocol error from {peer}: {msg['t']!r} {where}")
    return msg


def error_from_message(msg: dict[str, Any], peer: str) -> UsrError:
    cls = ERROR_CLASSES.get(str(msg.get("kind")), UsrError)
    message = peer_text(msg.get("message") or "remote error")
    hint = msg.get("hint")
    return cls(f"{peer}: {message}", peer_text(hint) if hint else None)


def require(msg: dict[str, Any], key: str, kind: type | tuple[type, ...], peer: str) -> Any:
    """Field ``key`` of a message, type-checked: peers are not trusted to be well-formed."""
    value = msg.get(key)
    if not isinstance(value, kind):
        raise TransportError(f"bad message from {peer}: field {key!r} missing or wrong type")
    return value


def id_list(msg: dict[str, Any], key: str, peer: str, check: Any, default: Any = None) -> list[str]:
    """Field ``key`` of a ``have``, ``get`` or ``want`` request: a list of at most MAX_IDS
    ids, each passed through ``check`` (:func:`check_oid` or :func:`check_cid`)."""
    value = msg.get(key, default)
    if not isinstance(value, list):
        raise TransportError(f"bad message from {peer}: field {key!r} missing or wrong type")
    if len(value) > MAX_IDS:
        raise TransportError(
            f"bad message from {peer}: {len(value)} ids in {key!r}, more than {MAX_IDS}"
        )
    return [check(v, peer) for v in value]


def listing_batch(msg: dict[str, Any], peer: str) -> int | None:
    """Field ``batch`` of a ``want``: the most ids (and sizes) per ``objects`` message, 1
    to MAX_IDS; None when absent (a client from before batched listings: one message)."""
    value = msg.get("batch")
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_IDS:
        raise TransportError(
            f"bad message from {peer}: batch {str(value)[:20]!r}, not 1 to {MAX_IDS}"
        )
    return value


def batches(ids: Any, size: int | None = None) -> Iterator[list[Any]]:
    """``ids`` (any iterable) in lists of at most ``size`` (default :func:`batch_size`),
    in order."""
    size = size or batch_size()
    batch: list[Any] = []
    for item in ids:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def check_oid(oid: Any, peer: str) -> str:
    if not isinstance(oid, str) or len(oid) != 2 * OID_LEN or not _is_hex(oid):
        raise TransportError(f"bad object id from {peer}: {str(oid)[:80]!r}")
    return oid


def check_cid(cid: Any, peer: str) -> str:
    if not isinstance(cid, str) or len(cid) != 2 * CID_LEN or not _is_hex(cid):
        raise TransportError(f"bad chunk id from {peer}: {str(cid)[:80]!r}")
    return cid


def _is_hex(s: str) -> bool:
    try:
        bytes.fromhex(s)
    except ValueError:
        return False
    return s == s.lower()
