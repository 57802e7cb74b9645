"""Remote profiles: lookup order, 0600 writes, the open-file warning, CRUD through the CLI,
and one-line errors naming the bad key."""

from __future__ import annotations

import stat

import pytest

from usr import remotes
from usr.errors import InputError, NotFoundError


def test_lookup_order(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("USR_REMOTES_PATH", raising=False)
    assert remotes.config_path() == tmp_path / ".config/usr/remotes.toml"
    monkeypatch.setenv("USR_REMOTES_PATH", str(tmp_path / "env.toml"))
    assert remotes.config_path() == tmp_path / "env.toml"
    assert remotes.config_path(tmp_path / "opt.toml") == tmp_path / "opt.toml"


def test_crud_through_cli(usr, tmp_path):
    cfg = str(tmp_path / "conf" / "remotes.toml")
    r = usr(
        "remotes",
        "add",
        "bu-scc",
        "--host",
        "scc1.bu.edu",
        "--user",
        "alice",
        "--base-dir",
        "/project/alice/usr/datasets",
        "--remotes-config",
        cfg,
    )
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE((tmp_path / "conf" / "remotes.toml").stat().st_mode) == 0o600
    remotes.add(remotes.Profile(name="laptop", type="local", base_dir=str(tmp_path)), cfg)
    r = usr("remotes", "list", "--remotes-config", cfg)
    assert r.stdout.splitlines() == [
        "bu-scc\tssh\tssh alice@scc1.bu.edu:/project/alice/usr/datasets",
        f"laptop\tlocal\tlocal {tmp_path}",
    ]
    with pytest.raises(InputError, match="already exists"):
        remotes.add(remotes.Profile(name="bu-scc", host="x", base_dir="/d"), cfg)
    assert usr("remotes", "remove", "bu-scc", "--remotes-config", cfg).returncode == 0
    r = usr("remotes", "show", "bu-scc", "--format", "json", "--remotes-config", cfg)
    assert r.returncode == 4 and "unknown remote 'bu-scc'" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and r.stdout == ""
    assert remotes.get("laptop", cfg).to_toml() == {"type": "local", "base_dir": str(tmp_path)}


@pytest.mark.parametrize(
    "text, words",
    [
        ("[remotes.a\n", "not valid TOML"),
        ('[remotes.a]\ntype = "ssh"\nhost = "h"\nbase_dir = "/d"\nprot = 22\n', "remotes.a.prot"),
        ('[remotes.a]\ntype = "ftp"\nbase_dir = "/d"\n', "remotes.a.type"),
        ('[remotes.a]\ntype = "ssh"\nbase_dir = "/d"\n', "remotes.a.host"),
        ('[remotes.a]\ntype = "ssh"\nhost = "h"\n', "remotes.a.base_dir"),
        ('[remotes.a]\nhost = "h"\nbase_dir = "/d"\nport = "22"\n', "remotes.a.port"),
        ('[remotes.a]\nhost = "h"\nbase_dir = "/d"\nport = 70000\n', "remotes.a.port"),
        ('[remotes.a]\nhost = "h"\nbase_dir = "/d"\nbatch_mode = 1\n', "remotes.a.batch_mode"),
        ("[other]\nx = 1\n", "unknown top-level key"),
    ],
)
def test_bad_toml_names_the_key(tmp_path, text, words):
    cfg = tmp_path / "remotes.toml"
    cfg.write_text(text)
    with pytest.raises(InputError) as err:
        remotes.load(cfg)
    assert words in err.value.one_line()


def test_bad_toml_is_one_line_exit_3(tmp_path, usr):
    cfg = tmp_path / "remotes.toml"
    cfg.write_text('[remotes.a]\ntype = "ssh"\nhost = "h"\nbase_dir = "/d"\nprot = 22\n')
    cfg.chmod(0o600)
    r = usr("remotes", "list", "--remotes-config", str(cfg))
    assert r.returncode == 3
    assert r.stderr.startswith("usr: error:") and "remotes.a.prot: unknown key" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_warns_when_readable_by_others(tmp_path, usr):
    cfg = tmp_path / "remotes.toml"
    cfg.write_text('[remotes.a]\ntype = "local"\nbase_dir = "/d"\n')
    cfg.chmod(0o644)
    r = usr("remotes", "list", "--remotes-config", str(cfg))
    assert r.returncode == 0 and "chmod 600" in r.stderr


def test_env_path_is_used(tmp_path, usr):
    cfg = tmp_path / "env.toml"
    r = usr(
        "remotes",
        "add",
        "x",
        "--type",
        "local",
        "--base-dir",
        "/d",
        env={"USR_REMOTES_PATH": str(cfg)},
    )
    assert r.returncode == 0 and cfg.exists()


def test_missing_file_means_no_profiles(tmp_path):
    with pytest.raises(NotFoundError) as err:
        remotes.get("bu-scc", tmp_path / "absent.toml")
    assert "absent.toml" in err.value.one_line()


def test_wizard_writes_preset_and_snippet(tmp_path, usr):
    cfg = str(tmp_path / "remotes.toml")
    r = usr(
        "remotes",
        "wizard",
        "--preset",
        "bu-scc",
        "--name",
        "bu-scc",
        "--user",
        "alice",
        "--base-dir",
        "/project/alice/usr",
        "--remotes-config",
        cfg,
    )
    assert r.returncode == 0, r.stderr
    assert "Host scc1.bu.edu" in r.stdout and "ControlPersist" in r.stdout
    assert remotes.get("bu-scc", cfg).host == "scc1.bu.edu"


def test_remote_command_quotes_every_word():
    from usr.ssh import remote_command

    p = remotes.Profile(
        name="x", host="h", base_dir="/data/a b; rm -rf ~", remote_usr="~/bin/usr --x '$(boom)'"
    )
    cmd = remote_command(p)
    assert cmd == "~/bin/usr --x '$(boom)' plumbing serve --root '/data/a b; rm -rf ~'"
