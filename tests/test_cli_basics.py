"""The root command: help, version, and the one-line error contract."""

from __future__ import annotations

from usr import __version__


def test_help_lists_the_daily_loop(usr):
    r = usr("--help")
    assert r.returncode == 0
    assert "usr keeps sequence datasets in sync" in r.stdout


def test_version(usr):
    r = usr("--version")
    assert r.returncode == 0
    assert __version__ in r.stdout


def test_unknown_command_is_one_line_usage_error(usr):
    r = usr("no-such-command")
    assert r.returncode == 2
    assert r.stderr.startswith("usr: error: ")
    assert len(r.stderr.strip().splitlines()) == 1
