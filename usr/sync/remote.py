"""The remote end of one sync command: open its session.

Owns :func:`open_remote` (a session to a named remote profile), :func:`bytes_moved`
(what the session's frame layer counted) and :func:`here` (this machine's name in the
other side's record message); local work runs meanwhile by :func:`usr.sync.beside.beside`.
May import :mod:`usr.sync.client` (lazily: a command that never reaches a remote does not
load the transport) and :mod:`usr.sync.options`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from usr.sync.options import SyncOptions


@contextmanager
def open_remote(remote: str, options: SyncOptions) -> Iterator[Any]:
    """An open :class:`usr.sync.client.RemoteSession` to the named remote profile."""
    from usr.progress import Waiting
    from usr.sync import client

    with Waiting(f"connecting to {remote}"):
        session = client.open_session(
            remote, options.remotes_config, lock_timeout=options.lock_timeout
        )
    with session:
        yield session


def here() -> str:
    """This machine's name, as the other side's record message gives it."""
    import socket

    return socket.gethostname()


def bytes_moved(session: Any) -> tuple[int, int]:
    """(sent, received) bytes so far, as the session's frame layer counted them."""
    fio = getattr(session, "fio", None)
    if fio is None:
        return 0, 0
    return int(getattr(fio, "bytes_out", 0)), int(getattr(fio, "bytes_in", 0))
