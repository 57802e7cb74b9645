"""``transport = "openssh"``: an ssh remote reached through the system's OpenSSH client
instead of asyncssh, over the real sshd fixture: the same sync, the same refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_usr
from tests.test_sync_scenarios import DS, make_dataset
from usr import remotes
from usr.errors import InputError
from usr.sshcommand import openssh_argv


@pytest.fixture
def sides(sshd, tmp_path: Path) -> dict:
    laptop, cluster = tmp_path / "laptop", tmp_path / "cluster"
    laptop.mkdir()
    cluster.mkdir()
    config = sshd.write_remotes(tmp_path / "remotes.toml", cluster, transport="openssh")
    return {"laptop": laptop, "cluster": cluster, "config": config, "sshd": sshd}


def usr_at(sides: dict, *args: str):
    return run_usr("--root", str(sides["laptop"]), *args, "--remotes-config", str(sides["config"]))


def test_diff_pull_push_through_the_openssh_client(sides: dict, tmp_path: Path) -> None:
    make_dataset(sides["cluster"])
    out = tmp_path / "audit.json"
    r = usr_at(sides, "pull", DS, "bu-scc", "-y", "--audit-json-out", str(out))
    assert r.returncode == 0, r.stderr
    assert json.loads(out.read_text())["data"]["transfer_state"] == "TRANSFERRED"
    (sides["laptop"] / DS / "meta.md").write_text("# annotated on the laptop\n")
    r = usr_at(sides, "push", DS, "bu-scc", "-y")
    assert r.returncode == 0, r.stderr
    assert (sides["cluster"] / DS / "meta.md").read_text() == "# annotated on the laptop\n"
    r = usr_at(sides, "diff", DS, "bu-scc", "--exit-code")
    assert r.returncode == 0 and "Status: up-to-date" in r.stdout


def test_an_unknown_host_key_is_refused_with_exit_7(sides: dict, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts_empty"
    empty.write_text("")
    config = sides["sshd"].write_remotes(
        tmp_path / "other.toml", sides["cluster"], transport="openssh", known_hosts=str(empty)
    )
    r = run_usr(
        "--root", str(sides["laptop"]), "diff", DS, "bu-scc", "--remotes-config", str(config)
    )
    assert r.returncode == 7, r.stderr
    assert "host key" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_a_wrong_key_is_an_authentication_failure(sides: dict, tmp_path: Path) -> None:
    import subprocess

    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    config = sides["sshd"].write_remotes(
        tmp_path / "other.toml", sides["cluster"], transport="openssh", ssh_key=str(other)
    )
    r = run_usr(
        "--root", str(sides["laptop"]), "diff", DS, "bu-scc", "--remotes-config", str(config)
    )
    assert r.returncode == 7, r.stderr
    assert "authentication" in r.stderr


def test_the_ssh_command_line_quotes_every_profile_word(tmp_path: Path) -> None:
    profile = remotes.Profile(
        name="x",
        host="cluster.example",
        user="alice",
        port=2222,
        base_dir="/data/a b; rm -rf ~",
        remote_usr="uv run usr",
        batch_mode=True,
        transport="openssh",
    )
    argv = openssh_argv(profile)
    assert (
        argv[:2] == ["ssh", "-T"]
        and "BatchMode=yes" in argv
        and "StrictHostKeyChecking=yes" in argv
    )
    assert argv[-2:] == [
        "cluster.example",
        "uv run usr plumbing serve --root '/data/a b; rm -rf ~'",
    ]


def test_transport_is_checked_when_the_profile_loads(tmp_path: Path) -> None:
    import tomli_w

    path = tmp_path / "remotes.toml"
    bad = {"type": "ssh", "host": "h", "base_dir": "/d", "transport": "telnet"}
    path.write_text(tomli_w.dumps({"remotes": {"x": bad}}))
    with pytest.raises(InputError, match="transport"):
        remotes.load(path)
