"""The ``usr`` console script: one command line skips even click.

The remote end of every pull, push and diff is ``usr plumbing serve --root BASE_DIR``, and
the client waits on that start-up before its first reply. This module imports nothing
but :mod:`sys` before deciding, so that command line goes straight to the server without
click or any command module (measured: ~13 ms of the server's ~90 ms start); everything
else goes to :func:`porcelain.cli.main`.
"""

from __future__ import annotations

import sys


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
