"""The client end of the protocol: :class:`RemoteSession`, one conversation with one
server, opened by profile name with :func:`open_session` (or :func:`spawn_local`)::

    with open_session("bu-scc", remotes_config=None) as remote:
        heads = remote.heads("densegen/my_dataset")

The conversation itself is :class:`usr.sync.session.Session`; this module adds the ways to
open one. ``local`` remotes spawn ``usr plumbing serve`` here; ``ssh`` remotes go through
the warm-auth holder (:mod:`usr.sync.connholder`) or a fresh login (:mod:`usr.ssh`), both
imported only when needed and neither importing this module: they build the session class
they are given.
"""

from __future__ import annotations

import contextlib
import io
import os
import shlex
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from usr import faults
from usr.errors import TransportError
from usr.sync import protocol as p
from usr.sync.session import (
    FAULT_PUSH_MID_STREAM,
    FAULT_PUSH_NEGOTIATED,
    FAULT_PUSH_SENT,
    Session,
    StderrTail,
    TransferStats,
)

__all__ = [
    "FAULT_PUSH_MID_STREAM",
    "FAULT_PUSH_NEGOTIATED",
    "FAULT_PUSH_SENT",
    "RemoteSession",
    "Session",
    "StderrTail",
    "TransferStats",
    "open_session",
    "spawn_local",
]


class RemoteSession(Session):
    """A :class:`usr.sync.session.Session` that can open itself from a profile. Use as a
    context manager; see docs/protocol.md."""

    @classmethod
    def open(
        cls,
        remote: Any,
        remotes_config: str | os.PathLike[str] | None = None,
        **options: Any,
    ) -> RemoteSession:
        """Open and handshake a session with a profile (or a profile name); see
        :func:`open_session`."""
        return open_session(remote, remotes_config, **options)


# -- opening sessions ----------------------------------------------------------------------


def _pump_stderr(stream: Any, tail: StderrTail) -> None:
    read = getattr(stream, "read1", None) or stream.read  # unbuffered: read is one syscall
    for piece in iter(lambda: read(4096), b""):
        tail.feed(piece)
        if os.environ.get("USR_DEBUG") == "1":
            sys.stderr.buffer.write(piece)


def spawn_local(
    base_dir: str | os.PathLike[str],
    remote_usr: str | None = None,
    name: str = "local",
    lock_timeout: float | None = None,
    repo_root: str | os.PathLike[str] | None = None,
    idle_timeout: float | None = None,
) -> RemoteSession:
    """A session with ``usr plumbing serve --root BASE_DIR`` run as a local subprocess.

    ``remote_usr`` (a command line, split like a shell would) defaults to this Python's
    ``-m usr``, so a local remote always runs the same usr as the client. ``repo_root``
    (file mode's second root) is passed as ``--repo-root``. ``idle_timeout`` bounds how
    long a read waits for the server's next byte (the profile's, like over SSH).
    """
    if remote_usr and remote_usr != "usr":
        argv = shlex.split(remote_usr)
    else:
        argv = [sys.executable, "-m", "usr"]
    argv += ["plumbing", "serve", "--root", str(Path(base_dir).expanduser())]
    if repo_root:
        argv += ["--repo-root", str(Path(repo_root).expanduser())]
    # A crash or pause point names one process: the client's does not reach the server
    # (tests stop the server through remote_usr, "env USR_FAULT_POINT=... usr", as over SSH).
    env = {k: v for k, v in os.environ.items() if k not in (faults.ENV, faults.PAUSE_ENV)}
    package_parent = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            bufsize=0,  # stdout unbuffered: the idle timeout polls its fd
        )
    except OSError as exc:
        raise TransportError(
            f"cannot start {argv[0]}: {exc.strerror}", "check remote_usr in the profile"
        ) from None
    tail = StderrTail()
    pump = threading.Thread(target=_pump_stderr, args=(proc.stderr, tail), daemon=True)
    pump.start()

    def closer() -> int | None:
        with contextlib.suppress(OSError):
            proc.stdin.close()
        try:
            status = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            status = proc.wait()
        pump.join(timeout=5)
        return status

    session = RemoteSession(
        p.FileChannel(proc.stdout, io.BufferedWriter(proc.stdin), idle_timeout),
        name,
        closer,
        tail,
        lock_timeout,
    )
    session.process = proc  # type: ignore[attr-defined]  # tests kill it mid-transfer
    return session


def open_session(
    remote: str | Any,
    remotes_config: str | os.PathLike[str] | None = None,
    *,
    lock_timeout: float | None = None,
    interactive: bool | None = None,
    use_holder: bool = True,
) -> RemoteSession:
    """Open and handshake a session with a remote named in the profiles (or a Profile).

    ``local`` remotes spawn a subprocess; ``ssh`` remotes reuse a live warm-auth holder when
    there is one (``use_holder``), else log in through asyncssh. ``interactive`` allows
    keyboard-interactive prompts on the terminal (default: not ``batch_mode`` and a TTY).
    """
    from usr import remotes

    profile = remotes.get(remote, remotes_config) if isinstance(remote, str) else remote
    label = f"remote {profile.name}"
    if profile.type == "s3":
        from usr.sync.objsession import ObjectStoreSession

        session = ObjectStoreSession(profile, label)
    elif profile.type == "local":
        session = spawn_local(
            profile.base_dir,
            profile.remote_usr,
            label,
            lock_timeout,
            profile.repo_root,
            profile.idle_timeout,
        )
    else:
        session = None
        if use_holder:
            from usr.sync import connholder

            session = connholder.try_session(profile, label, lock_timeout, RemoteSession)
        if session is None:
            from usr import ssh

            session = ssh.open_session(
                profile, label, lock_timeout, interactive=interactive, session_class=RemoteSession
            )
    try:
        session.hello()
    except BaseException:
        session.close()
        raise
    return session
