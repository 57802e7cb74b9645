"""The frame-level half of a session: :class:`Conversation` and what a transfer reports.

A conversation owns the byte channel to ``usr plumbing serve`` and the ways every request
uses it: one request and one reply, a dead connection turned into one line that says why
(the peer's stderr, its exit status), and a progress meter fed with wire byte counts. The
requests themselves are methods of :class:`usr.sync.session.Session`, whose fetch side
(:mod:`usr.sync.fetching`) and push side (:mod:`usr.sync.pushing`) build on this class.
Knows no transport.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Self

from usr.errors import TransportError, UsrError
from usr.sync import peercheck
from usr.sync import protocol as p


@dataclass
class TransferStats:
    """What one fetch or push moved, observed on the wire (not inferred)."""

    objects: int = 0
    chunks: int = 0
    payload_bytes: int = 0
    wire_bytes_in: int = 0
    wire_bytes_out: int = 0
    seconds: float = 0.0
    #: Whole-file sizes of blobs named by fetched trees (``fetch_trees``), by raw 20-byte
    #: blob id (53 bytes a key, where a hex str takes 89: a bootstrap pull names every file).
    sizes: dict[bytes, int] = field(default_factory=dict)


class StderrTail:
    """Keeps the last few KiB a peer wrote on stderr, to explain a failure."""

    def __init__(self, limit: int = 4096) -> None:
        self.limit = limit
        self.data = bytearray()

    def feed(self, data: bytes) -> None:
        self.data += data
        del self.data[: max(0, len(self.data) - self.limit)]

    def text(self) -> str:
        lines = self.data.decode("utf-8", "replace").strip().splitlines()
        return peercheck.peer_text(lines[-1]) if lines else ""


class Conversation:
    """One protocol conversation with a server; the base of :class:`usr.sync.session.Session`.

    ``channel`` carries the bytes; ``name`` is what errors call the peer ("remote bu-scc");
    ``closer`` ends the transport and returns the peer's exit status if it has one;
    ``stderr`` is the peer's stderr tail, used to explain a dead connection.
    """

    def __init__(
        self,
        channel: p.ByteChannel,
        name: str,
        closer: Callable[[], int | None] | None = None,
        stderr: StderrTail | None = None,
        lock_timeout: float | None = None,
    ) -> None:
        self.fio = p.FrameIO(channel, peer=name)
        self.name = name
        self._closer = closer
        self._stderr = stderr or StderrTail()
        self.lock_timeout = lock_timeout
        self.server: dict[str, Any] = {}
        #: Both sides offered "manifest_first" in hello (docs/protocol.md, "Manifests first").
        self.manifest_first = False
        self.handshake_seconds = 0.0
        self._closed = False

    # -- lifecycle -----------------------------------------------------------------------
    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> int | None:
        """End the session (the server exits on EOF); returns the peer's exit status."""
        if self._closed:
            return None
        self._closed = True
        return self._closer() if self._closer else None

    @contextlib.contextmanager
    def _exchange(self):
        """Translate a dead connection into one line that says why (stderr, exit status)."""
        try:
            yield
        except (BrokenPipeError, ConnectionError) as exc:
            raise self._dead(f"connection to {self.name} lost: {exc}") from None
        except TransportError as exc:
            if "closed mid-" in exc.message or "did not start" in exc.message:
                raise self._dead(exc.message, exc.hint) from None
            raise

    def _dead(self, message: str, hint: str | None = None) -> UsrError:
        status = self.close()
        why = self._stderr.text()
        missing = "command not found" in why or (
            status in (None, 126, 127) and "No such file or directory" in why
        )
        if status == 127 or missing:
            return TransportError(
                f"{self.name}: usr is not installed on the remote ({why or 'exit 127'})",
                "install usr there, or set remote_usr in the profile to the command that runs it",
            )
        detail = f": {why}" if why else ""
        code = f" (exit {status})" if status not in (None, 0) else ""
        return TransportError(f"{message}{code}{detail}", hint or "rerun; the transfer resumes")

    @contextlib.contextmanager
    def _meter(self, what: str, base: int, total: int | None = None):
        """A progress line on stderr (terminal only) fed with absolute wire byte counts;
        with ``total`` (payload bytes expected) it shows a percentage and an ETA."""
        from usr.progress import Progress

        meter = Progress(f"{what} {self.name}", total)
        offset = _Offset(meter, base)
        try:
            yield offset
        finally:
            meter.close()

    def _request(self, t: str, expect: str, **fields: Any) -> dict[str, Any]:
        with self._exchange():
            self.fio.send_message(t, **fields)
            self.fio.flush()
            return self.fio.read_message(expect)


class _Offset:
    """Feeds a meter the bytes moved since ``base`` from absolute wire counters."""

    def __init__(self, meter: Any, base: int) -> None:
        self.meter, self.base = meter, base

    def update(self, absolute: int) -> None:
        self.meter.update(absolute - self.base)
