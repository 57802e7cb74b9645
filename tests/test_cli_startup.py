"""Start-up of the CLI: each command loads only its own module; serve skips click's tree.

Every pull, push and diff waits on two interpreter start-ups (client and remote serve), so
what they import is part of the cost of a no-op sync (docs/performance.md).
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest

from porcelain import cli, entry
from tests.conftest import REPO


def _tables() -> list[tuple[str, dict]]:
    """Every lazy group's table: the root's and the plumbing group's."""
    import plumbing

    return [("usr", cli.COMMANDS_TABLE), ("usr plumbing", plumbing.TABLE)]


@pytest.mark.parametrize(("group", "table"), _tables())
def test_command_table_matches_every_module(group, table):
    """Each table names exactly the commands each of its modules defines, with the one-line
    help each command gives (``--help`` shows the table without importing them)."""
    expected: dict[str, tuple[str, str | None]] = {}
    for module_name in dict.fromkeys(lazy.module for lazy in table.values()):
        for command in importlib.import_module(module_name).COMMANDS:
            short = None if command.hidden else command.get_short_help_str(10**6)
            expected[command.name] = (module_name, short)
    assert expected == {name: (lazy.module, lazy.help) for name, lazy in table.items()}


@pytest.mark.parametrize("argv", [["--help"], ["plumbing", "--help"]])
def test_help_imports_no_command_module_and_shows_every_command(argv):
    """A group's help, shown from its table, is the help click gives with every module
    loaded (the same lines, shortened the same way), and imports no command module."""
    rc, loaded, shown = _modules_loaded(argv)
    assert rc == 0
    assert "click" in loaded
    assert not loaded & {"pyarrow", "pygit2", "asyncssh"}
    assert not loaded & {"porcelain.lifecycle", "porcelain.sync", "plumbing.verify"}
    full = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from porcelain import cli; cli.mount_all(); cli.main(sys.argv[1:])",
            *argv,
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert full.returncode == 0
    assert shown == full.stdout
    assert "verify-sidecars" in shown or "status" in shown


def test_plumbing_command_loads_only_its_module(tmp_path):
    """``usr plumbing serve --repo-root`` (through click) loads its own module, not the sidecar
    checks and pyarrow that ``verify-sidecars`` needs."""
    argv = ["plumbing", "serve", "--root", str(tmp_path), "--repo-root", str(tmp_path)]
    rc, names, _ = _modules_loaded(argv)
    assert rc == 0
    assert {"click", "plumbing.lazy", "usr.sync.server"} <= names
    assert not names & {"pyarrow", "plumbing.verify", "plumbing.objects"}


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


def _modules_loaded(argv: list[str], stdin: bytes = b"") -> tuple[int, set[str], str]:
    """Run ``python -m usr ARGV`` with -X importtime: its exit code, the modules it
    imported (each by its full name and by its top-level package's) and its output."""
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
            name = line.rsplit("|", 1)[1].strip()
            names |= {name, name.split(".")[0]}
    return proc.returncode, names, proc.stdout.decode()


def test_version_imports_no_heavy_library():
    rc, names, _ = _modules_loaded(["--version"])
    assert rc == 0
    assert "click" in names  # the probe sees imports at all
    assert not names & {"pyarrow", "pygit2", "asyncssh", "plumbing.transport"}


def test_diff_help_loads_the_sync_commands_without_the_store():
    # The sync commands import the store only when they run, after the remote's process
    # is started (usr.sync.prestart): their help needs neither.
    rc, names, _ = _modules_loaded(["diff", "--help"])
    assert rc == 0
    assert "click" in names
    assert not names & {"pyarrow", "asyncssh", "pygit2"}


def test_serve_reaches_the_server_without_the_command_tree(tmp_path):
    """The remote end answers EOF cleanly without loading plumbing, pyarrow or asyncssh."""
    rc, names, _ = _modules_loaded(["plumbing", "serve", "--root", str(tmp_path)])
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


_RUN_WITH_PYARROW = """
import atexit, sys, threading
import pyarrow  # loaded: run() leaves through os._exit
from porcelain import entry
atexit.register(lambda: print("atexit handler ran"))
if sys.argv[1] == "thread":
    gate = threading.Event()
    worker = threading.Thread(target=lambda: (gate.wait(), print("worker done")))
    worker.start()
    # Released only once Python's own shutdown has begun (it stops the main thread, then
    # waits for non-daemon threads): an os._exit before that would cut the worker off.
    main = threading.main_thread()
    threading.Thread(target=lambda: (main.join(), gate.set()), daemon=True).start()
sys.argv = ["usr", *sys.argv[2:]]
sys.stdout.write("buffered line, not flushed\\n")
entry.run()
"""


def _buffered_env() -> dict[str, str]:
    """This environment with stdout block-buffered, as on a pipe (no PYTHONUNBUFFERED)."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}


@pytest.mark.parametrize(
    ("args", "code"),
    [(["--version"], 0), (["status", "no/such"], 4), (["no-such-command"], 2)],
)
def test_run_with_pyarrow_loaded_keeps_the_exit_code_output_and_atexit(args, code):
    """With pyarrow loaded the console entry leaves through ``os._exit`` (its thread pools
    may abort a normal exit): the command's exit code, its buffered output and the
    ``atexit`` handlers are all kept."""
    r = subprocess.run(
        [sys.executable, "-c", _RUN_WITH_PYARROW, "plain", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=_buffered_env(),
    )
    assert r.returncode == code, r.stderr
    assert "buffered line, not flushed" in r.stdout
    assert "atexit handler ran" in r.stdout


def test_run_waits_for_a_non_daemon_thread_as_python_would():
    """A non-daemon thread still running means the ordinary exit (Python waits for it):
    its output is not cut off."""
    r = subprocess.run(
        [sys.executable, "-c", _RUN_WITH_PYARROW, "thread", "--version"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=_buffered_env(),
    )
    assert r.returncode == 0, r.stderr
    assert "worker done" in r.stdout
