"""The transport over a real OpenSSH sshd (tests/fixtures/sshd.py): connect, auth, host keys,
remote usr, and a push/fetch round trip through an exec channel.

The datasets here are random bytes (chunking is what is tested), so pushes skip the gate
(``validate=False``; docs/cli.md "The gate").
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from usr import remotes
from usr.errors import AuthError, NotFoundError, TransportError
from usr.store import Store
from usr.sync.client import open_session

pytestmark = pytest.mark.ssh


def _profile(sshd, tmp_path: Path, base: Path | None = None, **over) -> Path:
    base = base or tmp_path / "remote"
    base.mkdir(exist_ok=True)
    return sshd.write_remotes(tmp_path / "remotes.toml", base, **over)


def _dataset(path: Path, size: int = 300_000) -> Store:
    path.mkdir(parents=True, exist_ok=True)
    (path / "records.parquet").write_bytes(os.urandom(size))
    (path / "meta.md").write_text("# meta\n")
    store = Store.open(path)
    store.record("snapshot")
    return store


def test_push_and_fetch_over_ssh(sshd, tmp_path, monkeypatch):
    cfg = _profile(sshd, tmp_path)
    store = _dataset(tmp_path / "local" / "densegen" / "ds")
    head = store.head()
    with open_session("bu-scc", cfg) as remote:
        assert remote.server["protocol"] == 1
        assert remote.heads("densegen/ds") == {
            "exists": False,
            "head": None,
            "refs": {},
            "tree": None,
        }
        stats = remote.push("densegen/ds", store, head, None, validate=False)
        assert stats.objects > 0
        assert remote.heads("densegen/ds")["head"] == head
    pushed = tmp_path / "remote" / "densegen" / "ds" / "records.parquet"
    assert pushed.read_bytes() == (tmp_path / "local/densegen/ds/records.parquet").read_bytes()
    back = tmp_path / "back"
    back.mkdir()
    copy = Store.open(back)
    with open_session("bu-scc", cfg) as remote:
        remote.fetch("densegen/ds", copy, [head])
        again = remote.fetch("densegen/ds", copy, [head])
    assert again.objects == 0 and again.chunks == 0
    copy.checkout(head)
    assert (back / "records.parquet").read_bytes() == pushed.read_bytes()


def test_unknown_host_key_names_fingerprint(sshd, tmp_path):
    empty = tmp_path / "known_hosts_empty"
    empty.write_text("")
    cfg = _profile(sshd, tmp_path, known_hosts=str(empty))
    with pytest.raises(AuthError) as err:
        open_session("bu-scc", cfg)
    line = err.value.one_line()
    assert sshd.host_fingerprint in line
    assert "ssh-keyscan" in line


def test_changed_host_key_refused(sshd, tmp_path):
    other = tmp_path / "other"
    os.system(f"ssh-keygen -q -t ed25519 -N '' -f {other}")
    kh = tmp_path / "known_hosts_wrong"
    kh.write_text(f"[127.0.0.1]:{sshd.port} {(tmp_path / 'other.pub').read_text()}")
    cfg = _profile(sshd, tmp_path, known_hosts=str(kh))
    with pytest.raises(AuthError) as err:
        open_session("bu-scc", cfg)
    assert sshd.host_fingerprint in err.value.one_line()


def test_auth_failure(sshd, tmp_path):
    stranger = tmp_path / "stranger"
    os.system(f"ssh-keygen -q -t ed25519 -N '' -f {stranger}")
    cfg = _profile(sshd, tmp_path, ssh_key=str(stranger))
    with pytest.raises(AuthError) as err:
        open_session("bu-scc", cfg)
    assert "authentication" in err.value.one_line()


def test_unreachable_host(sshd, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = _profile(sshd, tmp_path, port=port)
    with pytest.raises(TransportError) as err:
        open_session("bu-scc", cfg)
    assert not isinstance(err.value, AuthError)
    assert "cannot reach" in err.value.one_line()


def test_remote_without_usr(sshd, tmp_path):
    cfg = _profile(sshd, tmp_path, remote_usr="/nonexistent/usr-missing")
    with pytest.raises(TransportError) as err:
        open_session("bu-scc", cfg)
    assert "usr is not installed on the remote" in err.value.one_line()


def test_base_dir_missing(sshd, tmp_path):
    cfg = sshd.write_remotes(tmp_path / "remotes.toml", tmp_path / "nope")
    with open_session("bu-scc", cfg) as remote:
        assert remote.server["root_exists"] is False
        with pytest.raises(NotFoundError) as err:
            remote.heads("ds")
    assert "base_dir" in err.value.one_line()


def test_unknown_remote_name(tmp_path):
    cfg = tmp_path / "remotes.toml"
    cfg.write_text("")
    with pytest.raises(NotFoundError) as err:
        remotes.get("nosuch", cfg)
    assert "nosuch" in err.value.one_line()


class _AbortAfter:
    """Byte channel wrapper that drops the SSH connection once ``limit`` bytes are written."""

    def __init__(self, inner, conn, limit: int) -> None:
        self.inner, self.conn, self.limit, self.sent = inner, conn, limit, 0

    def read(self, n: int) -> bytes:
        return self.inner.read(n)

    def write(self, data: bytes) -> None:
        if self.sent + len(data) > self.limit:
            from usr import ssh

            ssh.run(_abort(self.conn))
        self.inner.write(data)
        self.sent += len(data)

    def flush(self) -> None:
        self.inner.flush()


async def _abort(conn) -> None:
    conn.abort()


def test_push_cut_over_ssh_resumes_with_only_missing_chunks(sshd, tmp_path, monkeypatch):
    monkeypatch.setenv("USR_INLINE_LIMIT", "4096")
    cfg = _profile(sshd, tmp_path)
    store = _dataset(tmp_path / "local" / "ds", size=12 * 1024 * 1024)
    head = store.head()
    all_chunks = store.chunk_ids([e for _, e, _ in store.ls_tree(head)])
    remote = open_session("bu-scc", cfg, use_holder=False)
    remote.fio.channel = _AbortAfter(remote.fio.channel, remote.connection, 9 * 1024 * 1024)
    with pytest.raises(TransportError), remote:
        remote.push("ds", store, head, None, validate=False)
    with open_session("bu-scc", cfg, use_holder=False) as remote:
        # Negotiation waits on the remote transfer lock until the cut receiver has sealed
        # what it got, so the count below is exact.
        stats = remote.push("ds", store, head, None, validate=False)
        landed = Store.open(tmp_path / "remote" / "ds")
        assert landed.head() == head
    assert 0 < stats.chunks < len(all_chunks)
    pushed = (tmp_path / "remote" / "ds" / "records.parquet").read_bytes()
    assert pushed == (tmp_path / "local" / "ds" / "records.parquet").read_bytes()


@pytest.mark.parametrize(
    "mode, words",
    [("proto", "protocol 99"), ("banner", "did not start the usr protocol")],
)
def test_incompatible_or_chatty_remote_over_ssh(sshd, tmp_path, mode, words):
    import sys

    from tests.test_transport_protocol import FAKE_SERVER

    script = tmp_path / "fake_server.py"
    script.write_text(FAKE_SERVER)
    cfg = _profile(sshd, tmp_path, remote_usr=f"{sys.executable} {script} {mode}")
    with pytest.raises(TransportError) as err:
        open_session("bu-scc", cfg, use_holder=False)
    assert words in err.value.one_line()
