"""MFA logins: keyboard-interactive answered on the terminal once, then reused via the holder.

HPC login nodes ask for a second factor on every new connection. The server here is
asyncssh's own, set up like such a login node: no public-key auth, one keyboard-interactive
challenge ("Passcode:") per login, and a count of successful logins. The client side is the
real ``usr`` CLI in a subprocess whose controlling terminal is a pseudo-terminal that the
test answers, so the prompt path is the one an operator sees. The exec channel runs the real
``usr plumbing serve``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import subprocess
import sys
import termios
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh
import pytest
import tomli_w

PASSCODE = "424242"
REPO = Path(__file__).resolve().parents[1]


@dataclass
class MfaServer:
    port: int
    known_hosts: Path
    logins: list[str] = field(default_factory=list)


class _LoginNode(asyncssh.SSHServer):
    """Keyboard-interactive only, one passcode prompt; counts successful logins."""

    def __init__(self, logins: list[str]) -> None:
        self.logins = logins

    def begin_auth(self, username: str) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return False

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return True

    def get_kbdint_challenge(self, username: str, lang: str, submethods: str):
        return "Two-factor login", "Enter the code from your token.", "", [("Passcode: ", False)]

    def validate_kbdint_response(self, username: str, responses: list[str]) -> bool:
        ok = list(responses) == [PASSCODE]
        if ok:
            self.logins.append(username)
        return ok


async def _run_command(process: asyncssh.SSHServerProcess) -> None:
    """Run the exec request's command (the real ``usr plumbing serve``) as a subprocess,
    relaying bytes both ways; the exit status is sent only after all its output was."""
    proc = await asyncio.create_subprocess_shell(
        process.command,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=str(REPO),
    )

    async def relay_in() -> None:
        with contextlib.suppress(asyncssh.Error, OSError):
            while data := await process.stdin.read(1 << 16):
                proc.stdin.write(data)
                await proc.stdin.drain()
        proc.stdin.close()

    async def relay_out(src: asyncio.StreamReader, dst: asyncssh.SSHWriter) -> None:
        with contextlib.suppress(asyncssh.Error, OSError):
            while data := await src.read(1 << 16):
                dst.write(data)
                await dst.drain()

    feeding = asyncio.ensure_future(relay_in())
    await asyncio.gather(
        relay_out(proc.stdout, process.stdout), relay_out(proc.stderr, process.stderr)
    )
    status = await proc.wait()
    feeding.cancel()
    process.exit(status)


@pytest.fixture
def mfa_server(tmp_path: Path) -> Iterator[MfaServer]:
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    logins: list[str] = []

    async def start() -> asyncssh.SSHAcceptor:
        return await asyncssh.create_server(
            lambda: _LoginNode(logins),
            "127.0.0.1",
            0,
            server_host_keys=[host_key],
            process_factory=_run_command,
            encoding=None,
        )

    acceptor = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    port = acceptor.sockets[0].getsockname()[1]
    known_hosts = tmp_path / "known_hosts"
    public = host_key.export_public_key().decode().strip()
    known_hosts.write_text(f"[127.0.0.1]:{port} {public}\n")
    try:
        yield MfaServer(port=port, known_hosts=known_hosts, logins=logins)
    finally:
        acceptor.close()
        asyncio.run_coroutine_threadsafe(acceptor.wait_closed(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)


def _profile_file(tmp_path: Path, server: MfaServer) -> Path:
    base = tmp_path / "cluster"
    base.mkdir()
    cfg = tmp_path / "remotes.toml"
    profile = {
        "type": "ssh",
        "host": "127.0.0.1",
        "port": server.port,
        "user": "operator",
        "base_dir": str(base),
        "known_hosts": str(server.known_hosts),
        "batch_mode": False,
        "remote_usr": f"{sys.executable} -m usr",
    }
    cfg.write_bytes(tomli_w.dumps({"remotes": {"hpc": profile}}).encode())
    cfg.chmod(0o600)
    return cfg


def _usr_on_terminal(args: list[str], env: dict[str, str], answer: str) -> tuple[int, str]:
    """Run ``usr ARGS`` with a pseudo-terminal as its controlling terminal; type ``answer``
    at every ``Passcode:`` prompt. Returns the exit code and what the terminal showed."""
    master, slave = os.openpty()

    def take_terminal() -> None:
        os.setsid()
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(
        [sys.executable, "-m", "usr", *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        cwd=str(REPO),
        preexec_fn=take_terminal,
    )
    os.close(slave)
    shown = b""
    answered = 0
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: every holder of the terminal's slave side has closed it
            break
        if not chunk:
            break
        shown += chunk
        if shown.count(b"Passcode: ") > answered:  # answer every prompt, a retry too
            os.write(master, (answer + "\n").encode())
            answered += 1
    os.close(master)
    return proc.wait(), shown.decode("utf-8", "replace")


def _env(tmp_path: Path) -> dict[str, str]:
    runtime = tmp_path / "run"
    runtime.mkdir(exist_ok=True)
    env = dict(os.environ)
    env["XDG_RUNTIME_DIR"] = str(runtime)
    env["HOME"] = str(tmp_path)  # no ~/.ssh keys or config of the machine's user
    return env


def _usr_detached(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``usr ARGS`` as a script would: no terminal at all (new session, stdin closed)."""
    return subprocess.run(
        [sys.executable, "-m", "usr", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        cwd=str(REPO),
        start_new_session=True,
        timeout=120,
    )


def test_warm_auth_answers_mfa_once_then_scripts_reuse_the_login(tmp_path, mfa_server):
    cfg = _profile_file(tmp_path, mfa_server)
    env = _env(tmp_path)
    ls_remote = ["plumbing", "ls-remote", "hpc", "densegen/demo", "--remotes-config", str(cfg)]

    # Without a terminal and without a held login, a script cannot answer MFA: clear refusal.
    before = _usr_detached(ls_remote, env)
    assert before.returncode == 7, before.stderr
    assert before.stderr.startswith("usr: error: authentication to ")
    assert "warm-auth --remote hpc" in before.stderr
    assert mfa_server.logins == []

    code, shown = _usr_on_terminal(
        ["remotes", "warm-auth", "--remote", "hpc", "--remotes-config", str(cfg)], env, PASSCODE
    )
    try:
        assert code == 0, shown
        assert "Enter the code from your token." in shown
        assert mfa_server.logins == ["operator"]
        status = _usr_detached(
            ["remotes", "status", "--remote", "hpc", "--remotes-config", str(cfg)], env
        )
        assert "holder live" in status.stdout, status.stdout + status.stderr

        # Scripted calls with no terminal go through the held login: no new MFA prompt.
        for _ in range(2):
            after = _usr_detached(ls_remote, env)
            assert after.returncode == 0, after.stderr
        assert mfa_server.logins == ["operator"]
    finally:
        stop = ["remotes", "warm-auth", "--remote", "hpc", "--stop", "--remotes-config", str(cfg)]
        _usr_detached(stop, env)
    # Once the holder is gone, scripts are back to needing a login they cannot answer.
    again = _usr_detached(ls_remote, env)
    assert again.returncode == 7, again.stderr
    assert mfa_server.logins == ["operator"]


def test_wrong_passcode_is_an_auth_error_and_leaves_no_holder(tmp_path, mfa_server):
    cfg = _profile_file(tmp_path, mfa_server)
    env = _env(tmp_path)
    code, shown = _usr_on_terminal(
        ["remotes", "warm-auth", "--remote", "hpc", "--remotes-config", str(cfg)], env, "000000"
    )
    assert code == 7, shown
    assert shown.count("Passcode: ") == 3  # re-asked, but not forever
    assert "usr: error: warm-auth for hpc failed: authentication to operator@" in shown
    assert "run warm-auth again" in shown
    assert mfa_server.logins == []
    status = _usr_detached(
        ["remotes", "status", "--remote", "hpc", "--remotes-config", str(cfg)], env
    )
    assert "holder live" not in status.stdout


def test_warm_auth_without_a_terminal_says_there_is_none(tmp_path, mfa_server):
    """A login prompt with no terminal to ask on (a script, cron) is refused as such, never
    read from stdin nor blamed on a path in the profile."""
    cfg = _profile_file(tmp_path, mfa_server)
    env = _env(tmp_path)
    r = _usr_detached(
        ["remotes", "warm-auth", "--remote", "hpc", "--remotes-config", str(cfg)], env
    )
    assert r.returncode == 7, r.stderr
    assert "asks for a login answer" in r.stderr and "no terminal" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert mfa_server.logins == []


def test_warm_auth_keeps_the_host_key_remedy(tmp_path, mfa_server):
    """A login error of the holder reaches the operator with its own hint: for an unknown
    host key that is the fingerprint check and ssh-keyscan, not advice about MFA."""
    cfg = _profile_file(tmp_path, mfa_server)
    mfa_server.known_hosts.write_text("")
    r = _usr_detached(
        ["remotes", "warm-auth", "--remote", "hpc", "--remotes-config", str(cfg)], _env(tmp_path)
    )
    assert r.returncode == 7, r.stderr
    assert "is not trusted" in r.stderr and "ssh-keyscan -p" in r.stderr
    assert "MFA" not in r.stderr
