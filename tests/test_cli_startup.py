"""Start-up of the CLI: each command loads only its own module; serve skips click's tree.

Every pull, push and diff waits on two interpreter start-ups (client and remote serve), so
what they import is part of the cost of a no-op sync (docs/performance.md).
"""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from porcelain import cli, entry
from tests.conftest import REPO


def test_command_table_matches_every_module():
    """COMMAND_MODULES names exactly the commands each module defines."""
    expected: dict[str, str] = {}
    for module_name in dict.fromkeys(cli.COMMAND_MODULES.values()):
        module = importlib.import_module(module_name)
        if module_name == "plumbing":
            expected[module.plumbing.name] = module_name
            continue
        for command in module.COMMANDS:
            expected[command.name] = module_name
    assert expected == cli.COMMAND_MODULES


@pytest.mark.parametrize(
    ("args", "root"),
    [
        (["plumbing", "serve", "--root", "/srv/ds"], "/srv/ds"),
        (["plumbing", "serve", "--root=/srv/ds"], "/srv/ds"),
        (["plumbing", "serve", "--root"], None),
        (["plumbing", "serve", "--root="], None),
        (["plumbing", "serve", "--root", "/srv", "--help"], None),
        (["plumbing", "serve", "--help"], None),
        (["plumbing", "serve", "--root", "--help"], None),
        (["--debug", "plumbing", "serve", "--root", "/srv"], None),
        (["plumbing", "ls-remote", "--root", "/srv"], None),
    ],
)
def test_serve_fast_path_takes_only_the_exact_command_line(args, root):
    assert entry.serve_root(args) == root


def _modules_loaded(argv: list[str], stdin: bytes = b"") -> tuple[int, set[str]]:
    """Run ``python -m usr ARGV`` with -X importtime; the top-level modules it imported."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "usr", *argv],
        input=stdin,
        capture_output=True,
        cwd=REPO,
        check=False,
    )
    names = set()
    for line in proc.stderr.decode().splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return proc.returncode, names


def test_version_imports_no_heavy_library():
    rc, names = _modules_loaded(["--version"])
    assert rc == 0
    assert "click" in names  # the probe sees imports at all
    assert not names & {"pyarrow", "pygit2", "asyncssh", "plumbing"}


def test_diff_help_loads_the_sync_commands_without_the_store():
    # The sync commands import the store only when they run, after the remote's process
    # is started (usr.sync.prestart): their help needs neither.
    rc, names = _modules_loaded(["diff", "--help"])
    assert rc == 0
    assert "click" in names
    assert not names & {"pyarrow", "asyncssh", "pygit2"}


def test_serve_reaches_the_server_without_the_command_tree(tmp_path):
    """The remote end answers EOF cleanly without loading plumbing, pyarrow or asyncssh."""
    rc, names = _modules_loaded(["plumbing", "serve", "--root", str(tmp_path)])
    assert rc == 0
    assert "usr" in names and "pygit2" in names
    assert not names & {"pyarrow", "asyncssh", "plumbing", "click"}


def test_serve_with_a_bad_spelling_still_goes_through_click(usr):
    r = usr("plumbing", "serve", "--root")
    assert r.returncode == 2
    assert r.stderr.startswith("usr: error: ")


def test_status_without_a_remote_leaves_the_sync_engine_unloaded(tmp_path):
    """``usr status`` with no REMOTE reads the last-seen relations only: it imports
    usr.sync.status, not the whole sync engine (push, pull, audit, merge)."""
    from usr.dataset import Dataset

    ds = Dataset.init(tmp_path, "lab/ds", source="test")
    (ds.path / "a.txt").write_text("a\n")
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "usr", "--root", str(tmp_path)]
        + ["status", "lab/ds"],
        capture_output=True,
        cwd=REPO,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"unrecorded changes" in proc.stdout
    loaded = {
        line.rsplit("|", 1)[1].strip()
        for line in proc.stderr.decode().splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    }
    assert "usr.sync.status" in loaded
    assert "usr.sync.engine" not in loaded
