"""Work on a thread beside the body of a ``with``: a session opening, or a checkout staging.

Owns :func:`beside`. Imports nothing of usr, so any layer may use it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def beside(work: Callable[[], None]) -> Iterator[Callable[[], None]]:
    """Run ``work`` on a thread while the body goes on, and yield ``wait``.

    Opening a session is mostly waiting: the SSH login and the remote's start-up take
    0.3-0.5 s in which this process is idle; scanning and sizing the local tree (0.5 s on
    10,000 files) fits there. A checkout's staging ends in a ``syncfs`` that waits for the
    disk; the gate's check of the received table fits there. ``wait`` joins and re-raises
    (once). A failure of ``work`` wins over one of the body, as when ``work`` ran first.
    """
    import threading

    failed: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            failed.append(exc)

    thread = threading.Thread(target=run, name="usr-beside", daemon=True)
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
