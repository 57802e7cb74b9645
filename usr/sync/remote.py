"""The remote end of one sync command: open its session, and do local work meanwhile.

Owns :func:`open_remote` (a session to a named remote profile), :func:`beside` (local
work on a thread while the session opens) and :func:`bytes_moved` (what the session's
frame layer counted), and :func:`here` (this machine's name in the other side's
record message). May import :mod:`usr.sync.client` (lazily: a command that never
reaches a remote does not load the transport) and :mod:`usr.sync.options`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
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


@contextmanager
def beside(work: Callable[[], None]) -> Iterator[Callable[[], None]]:
    """Run ``work`` on a thread while the body opens the session, and yield ``wait``.

    Opening a session is mostly waiting: the SSH login and the remote's start-up take
    0.3-0.5 s in which this process is idle; scanning and sizing the local tree (0.5 s on
    10,000 files) fits there. ``wait`` joins and re-raises. A failure of ``work`` wins over
    one of the session, as when the local side was read first.
    """
    import threading

    failed: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            failed.append(exc)

    thread = threading.Thread(target=run, name="usr-local-side", daemon=True)
    thread.start()

    def wait() -> None:
        thread.join()
        if failed:
            raise failed.pop()

    try:
        yield wait
    except BaseException:
        thread.join()
        if failed:
            raise failed.pop() from None
        raise
    wait()


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
