"""``usr remotes doctor|status|warm-auth`` against the real sshd fixture."""

from __future__ import annotations

import json

import pytest

from porcelain.remotes import doctor
from usr import remotes
from usr.sync import connholder
from usr.sync.client import open_session

pytestmark = pytest.mark.ssh


def test_doctor_all_pass(sshd, tmp_path, usr):
    base = tmp_path / "remote"
    base.mkdir()
    cfg = sshd.write_remotes(tmp_path / "remotes.toml", base)
    r = usr("remotes", "doctor", "--remote", "bu-scc", "--remotes-config", str(cfg))
    lines = r.stdout.splitlines()
    checks = [line.split()[1] for line in lines]
    assert checks == ["connect", "host", "auth", "remote", "base_dir", "test", "free"]
    assert all(line.startswith("pass") for line in lines[:6]), r.stdout
    assert sshd.host_fingerprint in r.stdout


def test_doctor_reports_host_key_and_base_dir(sshd, tmp_path, usr):
    empty = tmp_path / "kh"
    empty.write_text("")
    cfg = sshd.write_remotes(tmp_path / "remotes.toml", tmp_path / "nope", known_hosts=str(empty))
    r = usr(
        "remotes", "doctor", "--remote", "bu-scc", "--remotes-config", str(cfg), "--format", "json"
    )
    assert r.returncode == 7
    checks = {c["check"]: c for c in json.loads(r.stdout)["data"]["checks"]}
    assert checks["connect"]["ok"] and not checks["host key"]["ok"]
    assert sshd.host_fingerprint in checks["host key"]["detail"]
    cfg = sshd.write_remotes(tmp_path / "remotes.toml", tmp_path / "nope")
    text = doctor(remotes.get("bu-scc", cfg)).text()
    assert "FAIL  base_dir" in text and "does not exist" in text


def test_status_and_warm_auth_holder(sshd, tmp_path, usr, monkeypatch):
    base = tmp_path / "remote"
    base.mkdir()
    cfg = sshd.write_remotes(tmp_path / "remotes.toml", base)
    runtime = tmp_path / "run"
    runtime.mkdir()
    env = {"XDG_RUNTIME_DIR": str(runtime)}
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    profile = remotes.get("bu-scc", cfg)
    assert connholder.status(profile) is None
    r = usr("remotes", "warm-auth", "--remote", "bu-scc", "--remotes-config", str(cfg), env=env)
    assert r.returncode == 0, r.stderr
    sock = connholder.socket_path(profile)
    try:
        assert oct(sock.stat().st_mode & 0o777) == "0o600"
        assert oct(sock.parent.stat().st_mode & 0o777) == "0o700"
        r = usr("remotes", "status", "--remote", "bu-scc", "--remotes-config", str(cfg), env=env)
        assert "bu-scc: reachable" in r.stdout and "holder live" in r.stdout
        with open_session("bu-scc", cfg) as remote:
            assert getattr(remote, "via_holder", False)
            assert remote.heads("ds")["exists"] is False
    finally:
        connholder.stop(profile)
