"""usr.sync.prestart: the remote end's process started before the client loads the store,
adopted by the session that needs it, and never left behind by a command that stopped."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.conftest import run_usr
from tests.test_sync_scenarios import DS, make_dataset
from usr import remotes
from usr.sync import client, prestart


def local_profile(tmp_path: Path, **extra: object) -> Path:
    base = tmp_path / "cluster"
    base.mkdir(exist_ok=True)
    config = tmp_path / "remotes.toml"
    remotes.add(remotes.Profile(name="here", type="local", base_dir=str(base), **extra), config)
    return config


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_session_adopts_the_process_started_early(tmp_path: Path) -> None:
    config = local_profile(tmp_path)
    make_dataset(tmp_path / "cluster")
    prestart.start("here", config)
    prestart.start("here", config)  # one process per command line, however often asked
    assert prestart.pending() == 1
    with client.open_session("here", config) as session:
        assert not prestart.pending()
        assert session.heads(DS)["exists"]


def test_a_process_nobody_adopts_is_killed(tmp_path: Path) -> None:
    config = local_profile(tmp_path)
    prestart.start("here", config)
    argv, env = prestart.command(remotes.get("here", config)) or ([], {})
    proc = prestart.take(argv, env)
    assert proc is not None and proc.poll() is None
    prestart.discard(proc)
    assert proc.returncode is not None


def test_an_ssh_that_may_prompt_or_an_unknown_remote_is_not_started(tmp_path: Path) -> None:
    config = tmp_path / "remotes.toml"
    prof = remotes.Profile(
        name="asks", host="127.0.0.1", base_dir="/data", transport="openssh", batch_mode=False
    )
    remotes.add(prof, config)
    remotes.add(remotes.Profile(name="lib", host="127.0.0.1", base_dir="/data"), config)
    for name in ("asks", "lib", "nosuch"):
        prestart.start(name, config)
    prestart.start("x", tmp_path / "missing.toml")
    assert prestart.command(remotes.get("lib", config)) is None  # asyncssh logs in here
    assert not prestart.pending()


def test_a_command_that_stops_before_its_session_leaves_no_process(tmp_path: Path) -> None:
    pidfile = tmp_path / "server.pid"
    wrapper = tmp_path / "serve.sh"
    wrapper.write_text(f'#!/bin/sh\necho $$ > {pidfile}\nexec {sys.executable} -m usr "$@"\n')
    wrapper.chmod(0o755)
    config = local_profile(tmp_path, remote_usr=str(wrapper))
    (tmp_path / "laptop").mkdir()
    r = run_usr(
        "--root",
        str(tmp_path / "laptop"),
        "diff",
        "no/such",
        "here",
        "--remotes-config",
        str(config),
    )
    assert r.returncode != 0 and "no/such" in r.stderr
    if pidfile.exists():  # the wrapper ran before the command gave up: it was killed and reaped
        assert gone(int(pidfile.read_text()))


def test_the_sync_commands_run_over_a_started_process(tmp_path: Path) -> None:
    config = local_profile(tmp_path)
    make_dataset(tmp_path / "cluster")
    laptop = tmp_path / "laptop"
    laptop.mkdir()
    at = ("--root", str(laptop))
    cfg = ("--remotes-config", str(config))
    assert run_usr(*at, "pull", DS, "here", "-y", *cfg).returncode == 0
    r = run_usr(*at, "diff", DS, "here", "--exit-code", *cfg)
    assert r.returncode == 0, r.stderr
    assert "Status: up-to-date" in r.stdout


@pytest.fixture
def openssh_config(sshd, tmp_path: Path) -> Path:
    cluster = tmp_path / "cluster"
    cluster.mkdir()
    make_dataset(cluster)
    return sshd.write_remotes(tmp_path / "remotes.toml", cluster, transport="openssh")


def test_the_system_ssh_is_started_early_and_adopted(openssh_config: Path) -> None:
    prestart.start("bu-scc", openssh_config)
    assert prestart.pending() == 1
    with client.open_session("bu-scc", openssh_config) as session:
        assert not prestart.pending()
        assert session.heads(DS)["exists"]
