"""The ``usr`` console script: one command line skips even click.

The remote end of every pull, push and diff is ``usr plumbing serve --root BASE_DIR``, and
the client waits on that start-up before its first reply. This module imports nothing
but :mod:`sys` before deciding, so that command line goes straight to the server without
click or any command module (measured: ~13 ms of the server's ~90 ms start); everything
else goes to :func:`porcelain.cli.main`.
"""

from __future__ import annotations

import sys
from typing import NoReturn


def serve_root(args: list[str]) -> str | None:
    """BASE_DIR when ``args`` is exactly ``plumbing serve --root BASE_DIR``, else None.

    Any other spelling (``--help``, extra options) goes through click.
    """
    if args[:2] != ["plumbing", "serve"]:
        return None
    rest = args[2:]
    if len(rest) == 2 and rest[0] == "--root" and rest[1] and not rest[1].startswith("-"):
        return rest[1]
    if len(rest) == 1 and rest[0].startswith("--root=") and len(rest[0]) > len("--root="):
        return rest[0][len("--root=") :]
    return None


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    base_dir = serve_root(args)
    if base_dir is None:
        from porcelain.cli import main as cli_main

        cli_main(args)
        return
    try:
        from usr.sync.server import serve

        code = serve(base_dir)
    except BaseException as exc:  # noqa: BLE001 - mapped to exit codes in one place
        if isinstance(exc, SystemExit):
            raise
        from porcelain.cli import fail

        fail(exc, args)
    sys.exit(code)


def run() -> NoReturn:
    """The ``usr`` console script and ``python -m usr``: :func:`main`, then the exit.

    Once pyarrow is loaded, its thread pools are torn down by C++ static destructors at
    process exit, and now and then one finds a worker still joinable and aborts the
    process ("terminate called without an active exception", SIGABRT; apache/arrow
    issue 34314): a command that had finished, its one-line error printed, exited -6
    instead of its documented code. So when pyarrow is loaded and no other non-daemon
    thread runs, the exit flushes stdout and stderr, runs the ``atexit`` handlers (what
    Python would run) and leaves with ``os._exit``, skipping only those destructors.
    :func:`main` itself still raises ``SystemExit`` for callers in-process (the probe).
    """
    try:
        main()
        code: object = 0
    except SystemExit as done:
        code = done.code
    if not isinstance(code, int):
        if code is not None:
            print(code, file=sys.stderr)
        code = 0 if code is None else 1
    if "pyarrow" not in sys.modules or not _only_daemons_left():
        sys.exit(code)
    import atexit
    import contextlib
    import os

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing to keep
            stream.flush()
    os._exit(code)


def _only_daemons_left() -> bool:
    """True when every thread but this one is a daemon (nothing Python would wait for)."""
    import threading

    me = threading.current_thread()
    return all(t is me or t.daemon for t in threading.enumerate())
