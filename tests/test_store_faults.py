"""The crash-point mechanism other crash tests build on (usr/faults.py)."""

from __future__ import annotations

import signal
import subprocess
import sys

from tests.conftest import usr_env

SCRIPT = "from usr import faults\nfor _ in range(2):\n    faults.point('x')\nprint('alive')\n"


def _run(spec: str | None) -> subprocess.CompletedProcess:
    env = usr_env({"USR_FAULT_POINT": spec} if spec else None)
    return subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60
    )


def test_fault_point_kills_on_the_named_hit() -> None:
    assert _run(None).stdout == "alive\n"
    assert _run("x").returncode == -signal.SIGKILL
    assert _run("y, x:2").returncode == -signal.SIGKILL
    assert _run("x:3").stdout == "alive\n"
    assert _run("other").stdout == "alive\n"


def test_store_points_are_registered() -> None:
    import usr.store  # noqa: F401 - registers its points
    import usr.store.checkout  # noqa: F401
    from usr.faults import KNOWN_POINTS

    assert {"snapshot.before-ref", "checkout.mid-promote", "chunks.pack-before-rename"} <= set(
        KNOWN_POINTS
    )
