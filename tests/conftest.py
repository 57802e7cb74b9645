"""Shared fixtures. Real files, real subprocesses; nothing of usr's own is mocked.

Fixtures that start servers (the OpenSSH ``sshd``) live in their own plugin modules under
``tests/fixtures/`` and are loaded here, so every SSH test uses the same one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent

pytest_plugins: list[str] = ["tests.fixtures.sshd", "tests.fixtures.s3server"]


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    """The whole suite (``uv run pytest``, no paths named) runs on one worker per core
    (pytest-xdist): most of its time is subprocesses and sshd round trips, so two workers
    on two cores take about half the wall time. Named files or ``-n N`` run as asked, so
    pytest's own answers stay as they are (exit 4 for a path that does not exist). Never in
    a worker (``workerinput``, ``PYTEST_XDIST_WORKER``): a worker that asked for workers
    would start workers without end."""
    if hasattr(config, "workerinput") or "PYTEST_XDIST_WORKER" in os.environ:
        return
    whole = config.args_source == pytest.Config.ArgsSource.TESTPATHS
    if whole and config.option.numprocesses is None and not config.option.collectonly:
        config.option.numprocesses = "auto"


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def usr_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a ``usr`` subprocess: no user config leaks in, no prompts."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("USR_")}
    env["PYTHONPATH"] = str(REPO)
    env.pop("USR_ROOT", None)
    if "USR_REQUIRE_SSHD" in os.environ:
        env["USR_REQUIRE_SSHD"] = os.environ["USR_REQUIRE_SSHD"]
    env.update(extra or {})
    return env


def run_usr(
    *args: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    input: str | None = None,
    timeout: float = 120,
) -> Result:
    """Run the real ``usr`` entry point in a subprocess and capture what a user would see."""
    proc = subprocess.run(
        [sys.executable, "-m", "usr", *args],
        cwd=cwd,
        env=usr_env(env),
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def usr() -> Callable[..., Result]:
    """``usr(*args, cwd=..., env=...)`` runs the CLI as a subprocess."""
    return run_usr


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """An empty datasets root."""
    r = tmp_path / "datasets"
    r.mkdir()
    return r


def recorded_dataset(root: Path, ds_id: str, files: dict[str, bytes]) -> Any:
    """A new dataset ``ds_id`` under ``root`` holding ``files`` (relpath -> bytes), with
    its state recorded."""
    from usr.dataset import Dataset
    from usr.store import Store

    ds = Dataset.init(root, ds_id, source="test")
    for rel, data in files.items():
        path = ds.path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    Store.open(ds.path).record("files")
    return ds
