"""The warm-auth connection holder: one SSH login that later usr commands reuse.

Cluster logins often ask for MFA on every connection; OpenSSH users avoid that with
ControlMaster. ``usr remotes warm-auth --remote NAME`` gives usr the same: it logs in once
(prompts answered on the terminal), then leaves this holder running in the background with
a per-user unix socket (directory 0700, socket 0600). Each later session for that remote
connects to the socket and the holder opens a fresh exec channel running ``usr plumbing
serve`` on its existing connection, so no new login happens. The holder exits after
``idle_timeout`` seconds (profile, default 600, like ControlPersist) without sessions, or
when its connection drops. Everything works without it: a command that finds no live
holder logs in by itself.

Socket protocol (one byte, then): ``S`` starts a serve session (raw protocol bytes follow
both ways), ``P`` asks for ``{"live": true, "idle": seconds, "sessions": n}`` as one JSON
line, ``Q`` stops the holder.

A transport like :mod:`usr.ssh` (which it imports to log in): it builds the session class
it is given (:mod:`usr.sync.session`) and never imports :mod:`usr.sync.client`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from usr.errors import TransportError, UsrError
from usr.sync.session import Session

#: Unix socket paths are limited to ~107 bytes; longer runtime dirs fall back to /tmp.
_MAX_SOCKET_PATH = 100


def socket_dir() -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR") or os.path.expanduser("~/.cache")
    chosen = Path(base) / "usr-holders"
    if len(str(chosen)) > _MAX_SOCKET_PATH - 40:
        chosen = Path("/tmp") / f"usr-holders-{os.getuid()}"
    return chosen


def socket_path(profile: Any) -> Path:
    """One socket per (host, port, user, keys, remote command): a changed profile never
    reuses a connection made for the old one."""
    fields = asdict(profile)
    fields.pop("idle_timeout", None)
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
    return socket_dir() / f"{profile.name[:16]}-{digest}.sock"


def _connect(profile: Any, op: bytes) -> socket.socket | None:
    path = socket_path(profile)
    if not path.exists():
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
        sock.sendall(op)
    except OSError:
        sock.close()
        return None
    return sock


class SocketChannel:
    """Blocking byte channel over the holder's unix socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def read(self, n: int) -> bytes:
        try:
            return self.sock.recv(n)
        except TimeoutError:  # the socket's timeout is the profile's idle_timeout
            raise TransportError(
                f"remote sent nothing for {self.sock.gettimeout():g}s (via the warm-auth holder)",
                "check the remote; raise idle_timeout in the profile if it is just slow",
            ) from None

    def write(self, data: bytes) -> None:
        self.sock.sendall(data)

    def flush(self) -> None:
        pass


def try_session(
    profile: Any,
    label: str,
    lock_timeout: float | None,
    session_class: type[Session] = Session,
) -> Session | None:
    """A ``session_class`` session through a live holder for ``profile``, or None when
    there is none."""
    sock = _connect(profile, b"S")
    if sock is None:
        return None
    sock.settimeout(profile.idle_timeout)

    def closer() -> int | None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(65536):
                pass
        sock.close()
        return None

    session = session_class(SocketChannel(sock), label, closer, None, lock_timeout)
    session.via_holder = True  # type: ignore[attr-defined]
    return session


def status(profile: Any) -> dict[str, Any] | None:
    """The holder's ``{"live", "idle", "sessions"}``, or None when none is running."""
    sock = _connect(profile, b"P")
    if sock is None:
        return None
    with sock:
        data = b""
        while not data.endswith(b"\n"):
            piece = sock.recv(4096)
            if not piece:
                return None
            data += piece
    return json.loads(data)


def stop(profile: Any) -> bool:
    sock = _connect(profile, b"Q")
    if sock is None:
        return False
    with sock:
        sock.recv(16)
    return True


def start(profile: Any) -> Path:
    """Log in (prompts on the terminal unless batch_mode) and leave a holder running.

    Returns the socket path once the holder is listening; raises the login's error.
    """
    if status(profile):
        return socket_path(profile)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH")])
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "usr.sync.connholder", json.dumps(asdict(profile))],
        stdout=subprocess.PIPE,
        env=env,
    )
    line = proc.stdout.readline().decode("utf-8", "replace").strip()
    proc.stdout.close()
    if line.startswith("error {"):
        proc.wait()
        raise _login_error(profile, json.loads(line[6:]))
    if not line.startswith("ready "):
        proc.wait()
        raise TransportError(
            f"warm-auth for {profile.name} failed: {line or 'holder exited'}",
            "run with USR_DEBUG=1 for details",
        )
    return Path(line[6:])


def _login_error(profile: Any, err: dict[str, Any]) -> UsrError:
    """The holder's login error as the same error class (same exit code) and hint."""
    from usr.sync.protocol import ERROR_CLASSES

    cls = ERROR_CLASSES.get(str(err.get("kind")), UsrError)
    return cls(f"warm-auth for {profile.name} failed: {err.get('message')}", err.get("hint"))


# -- the holder process ----------------------------------------------------------------------


async def _pipe(reader: Any, writer: Any) -> None:
    try:
        while True:
            data = await reader.read(256 * 1024)
            if not data:
                break
            writer.write(data)
            with contextlib.suppress(AttributeError):
                await writer.drain()
    finally:
        with contextlib.suppress(Exception):
            writer.write_eof()


async def _hold(profile: Any, conn: Any, path: Path) -> None:
    from usr.sshcommand import remote_command

    state = {"sessions": 0, "last": time.monotonic()}
    done = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        op = await reader.read(1)
        idle = 0.0 if state["sessions"] else time.monotonic() - state["last"]
        if op != b"P":
            state["last"] = time.monotonic()
        if op == b"P":
            info = {"live": True, "idle": idle, "sessions": state["sessions"], "pid": os.getpid()}
            writer.write((json.dumps(info) + "\n").encode())
        elif op == b"Q":
            writer.write(b"bye\n")
            done.set()
        elif op == b"S":
            state["sessions"] += 1
            try:
                proc = await conn.create_process(remote_command(profile), encoding=None)
                await asyncio.gather(_pipe(reader, proc.stdin), _pipe(proc.stdout, writer))
                proc.close()
            except Exception:  # noqa: BLE001 - one failed session must not end the holder
                pass
            finally:
                state["sessions"] -= 1
                state["last"] = time.monotonic()
        with contextlib.suppress(Exception):
            await writer.drain()
            writer.close()

    old = os.umask(0o077)
    try:
        server = await asyncio.start_unix_server(handle, path=str(path))
    except OSError as exc:
        print(f"error cannot listen on {path}: {exc.strerror}", flush=True)
        conn.close()
        return
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    print(f"ready {path}", flush=True)
    sys.stdout.close()
    closed = asyncio.ensure_future(conn.wait_closed())
    while not done.is_set() and not closed.done():
        idle = time.monotonic() - state["last"]
        if state["sessions"] == 0 and idle > profile.idle_timeout:
            break
        with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
            await asyncio.wait_for(done.wait(), timeout=min(5.0, profile.idle_timeout))
    server.close()
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    conn.close()


def _main(argv: list[str]) -> int:
    from usr import ssh
    from usr.errors import UsrError
    from usr.remotes import Profile

    profile = Profile(**json.loads(argv[0]))
    path = socket_path(profile)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.parent.stat().st_uid != os.getuid():
        print(f"error {path.parent} belongs to another user", flush=True)
        return 7
    os.chmod(path.parent, 0o700)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a stale socket of a holder that died
    try:
        conn = ssh.connect(profile, interactive=not profile.batch_mode)
    except UsrError as exc:
        print("error " + json.dumps(exc.to_json()), flush=True)  # the caller re-raises it
        return exc.exit_code
    # The login above ran in the caller's session so MFA prompts could reach its terminal
    # (/dev/tty); only now does the holder leave that session, so closing the terminal
    # (SIGHUP) or a Ctrl-C there no longer ends the held connection.
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    if os.environ.get("USR_DEBUG") != "1":
        os.dup2(devnull, 2)
    ssh.run(_hold(profile, conn, path))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
