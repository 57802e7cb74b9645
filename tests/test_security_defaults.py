"""Security defaults, through the real CLI and the real OpenSSH sshd fixture: strict host keys
(an unknown or changed key is refused with its fingerprint and the remedy, and nothing is
ever written to known_hosts), remote profiles written 0600 with a warning on every command
when they are readable by others, secrets redacted from events, error output and audit
JSON, and no shell injection through dataset ids, paths or profile fields."""

from __future__ import annotations

import json
import os
import subprocess
import tomllib
from pathlib import Path

import pytest
import tomli_w

from tests.conftest import run_usr
from tests.test_sync_scenarios import DS, make_dataset

AUTH = 7
CANARY = "CANARY-7f3a9"


def _cli(root: Path, config: Path, *args: str, home: Path | None = None):
    env = {"USR_REMOTES_PATH": str(config)}
    if home is not None:
        env["HOME"] = str(home)
    return run_usr("--root", str(root), *args, env=env)


def _one_error_line(r) -> str:
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("usr: error: "), r.stderr
    return lines[0]


def _files(top: Path) -> dict[str, bytes]:
    return {str(p.relative_to(top)): p.read_bytes() for p in top.rglob("*") if p.is_file()}


@pytest.fixture
def roots(tmp_path):
    laptop, cluster = tmp_path / "laptop", tmp_path / "cluster"
    laptop.mkdir()
    cluster.mkdir()
    make_dataset(cluster)
    return laptop, cluster


# -- host keys -----------------------------------------------------------------------------------


def _other_key(tmp_path: Path) -> str:
    key = tmp_path / "other_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key.with_suffix(".pub").read_text().strip()


@pytest.mark.ssh
@pytest.mark.parametrize("case", ["unknown", "changed"])
def test_untrusted_host_key_is_refused_with_fingerprint_and_remedy(sshd, roots, tmp_path, case):
    laptop, cluster = roots
    known = tmp_path / "known_hosts"
    known.write_text(
        "" if case == "unknown" else f"[127.0.0.1]:{sshd.port} {_other_key(tmp_path)}\n"
    )
    config = sshd.write_remotes(tmp_path / "remotes.toml", cluster, known_hosts=str(known))
    before_known, before_laptop = known.read_bytes(), _files(laptop)
    r = _cli(laptop, config, "pull", DS, "bu-scc", "-y")
    assert r.returncode == AUTH
    line = _one_error_line(r)
    assert "not trusted (unknown or changed)" in line
    assert sshd.host_fingerprint in line
    assert f"ssh-keyscan -p {sshd.port} 127.0.0.1 >> {known}" in line
    assert known.read_bytes() == before_known  # never accepted by itself
    assert _files(laptop) == before_laptop


@pytest.mark.ssh
@pytest.mark.parametrize("setting", ["default file absent", "UserKnownHostsFile none"])
def test_no_setting_turns_host_key_checking_off(sshd, roots, tmp_path, setting):
    """Without known_hosts in the profile the default is used, and even an ssh config that
    says ``UserKnownHostsFile none`` (which makes asyncssh skip checking) is refused."""
    laptop, cluster = roots
    home = tmp_path / "home"
    home.mkdir()
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text("UserKnownHostsFile none\n" if "none" in setting else "")
    config = sshd.write_remotes(tmp_path / "remotes.toml", cluster, ssh_config=str(ssh_config))
    table = tomllib.loads(config.read_text())
    del table["remotes"]["bu-scc"]["known_hosts"]
    config.write_text(tomli_w.dumps(table))
    r = _cli(laptop, config, "diff", DS, "bu-scc", home=home)
    assert r.returncode == AUTH, r.stderr
    assert sshd.host_fingerprint in _one_error_line(r)
    assert not (home / ".ssh").exists()


# -- profile files --------------------------------------------------------------------------------


def test_profiles_are_written_0600_even_over_an_open_file(tmp_path):
    """``usr remotes add`` under umask 022 writes 0600, and rewriting a file someone made
    0644 leaves it 0600."""
    config = tmp_path / "cfg" / "remotes.toml"
    old = os.umask(0o022)
    try:
        for name in ("lab", "lab2"):
            args = ("add", name, "--type", "local", "--base-dir", str(tmp_path))
            r = run_usr("remotes", *args, "--remotes-config", str(config))
            assert r.returncode == 0, r.stderr
            assert config.stat().st_mode & 0o777 == 0o600
            config.chmod(0o644)
    finally:
        os.umask(old)


@pytest.mark.parametrize(
    "args",
    [
        ("diff", DS, "lab"),
        ("pull", DS, "lab", "-y"),
        ("remotes", "list"),
        ("remotes", "show", "lab"),
    ],
)
def test_open_profile_file_warns_on_every_command(roots, tmp_path, args):
    laptop, cluster = roots
    config = tmp_path / "remotes.toml"
    config.write_text(
        tomli_w.dumps({"remotes": {"lab": {"type": "local", "base_dir": str(cluster)}}})
    )
    config.chmod(0o640)
    r = _cli(laptop, config, *args)
    assert r.returncode == 0, r.stderr
    warnings = [x for x in r.stderr.splitlines() if x.startswith("usr: warning: ")]
    assert warnings == [
        f"usr: warning: {config} is readable by group or others; run: chmod 600 {config}"
    ]
    config.chmod(0o600)
    r = _cli(laptop, config, *args)
    assert "usr: warning" not in r.stderr


# -- secrets --------------------------------------------------------------------------------------


def test_secrets_redacted_from_events_errors_and_audit(roots, tmp_path):
    """A URL with a password, or a ``token=`` assignment, pasted where usr echoes input:
    the event log, the one-line error and the audit JSON show ``***`` instead."""
    laptop, cluster = roots
    config = tmp_path / "remotes.toml"
    config.write_text(
        tomli_w.dumps({"remotes": {"lab": {"type": "local", "base_dir": str(cluster)}}})
    )
    config.chmod(0o600)
    r = _cli(laptop, config, "init", "demo/ds", "--source", f"https://alice:{CANARY}@example.org/x")
    assert r.returncode == 0, r.stderr
    for synced in (".events.log", "meta.md"):  # both travel to every copy of the dataset
        text = (laptop / "demo" / "ds" / synced).read_text()
        assert CANARY not in text and "https://alice:***@example.org/x" in text, synced
    for i, args in enumerate(
        [
            ("diff", f"https://alice:{CANARY}@host/ds", "lab"),
            ("pull", "demo/ds", f"ssh://alice:{CANARY}@host/base", "-y"),
            ("push", "demo/ds", f"lab?api_token={CANARY}", "-y"),
        ]
    ):
        audit = tmp_path / f"audit{i}.json"
        r = _cli(laptop, config, *args, "--audit-json-out", str(audit))
        assert r.returncode in (2, 3, 4), r.stderr
        line = _one_error_line(r)
        assert CANARY not in line and "***" in line, line
        if audit.exists():
            text = audit.read_text()
            assert CANARY not in text, text
            assert json.loads(text)["data"]["transfer_state"] == "FAILED"


# -- shell injection ------------------------------------------------------------------------------

#: Shell syntax that would run ``touch`` if any part of usr's remote command line were
#: interpreted unquoted: each must leave the sentinel directory empty.
INJECTIONS = (
    "; touch {p}/semicolon",
    "$(touch {p}/subst)",
    "`touch {p}/backtick`",
    "| touch {p}/pipe",
    "&& touch {p}/and",
    "\n touch {p}/newline",
)


@pytest.mark.ssh
def test_no_shell_injection_through_profile_fields_ids_or_paths(sshd, roots, tmp_path):
    """Profile fields are quoted word by word into the one remote command line; dataset ids
    and file paths never enter it (they travel inside frames). Every attempt fails with one
    line and the sentinel directory stays empty."""
    laptop, cluster = roots
    sentinel = tmp_path / "sentinel"
    sentinel.mkdir()
    config = tmp_path / "remotes.toml"
    evil = " ".join(inj.format(p=sentinel) for inj in INJECTIONS)
    tries = [
        {"base_dir": f"{cluster}{evil}"},
        {"remote_usr": f"{sshd.remote_usr} {evil}"},  # extra words
        {"remote_usr": f"{sshd.remote_usr}{evil.replace(' ', '')}"},  # glued to the command
        {"user": f"{sshd.user}{evil}"},
    ]
    for over in tries:
        sshd.write_remotes(config, over.pop("base_dir", cluster), **over)
        r = _cli(laptop, config, "diff", DS, "bu-scc")
        assert r.returncode in (3, 4, 6, 7), (over, r.stderr)
        _one_error_line(r)
    sshd.write_remotes(config, cluster)
    r = _cli(laptop, config, "pull", f"ds{evil}", "bu-scc", "-y")
    assert r.returncode == 3, r.stderr
    target = laptop / "file.txt"
    target.write_text("x\n")
    r = _cli(laptop, config, "pull", str(target), "bu-scc", "-y", "--remote-path", f"f{evil}")
    assert r.returncode == 4 and "does not exist" in _one_error_line(r), r.stderr
    r = _cli(laptop, config, "diff", DS, "bu-scc")  # the honest profile works
    assert r.returncode == 0, r.stderr
    assert list(sentinel.iterdir()) == []
