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
import subprocess
import sys
import threading
from typing import Any

from usr.errors import AuthError, TransportError, UsrError
from usr.sync import prestart
from usr.sync import protocol as p
from usr.sync.conversation import StderrTail, TransferStats
from usr.sync.pushing import FAULT_PUSH_MID_STREAM, FAULT_PUSH_NEGOTIATED, FAULT_PUSH_SENT
from usr.sync.session import Session

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
    argv = prestart.local_argv(base_dir, remote_usr, repo_root)
    env = prestart.child_env(local=True)
    hint = "check remote_usr in the profile"
    return spawn(argv, env, name, lock_timeout, idle_timeout, hint)


def spawn_openssh(profile: Any, name: str, lock_timeout: float | None = None) -> RemoteSession:
    """A session with ``usr plumbing serve`` on an ssh remote, through the system's OpenSSH
    client (``transport = "openssh"``): its login, ~/.ssh/config, ProxyJump and
    ControlMaster sockets, with host keys checked strictly (:func:`usr.sshcommand.openssh_argv`)."""
    from usr.sshcommand import openssh_argv

    argv, env = openssh_argv(profile), prestart.child_env(local=False)
    hint = 'install the OpenSSH client (ssh), or drop transport = "openssh" from the profile'
    return spawn(argv, env, name, lock_timeout, profile.idle_timeout, hint)


def spawn(
    argv: list[str],
    env: dict[str, str],
    name: str,
    lock_timeout: float | None,
    idle_timeout: float | None,
    hint: str,
) -> RemoteSession:
    """A session over a child process's stdin and stdout (its stderr kept for errors): the
    one :mod:`usr.sync.prestart` started early for this command line, else a new one."""
    try:
        proc = prestart.take(argv, env) or prestart.popen(argv, env)
    except OSError as exc:
        raise TransportError(f"cannot start {argv[0]}: {exc.strerror}", hint) from None
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
    elif profile.type == "ssh" and profile.transport == "openssh":
        session = spawn_openssh(profile, label, lock_timeout)
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
    except BaseException as exc:
        session.close()
        if isinstance(exc, TransportError) and getattr(profile, "transport", "") == "openssh":
            raise openssh_failure(profile, exc) from None
        raise
    return session


#: What OpenSSH prints when the host key or the login is refused (exit 7, not 6).
_AUTH_SIGNS = (
    "Permission denied",
    "Host key verification failed",
    "REMOTE HOST IDENTIFICATION HAS CHANGED",
    "No ED25519 host key is known",
    "host key for",
)


def openssh_failure(profile: Any, exc: TransportError) -> UsrError:
    """The one-line error of an ``ssh`` that could not reach ``usr plumbing serve``: an
    :class:`AuthError` when ssh says the host key or the login was refused."""
    where = f"{profile.user + '@' if profile.user else ''}{profile.host}:{profile.port or 22}"
    if any(sign in exc.message for sign in _AUTH_SIGNS):
        if (
            "Host key" in exc.message
            or "host key" in exc.message
            or "IDENTIFICATION" in exc.message
        ):
            return AuthError(
                f"host key of {where} is not trusted (unknown or changed) (openssh)",
                f"compare its fingerprint with the one your cluster publishes, then add it: "
                f"ssh-keyscan -p {profile.port or 22} {profile.host} >> "
                f"{profile.known_hosts or '~/.ssh/known_hosts'}",
            )
        return AuthError(
            f"authentication to {where} failed (openssh: {exc.message})",
            "check user and key (ssh_key / ssh_key_env / agent / ~/.ssh/config)",
        )
    return exc
