"""Connection faults: a transfer cut midway fails with one transport error line, and the
rerun moves only what had not arrived.

Two ways to cut a transfer:

* the connection drops: an asyncssh server (below) runs the real ``usr plumbing serve`` and
  aborts the TCP connection once N bytes have passed in one direction, like a network
  failure (the serve process sees its stdin end, as under sshd);
* the server dies: ``usr plumbing serve`` SIGKILLed at a crash point in the middle of the
  stream (``USR_FAULT_POINT`` through the remote ``usr`` wrapper), over the real sshd
  fixture and over a ``local`` remote (pipes).

Each case first runs the same transfer uncut on an exact copy, for the full figures. The
cut run must exit with the transport code (6) and one ``usr: error:`` line, and its audit
JSON must say FAILED/transport. The rerun's audit JSON must show it moved fewer chunks and
payload bytes than the full transfer — exactly the chunks the receiver still lacked.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import pytest

from tests.conftest import usr_env
from tests.reliability_helpers import (
    DS,
    REMOTE,
    Pair,
    build_template,
    copy_tree,
    files_of,
    make_pair,
    open_store,
    prepare_pair,
)
from usr.errors import TransportError

#: New bytes the sending side has for each case: ~130 chunks, above the 4 MiB a receiver
#: seals at, so even one killed outright keeps a sealed pack.
GROWTH = 8_000_000


class DroppingServer:
    """An SSH server (asyncssh) that runs the exec command like sshd would and, when armed,
    aborts the connection after ``limit`` bytes of stdout (``"down"``: server to client)
    or stdin (``"up"``). Same ``profile()``/``remote_usr`` as the sshd fixture."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.direction = "down"
        self.limit: int | None = None
        self.dropped = 0
        self.remote_usr = f"{sys.executable} -m usr"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        client_key = asyncssh.generate_private_key("ssh-ed25519")
        self.user_key = directory / "client_key"
        self.user_key.write_bytes(client_key.export_private_key())
        self.user_key.chmod(0o600)
        (directory / "authorized_keys").write_bytes(client_key.export_public_key())
        host_key = asyncssh.generate_private_key("ssh-ed25519")
        self._acceptor = self._call(
            asyncssh.create_server(
                asyncssh.SSHServer,
                "127.0.0.1",
                0,
                server_host_keys=[host_key],
                authorized_client_keys=str(directory / "authorized_keys"),
                process_factory=self._serve,
                encoding=None,
            )
        )
        self.port = self._acceptor.sockets[0].getsockname()[1]
        self.known_hosts = directory / "known_hosts"
        public = host_key.export_public_key().decode().strip()
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {public}\n")

    def _call(self, awaitable):
        async def wrapped():
            return await awaitable

        return asyncio.run_coroutine_threadsafe(wrapped(), self._loop).result(60)

    def profile(self, base_dir: Path | str, **overrides: object) -> dict[str, object]:
        table: dict[str, object] = {
            "type": "ssh",
            "host": "127.0.0.1",
            "port": self.port,
            "user": "operator",
            "base_dir": str(base_dir),
            "batch_mode": True,
            "remote_usr": self.remote_usr,
            "ssh_key": str(self.user_key),
            "known_hosts": str(self.known_hosts),
            "connect_timeout": 10,
        }
        table.update(overrides)
        return table

    def arm(self, direction: str, limit: int | None) -> None:
        self.direction, self.limit = direction, limit

    async def _serve(self, process: asyncssh.SSHServerProcess) -> None:
        proc = await asyncio.create_subprocess_shell(
            process.command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=usr_env(),
        )
        conn = process.channel.get_connection()
        cut = asyncio.Event()
        limit, direction = self.limit, self.direction

        def over(count: int, direction_now: str) -> bool:
            return limit is not None and direction == direction_now and count >= limit

        def drop() -> None:
            if not cut.is_set():
                cut.set()
                self.dropped += 1
                conn.abort()  # no goodbye: the client's socket just dies
                proc.stdin.close()  # and the server's stdin ends, as sshd would do

        async def down() -> None:
            moved = 0
            while data := await proc.stdout.read(65536):
                if cut.is_set():
                    continue  # the connection is gone: what the server writes is lost
                if over(moved + len(data), "down"):
                    process.stdout.write(data[: limit - moved])
                    drop()
                    continue
                moved += len(data)
                process.stdout.write(data)
                await process.stdout.drain()

        async def up() -> None:
            moved = 0
            try:
                while not cut.is_set() and (data := await process.stdin.read(65536)):
                    if over(moved + len(data), "up"):
                        proc.stdin.write(data[: limit - moved])
                        await proc.stdin.drain()
                        drop()
                        return
                    moved += len(data)
                    proc.stdin.write(data)
                    await proc.stdin.drain()
            except (asyncssh.Error, OSError):
                pass
            if not cut.is_set():
                proc.stdin.close()

        async def errors() -> None:
            while data := await proc.stderr.read(65536):
                if not cut.is_set():
                    process.stderr.write(data)

        await asyncio.gather(down(), up(), errors(), return_exceptions=True)
        status = await proc.wait()
        if not cut.is_set():
            process.exit(status)

    def close(self) -> None:
        self._acceptor.close()
        self._call(self._acceptor.wait_closed())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)


@pytest.fixture(scope="module")
def dropping_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DroppingServer]:
    server = DroppingServer(tmp_path_factory.mktemp("dropping-sshd"))
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_template(tmp_path_factory.mktemp("connection-template"))


@dataclass(frozen=True)
class Cut:
    command: str  # push | pull
    how: str  # drop (asyncssh server) | kill (server SIGKILLed at ``point``)
    kind: str = "ssh"  # ssh | local (kill only)
    point: str | None = None  # the server's crash point, for "kill"
    after: int = 5_000_000  # bytes before the drop, for "drop"

    @property
    def id(self) -> str:
        what = f"drop-after-{self.after}" if self.how == "drop" else f"kill-{self.point}"
        return f"{self.kind}-{self.command}-{what}"


CUTS = [
    Cut("pull", "drop"),
    Cut("push", "drop"),
    Cut("pull", "kill", point="packstream.sent-chunk:70"),
    Cut("push", "kill", point="packstream.received-chunk:100"),
    Cut("pull", "kill", kind="local", point="packstream.sent-chunk:70"),
]


def _audit(path: Path) -> dict:
    return json.loads(path.read_text())["data"]


def _target_chunks(pair: Pair, command: str) -> tuple[set[str], set[str]]:
    """(chunks the transferred head names, those the receiver lacks now)."""
    sender, receiver = (pair.local_dir, pair.remote_dir)
    if command == "pull":
        sender, receiver = receiver, sender
    s, r = open_store(sender), open_store(receiver)
    assert s is not None and r is not None
    head = s.head()
    wanted = set(s.chunk_ids([entry for _, entry, _ in s.ls_tree(head)]))
    return wanted, set(r.chunks.missing(sorted(wanted)))


@pytest.mark.parametrize("cut", CUTS, ids=[c.id for c in CUTS])
def test_cut_transfer_fails_in_one_line_and_rerun_moves_only_what_is_missing(
    cut: Cut, template: Path, tmp_path: Path, request
) -> None:
    server = None
    if cut.kind == "ssh":
        server = request.getfixturevalue("dropping_server" if cut.how == "drop" else "sshd")
    pair = prepare_pair(
        cut.kind, template, tmp_path / "cut", cut.command, server, aux_growth=GROWTH
    )
    reference = make_pair(cut.kind, tmp_path / "reference", server)
    copy_tree(pair.local_root, reference.local_root)
    copy_tree(pair.remote_root, reference.remote_root)
    args = (cut.command, DS, REMOTE, "-y", "--audit-json-out")

    if server is not None and cut.how == "drop":
        server.arm("down", None)
    full_run = reference.run(*args, str(tmp_path / "full.json"))
    assert full_run.returncode == 0, full_run.stderr
    full = _audit(tmp_path / "full.json")["transfer"]
    wanted, _ = _target_chunks(reference, cut.command)
    assert full["chunks"] >= 100 and full["payload_bytes"] >= GROWTH

    if cut.how == "drop":
        server.arm("down" if cut.command == "pull" else "up", cut.after)
        dropped = server.dropped
        failed = pair.run(*args, str(tmp_path / "cut.json"))
        server.arm("down", None)
        assert server.dropped == dropped + 1, "the connection was not dropped"
    else:
        failed = pair.run(*args, str(tmp_path / "cut.json"), server_fault=cut.point)
    lines = failed.stderr.strip().splitlines()
    assert failed.returncode == TransportError.exit_code, failed.stderr
    assert len(lines) == 1 and lines[0].startswith("usr: error: "), failed.stderr
    assert "Traceback" not in failed.stderr
    assert REMOTE in lines[0] and "rerun" in lines[0], lines[0]
    audit = _audit(tmp_path / "cut.json")
    assert audit["transfer_state"] == "FAILED"
    assert audit["error"]["kind"] == "transport" and audit["error"]["exit_code"] == 6

    _, missing = _target_chunks(pair, cut.command)
    assert 0 < len(missing) < len(wanted), "the cut run should have delivered some chunks"

    again = pair.run(*args, str(tmp_path / "rerun.json"))
    assert again.returncode == 0, again.stderr
    rerun = _audit(tmp_path / "rerun.json")
    assert rerun["transfer_state"] == "TRANSFERRED"
    moved = rerun["transfer"]
    assert moved["basis"] == "observed"
    assert moved["chunks"] == len(missing) < full["chunks"]
    assert moved["payload_bytes"] < full["payload_bytes"]
    assert moved["objects"] <= full["objects"]

    local, remote = open_store(pair.local_dir), open_store(pair.remote_dir)
    assert local is not None and remote is not None
    assert local.head() == remote.head()
    assert files_of(pair.local_dir) == files_of(pair.remote_dir)
    assert local.fsck() == [] and remote.fsck() == []
