"""The remote end's process, started before the client has loaded the store.

A sync command spends ~0.1-0.15 s importing the store (pygit2), the planner and the audit
before it opens its session, and the remote end's start (an ssh login, then ``usr plumbing
serve``'s own start-up) needs none of it. So the CLI calls :func:`start` as soon as it
knows the remote profile, with nothing heavier than the standard library loaded, and
:func:`usr.sync.client.spawn` adopts the process (:func:`take`) when its command line and
environment are the ones it would have run; a process nobody adopted is killed at exit.

Owns how a subprocess transport is started (:func:`command`): the ``local`` remote's
``usr plumbing serve`` and the system ``ssh`` of ``transport = "openssh"``. asyncssh
remotes are not started here (they log in inside this process).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from usr import faults

#: Processes started and not yet adopted, by (argv, env) — popped by :func:`take`.
_started: dict[tuple[tuple[str, ...], tuple[tuple[str, str], ...]], subprocess.Popen] = {}


def child_env(local: bool) -> dict[str, str]:
    """This process's environment for a transport child: without the crash and pause
    points (they name one process: tests stop the server through ``remote_usr``), and for
    a ``local`` remote with this usr first on ``PYTHONPATH``."""
    env = {k: v for k, v in os.environ.items() if k not in (faults.ENV, faults.PAUSE_ENV)}
    if local:
        package_parent = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
    return env


def local_argv(
    base_dir: str | os.PathLike[str],
    remote_usr: str | None,
    repo_root: str | os.PathLike[str] | None,
) -> list[str]:
    """``usr plumbing serve --root BASE_DIR [--repo-root DIR]``; ``remote_usr`` (a command
    line, split as a shell would) defaults to this Python's ``-m usr``, so a local remote
    runs the same usr as the client."""
    if remote_usr and remote_usr != "usr":
        argv = shlex.split(remote_usr)
    else:
        argv = [sys.executable, "-m", "usr"]
    argv += ["plumbing", "serve", "--root", str(Path(base_dir).expanduser())]
    if repo_root:
        argv += ["--repo-root", str(Path(repo_root).expanduser())]
    return argv


def command(profile: Any) -> tuple[list[str], dict[str, str]] | None:
    """(argv, env) of the process a profile's session runs over, or None when it logs in
    inside this process (asyncssh) or talks to a bucket."""
    if profile.type == "local":
        return local_argv(profile.base_dir, profile.remote_usr, profile.repo_root), child_env(True)
    if profile.type == "ssh" and profile.transport == "openssh":
        from usr.sshcommand import openssh_argv

        return openssh_argv(profile), child_env(False)
    return None


def _key(argv: list[str], env: dict[str, str]) -> tuple:
    return tuple(argv), tuple(sorted(env.items()))


def popen(argv: list[str], env: dict[str, str]) -> subprocess.Popen:
    """The transport child: stdin and stdout are the session's pipes, stderr is kept for
    errors; stdout unbuffered (the idle timeout polls its fd). Raises OSError."""
    return subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        bufsize=0,
    )


def start(remote: str | None, remotes_config: str | os.PathLike[str] | None) -> None:
    """Start the process of the named remote's session now, if it has one. Never fails:
    anything wrong (no such profile, no ssh) is found again, and reported, when the
    session is opened. An ssh that may prompt (``batch_mode = false``) is not started
    early: a command refused before it needs the remote must not ask for a password."""
    if remote is None:
        return
    try:
        from usr import remotes

        profile = remotes.get(remote, remotes_config)
        how = command(profile)
        if how is None or (profile.type == "ssh" and not profile.batch_mode):
            return
        argv, env = how
        key = _key(argv, env)
        if key not in _started:
            _started[key] = popen(argv, env)
    except Exception:  # noqa: BLE001 - an early start is only ever a head start
        return


def take(argv: list[str], env: dict[str, str]) -> subprocess.Popen | None:
    """The process :func:`start` began for exactly this command line and environment; the
    caller owns it from then on. One that has already exited is taken too: its stderr,
    still in the pipe, says why, as a fresh start would."""
    return _started.pop(_key(argv, env), None)


def pending() -> int:
    """How many started processes wait to be adopted."""
    return len(_started)


def discard(proc: subprocess.Popen) -> None:
    """Kill and reap a started process nobody adopted, and close its pipes."""
    with contextlib.suppress(OSError):
        proc.kill()
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        proc.wait(timeout=5)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        with contextlib.suppress(OSError):
            if stream is not None:
                stream.close()


@atexit.register
def discard_unused() -> None:
    """A command that stopped before opening its session leaves no child behind."""
    while _started:
        discard(_started.popitem()[1])
