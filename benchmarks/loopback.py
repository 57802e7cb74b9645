"""The loopback SSH server every figure is measured over, and a byte-counting proxy.

The server is the test suite's own sshd (``tests/fixtures/sshd.py``: generated host and
user keys, strict known_hosts, 127.0.0.1 only), so the benchmark and the SSH tests share
one way of starting it. On top of it this module sets up:

* ``remotes.toml`` with two usr profiles, ``bench`` (straight to sshd) and ``bench-wire``
  (through the counting proxy), whose ``remote_usr`` runs ``benchmarks/probe.py`` so the
  server side's peak RSS and round trips are logged as well;
* an OpenSSH client config with the same two hosts, for the baselines (``ssh host 'cat >
  file'``, ``rsync -a -e ssh``), so usr and its baselines reach the same sshd the same way;
* :class:`CountingProxy`, a TCP relay on 127.0.0.1 that counts every byte of the SSH
  connection both ways (handshake, encryption and all): bytes on the wire, measured the
  same way for usr and for rsync. Bulk throughput runs go straight to sshd, because on a
  2-core machine the relay would take CPU from the transfer it measures.
"""

from __future__ import annotations

import contextlib
import shlex
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


class CountingProxy:
    """Relays 127.0.0.1:<port> to ``target_port``, counting bytes in each direction."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.up = 0  # client -> server
        self.down = 0  # server -> client
        self.connections = 0
        self._lock = threading.Lock()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def counters(self) -> tuple[int, int, int]:
        with self._lock:
            return self.up, self.down, self.connections

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target_port))
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._pump, args=(client, server, "up"), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, "down"), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, direction: str) -> None:
        try:
            while True:
                data = src.recv(1 << 20)
                if not data:
                    break
                dst.sendall(data)
                with self._lock:
                    setattr(self, direction, getattr(self, direction) + len(data))
        except OSError:
            pass
        finally:
            for s, how in ((dst, socket.SHUT_WR), (src, socket.SHUT_RD)):
                with contextlib.suppress(OSError):
                    s.shutdown(how)

    def close(self) -> None:
        self._listener.close()


@dataclass
class Loopback:
    """A running sshd, the proxy, and the config files that reach them."""

    process: subprocess.Popen
    info: Any  # tests.fixtures.sshd.Sshd
    proxy: CountingProxy
    remotes: Path
    ssh_config: Path
    probe_log: Path
    remote_root: Path

    def ssh_command(self) -> str:
        """The ``-e`` argument for rsync and the prefix for ``ssh HOST CMD``."""
        return f"ssh -F {shlex.quote(str(self.ssh_config))}"

    def stop(self) -> None:
        self.proxy.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _control_config(workdir: Path, info: Any) -> Path:
    """An ssh_config for the fixture's server that keeps a ControlMaster socket open."""
    path = workdir / "ssh_config_control"
    path.write_text(
        "\n".join(
            [
                "Host *",
                "  ControlMaster auto",
                f"  ControlPath {workdir}/cm-%C",
                "  ControlPersist 120",
                "  LogLevel ERROR",
                "",
            ]
        )
    )
    return path


def start(workdir: Path, remote_root: Path) -> Loopback:
    """Start sshd on 127.0.0.1 with fresh keys, the proxy, and write both client configs."""
    from tests.fixtures import sshd as fixture

    directory = workdir / "sshd"
    directory.mkdir(parents=True)
    try:
        proc, info = fixture._start(directory)
    except Exception:
        raise
    except BaseException as exc:  # pytest.skip/fail outcomes when sshd is missing or dies
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise RuntimeError(f"cannot start the loopback sshd: {exc}") from None
    proxy = CountingProxy(info.port)
    host_key = (directory / "host_ed25519.pub").read_text().strip()
    with open(info.known_hosts, "a") as fh:
        fh.write(f"[127.0.0.1]:{proxy.port} {host_key}\n")

    probe_log = workdir / "probe-server.jsonl"
    wrapper = directory / "bin" / "usr-probe"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"PYTHONPATH={shlex.quote(str(REPO))} exec {shlex.quote(sys.executable)} "
        f"{shlex.quote(str(REPO / 'benchmarks' / 'probe.py'))} "
        f'--log {shlex.quote(str(probe_log))} -- "$@"\n'
    )
    wrapper.chmod(0o755)

    import tomli_w

    remotes = workdir / "remotes.toml"
    profiles = {
        "bench": info.profile(remote_root, remote_usr=str(wrapper)),
        "bench-wire": info.profile(remote_root, remote_usr=str(wrapper), port=proxy.port),
        # The same server through the system's OpenSSH client (transport = "openssh"), with
        # a ControlMaster socket as an operator's ~/.ssh/config would have: the first
        # command logs in, the next ones reuse the connection.
        "bench-openssh": info.profile(
            remote_root,
            remote_usr=str(wrapper),
            transport="openssh",
            ssh_config=str(_control_config(workdir, info)),
        ),
    }
    remotes.write_text(tomli_w.dumps({"remotes": profiles}))
    remotes.chmod(0o600)

    ssh_config = workdir / "ssh_config"
    ssh_config.write_text(
        "\n".join(
            [
                "Host bench bench-wire",
                "  HostName 127.0.0.1",
                f"  User {info.user}",
                f"  IdentityFile {info.user_key}",
                "  IdentitiesOnly yes",
                f"  UserKnownHostsFile {info.known_hosts}",
                "  StrictHostKeyChecking yes",
                "  BatchMode yes",
                "  LogLevel ERROR",
                "Host bench",
                f"  Port {info.port}",
                "Host bench-wire",
                f"  Port {proxy.port}",
                "",
            ]
        )
    )
    return Loopback(proc, info, proxy, remotes, ssh_config, probe_log, remote_root)
