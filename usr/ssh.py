"""SSH to a remote through asyncssh: strict host keys, the operator's keys and ssh config.

What an operator of a cluster login node expects from ``ssh``, and nothing looser:

* host keys are checked against known_hosts (the profile's ``known_hosts``, else the ssh
  config's / ``~/.ssh/known_hosts``); an unknown or changed key is an :class:`AuthError`
  that shows the server's fingerprint and how to trust it — never accepted silently;
* keys come from the profile (``ssh_key``, or a path in the env var named by
  ``ssh_key_env``), the agent, and the default ``~/.ssh/id_*`` / ``IdentityFile``;
  ``~/.ssh/config`` (or the profile's ``ssh_config``) is honoured;
* ``batch_mode`` forbids every prompt; otherwise keyboard-interactive (MFA) and password
  prompts are answered on the terminal;
* AES-GCM first (on this class of machine asyncssh moves about twice the bytes per second
  with aes128-gcm than with chacha20);
* the remote command is built word by word with :func:`shlex.quote`, so no profile field can
  inject shell syntax (a leading ``~/`` is left for the remote shell to expand).

asyncssh is asynchronous and the rest of usr is not, so connections live on one background
event loop thread and :class:`SSHChannel` offers blocking reads and writes over it.

This is a transport: it imports the session class it wraps its channel in
(:mod:`usr.sync.session`), never :mod:`usr.sync.client`, which opens sessions through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import io
import logging
import os
import threading
import warnings
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TextIO, TypeVar

try:  # before asyncssh: it imports what newer cryptography releases deprecate
    from cryptography.utils import CryptographyDeprecationWarning
except ImportError:  # pragma: no cover - cryptography always comes with asyncssh
    pass
else:
    # The warnings are about asyncssh's code, not the user's; they printed ten lines on
    # every SSH command with the newest cryptography.
    warnings.filterwarnings("ignore", category=CryptographyDeprecationWarning)

import asyncssh  # noqa: E402 - after the filter above

from usr.errors import AuthError, InputError, TransportError
from usr.sshcommand import remote_command
from usr.sync.conversation import StderrTail
from usr.sync.session import Session

T = TypeVar("T")

PREFERRED_CIPHERS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
    "aes256-ctr",
)


#: How much a channel may hold unsent before a write waits (asyncssh's default is 64 KiB).
#: ``SSHChannel.write`` returns once the buffer is back under a quarter of this, so with
#: the default every 1 MiB frame batch waited until it was nearly all sent and the link idled
#: while the next batch was read and framed; with 8 MiB the next batch is ready in time.
WRITE_HIGH_WATER = 8 * 1024 * 1024


# -- the background event loop ---------------------------------------------------------------
_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()


def _event_loop() -> asyncio.AbstractEventLoop:
    global _loop
    with _loop_lock:
        if _loop is None or _loop.is_closed():
            # A dropped connection makes asyncio warn once per packet still queued
            # ("socket.send() raised exception."): usr reports the failure itself, in one
            # line, so only asyncio's errors may reach stderr.
            logging.getLogger("asyncio").setLevel(logging.ERROR)
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, name="usr-ssh", daemon=True).start()
        return _loop


def run(coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Run ``coro`` on the SSH loop thread and wait for its result."""
    return asyncio.run_coroutine_threadsafe(coro, _event_loop()).result(timeout)


# -- prompts ---------------------------------------------------------------------------------
def _tty(label: str) -> TextIO:
    """The controlling terminal, opened for prompts; AuthError when there is none (a
    script, cron, a batch job): a login prompt must never fall back to stdin."""
    try:
        # FileIO, not open(..., "r+"): a buffered read-write text file demands a seekable
        # file, which a terminal is not.
        return io.TextIOWrapper(io.FileIO("/dev/tty", "r+"), write_through=True)
    except OSError:
        raise AuthError(
            f"remote {label} asks for a login answer (MFA code or password), but this process has "
            "no terminal to ask on",
            "run 'usr remotes warm-auth' from a terminal first, or use a key with batch_mode",
        ) from None


def _ask(prompt: str, echo: bool, label: str) -> str:
    """Ask on the controlling terminal (never stdout, which may carry JSON)."""
    with _tty(label) as tty:
        if not echo:
            return getpass.getpass(prompt, stream=tty)
        tty.write(prompt)
        tty.flush()
        return tty.readline().rstrip("\n")


class _Client(asyncssh.SSHClient):
    """Answers keyboard-interactive and password prompts on the terminal, or refuses."""

    #: Challenge rounds answered before giving up (a wrong code is re-asked, like ssh's
    #: NumberOfPasswordPrompts, but never forever: the server may re-challenge endlessly).
    MAX_ROUNDS = 3

    def __init__(self, interactive: bool, label: str) -> None:
        self.interactive = interactive
        self.label = label
        self.rounds = 0

    def kbdint_auth_requested(self) -> str | None:
        return "" if self.interactive else None

    def kbdint_challenge_received(
        self, name: str, instructions: str, lang: str, prompts: Any
    ) -> list[str] | None:
        if not self.interactive or self.rounds >= self.MAX_ROUNDS:
            return None
        if prompts:
            self.rounds += 1
        if instructions:
            with _tty(self.label) as tty:
                tty.write(instructions.rstrip() + "\n")
        return [_ask(prompt, echo, self.label) for prompt, echo in prompts]

    def password_auth_requested(self) -> str | None:
        if not self.interactive or self.rounds >= self.MAX_ROUNDS:
            return None
        self.rounds += 1
        return _ask(f"{self.label} password: ", echo=False, label=self.label)


# -- connecting ------------------------------------------------------------------------------
def _expand(path: str) -> str:
    return os.path.expandvars(os.path.expanduser(path))


def client_keys(profile: Any) -> list[str] | tuple[()]:
    """The profile's key (``ssh_key``, else ``$<ssh_key_env>``), else ``()`` = asyncssh's
    defaults (agent, IdentityFile from ssh config, ~/.ssh/id_*)."""
    if profile.ssh_key_env:
        value = os.environ.get(profile.ssh_key_env)
        if value:
            return [_expand(value)]
    if profile.ssh_key:
        return [_expand(profile.ssh_key)]
    return ()


def connect_options(profile: Any, interactive: bool) -> dict[str, Any]:
    """Keyword arguments for :func:`asyncssh.connect` from a profile."""
    opts: dict[str, Any] = {
        "host": profile.host,
        "encryption_algs": list(PREFERRED_CIPHERS),
        "connect_timeout": profile.connect_timeout,
        "login_timeout": profile.connect_timeout if not interactive else 300,
        "keepalive_interval": 30,
        "keepalive_count_max": 4,
        "client_keys": client_keys(profile),
        "kbdint_auth": interactive,
        "password_auth": interactive,
        "client_factory": lambda: _Client(interactive, profile.name),
    }
    if profile.port:
        opts["port"] = profile.port
    if profile.user:
        opts["username"] = profile.user
    if profile.known_hosts:
        opts["known_hosts"] = _expand(profile.known_hosts)
    if profile.ssh_config:
        opts["config"] = [_expand(profile.ssh_config)]
    if "known_hosts" not in opts and _config_disables_host_keys(opts):
        # b"" = ~/.ssh/known_hosts if it exists, else nothing trusted: refused, never skipped.
        opts["known_hosts"] = b""
    return opts


def _config_disables_host_keys(opts: dict[str, Any]) -> bool:
    """True when the ssh config says ``UserKnownHostsFile none`` for this host, which makes
    asyncssh accept any host key; usr checks host keys whatever the config says."""
    keys = ("host", "port", "username", "config")
    try:
        probe = asyncssh.SSHClientConnectionOptions(**{k: opts[k] for k in keys if k in opts})
    except (OSError, ValueError, asyncssh.Error):
        return False  # the real connect reports the problem
    return probe.known_hosts is None


async def _fingerprint(host: str, port: int) -> str:
    try:
        key = await asyncssh.get_server_host_key(host, port)
    except (OSError, asyncssh.Error):
        return "unavailable"
    if key is None:
        return "unavailable"
    return f"{key.get_fingerprint('sha256')} ({key.get_algorithm()})"


async def _connect(profile: Any, interactive: bool) -> asyncssh.SSHClientConnection:
    opts = connect_options(profile, interactive)
    where = f"{profile.user + '@' if profile.user else ''}{profile.host}:{profile.port or 22}"
    try:
        return await asyncssh.connect(**opts)
    except asyncssh.HostKeyNotVerifiable as exc:
        fp = await _fingerprint(profile.host, profile.port or 22)
        kh = profile.known_hosts or "~/.ssh/known_hosts"
        port = f"-p {profile.port} " if profile.port and profile.port != 22 else ""
        # asyncssh's own reason repeats ours unless it says more (a revoked key).
        more = "" if exc.reason.startswith("Host key is not trusted") else f"; {exc.reason}"
        raise AuthError(
            f"host key of {where} is not trusted (unknown or changed): server offers {fp}{more}",
            f"confirm that fingerprint with the cluster's admins, then add it with "
            f"'ssh-keyscan {port}{profile.host} >> {kh}'; usr never accepts keys by itself",
        ) from None
    except asyncssh.PermissionDenied as exc:
        how = "batch_mode forbids prompts" if not interactive else "prompts answered"
        hint = (
            "check the user, the key and the MFA answer, then run warm-auth again"
            if interactive  # the prompts were already answered: logging in again is the fix
            else "check user and key (ssh_key / ssh_key_env / agent), or run "
            f"'usr remotes warm-auth --remote {profile.name}' to log in interactively"
        )
        raise AuthError(f"authentication to {where} failed ({exc.reason}; {how})", hint) from None
    except asyncssh.DisconnectError as exc:
        raise TransportError(f"ssh to {where} refused: {exc.reason}") from None
    except TimeoutError:
        raise TransportError(
            f"cannot reach {where}: timed out after {profile.connect_timeout:g}s",
            "check the host, port and network (VPN?)",
        ) from None
    except OSError as exc:
        if exc.filename:  # a file the profile names (ssh_key, ssh_config, known_hosts)
            raise InputError(
                f"ssh settings for remote {profile.name}: {exc.filename}: {exc.strerror}",
                f"fix that path in the profile; usr remotes show {profile.name} prints it",
            ) from None
        # asyncio words a refused connect "Connect call failed ('h', p)"; say what happened.
        refused = isinstance(exc, ConnectionError) and exc.errno
        reason = os.strerror(exc.errno) if refused else exc.strerror or exc
        raise TransportError(
            f"cannot reach {where}: {reason}", "check the host, port and network"
        ) from None
    except (ValueError, asyncssh.KeyImportError) as exc:
        raise InputError(f"ssh settings for remote {profile.name}: {exc}") from None


def connect(profile: Any, interactive: bool | None = None) -> asyncssh.SSHClientConnection:
    """Log in to a profile's host (blocking). ``interactive`` defaults to not batch_mode
    and a terminal on stdin."""
    if interactive is None:
        interactive = not profile.batch_mode and _has_tty()
    return run(_connect(profile, interactive))


def _has_tty() -> bool:
    try:
        with open("/dev/tty"):
            return True
    except OSError:
        return False


# -- a blocking byte channel over an exec channel ----------------------------------------------
class SSHChannel:
    """Blocking :class:`usr.sync.protocol.ByteChannel` over an asyncssh process."""

    def __init__(self, process: asyncssh.SSHClientProcess, idle_timeout: float) -> None:
        self.process = process
        self.idle_timeout = idle_timeout

    def read(self, n: int) -> bytes:
        try:
            return run(self.process.stdout.read(n), self.idle_timeout)
        except TimeoutError:
            raise TransportError(
                f"remote sent nothing for {self.idle_timeout:g}s", "raise idle_timeout"
            ) from None
        except asyncssh.Error as exc:
            # Like a failed write: the session turns it into "connection to REMOTE lost"
            # with the peer's last stderr line and exit status, and the rerun hint.
            raise ConnectionResetError(f"ssh channel failed: {exc.reason}") from None

    def write(self, data: bytes) -> None:
        async def _write() -> None:
            self.process.stdin.write(data)
            await self.process.stdin.drain()

        try:
            run(_write(), self.idle_timeout)
        except TimeoutError:
            raise TransportError(
                f"remote accepted nothing for {self.idle_timeout:g}s", "raise idle_timeout"
            ) from None
        except asyncssh.Error as exc:
            raise BrokenPipeError(str(exc.reason)) from None

    def flush(self) -> None:
        pass


def open_session(
    profile: Any,
    label: str,
    lock_timeout: float | None,
    interactive=None,
    session_class: type[Session] = Session,
) -> Session:
    """A ``session_class`` session over a new SSH login (not yet handshaken)."""

    conn = connect(profile, interactive)
    return session_on(
        conn, profile, label, lock_timeout, close_connection=True, session_class=session_class
    )


def session_on(
    conn,
    profile: Any,
    label: str,
    lock_timeout: float | None,
    close_connection: bool,
    session_class: type[Session] = Session,
) -> Session:
    """A ``session_class`` session (:class:`usr.sync.session.Session` or a subclass) over an
    exec channel of an existing connection."""
    tail = StderrTail()

    async def _start() -> asyncssh.SSHClientProcess:
        proc = await conn.create_process(remote_command(profile), encoding=None)
        proc.channel.set_write_buffer_limits(high=WRITE_HIGH_WATER)

        async def pump() -> None:
            # Best effort: when the connection drops, the channel read reports it in one
            # line; an exception left in this task would print a traceback at exit.
            with contextlib.suppress(asyncssh.Error, OSError):
                while piece := await proc.stderr.read(4096):
                    tail.feed(piece)

        asyncio.ensure_future(pump())
        return proc

    try:
        process = run(_start(), profile.connect_timeout)
    except (asyncssh.Error, OSError) as exc:
        if close_connection:
            conn.close()
        raise TransportError(f"cannot start usr on {profile.host}: {exc}") from None

    def closer() -> int | None:
        async def _close() -> int | None:
            process.stdin.write_eof()
            try:
                await asyncio.wait_for(process.wait_closed(), 10)
            except TimeoutError:
                process.close()
            status = process.exit_status
            if close_connection:
                conn.close()
                await conn.wait_closed()
            return status

        try:
            return run(_close(), 30)
        except (asyncssh.Error, OSError, TimeoutError):
            return None

    session = session_class(
        SSHChannel(process, profile.idle_timeout), label, closer, tail, lock_timeout
    )
    session.connection = conn  # type: ignore[attr-defined]
    return session


def host_fingerprint(profile: Any) -> str:
    """The server's host key fingerprint (for doctor / error messages)."""
    return run(_fingerprint(profile.host, profile.port or 22), profile.connect_timeout + 5)


def known_hosts_path(profile: Any) -> Path:
    return Path(_expand(profile.known_hosts or "~/.ssh/known_hosts"))
