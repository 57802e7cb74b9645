"""``usr.layout.check_relpath``: the one gate every path from a tree, a peer or a user
passes before it touches disk. Its rules by example, and its fast substring tests held to
the rules stated part by part over many generated paths."""

from __future__ import annotations

import random

import pytest

from usr.errors import InputError
from usr.layout import RUNTIME_NAMES, RUNTIME_PREFIXES, check_relpath


def _refused_by_the_rules(relpath: str) -> bool:
    """The rules as docs/format.md states them, one part at a time."""
    if not relpath or "\x00" in relpath or "\\" in relpath:
        return True
    parts = relpath.split("/")
    return any(
        part in ("", ".", "..") or part in RUNTIME_NAMES or part.startswith(RUNTIME_PREFIXES)
        for part in parts
    )


@pytest.mark.parametrize(
    "relpath",
    [
        "/etc/passwd",
        "a//b",
        "a/",
        ".",
        "..",
        "../x",
        "a/../../x",
        "a/./b",
        ".usr",
        ".usr/objects/pack",
        "a/.usr.lock",
        "deep/er/.usr-tmp123",
        "x/.usr-staging/y",
        "a/.usr.lease.host",
        ".events.lock",
        "a\\b",
        "a\x00b",
        "",
    ],
)
def test_a_path_that_escapes_or_names_runtime_state_is_refused(relpath: str) -> None:
    with pytest.raises(InputError, match="bad path"):
        check_relpath(relpath)


@pytest.mark.parametrize(
    "relpath",
    [
        "records.parquet",
        "_artifacts/many/d001/f0000001",
        ".hidden/x",
        "a/..b/.c",
        "a/.usrx",
        "...",
        "_derived/.usr_notes",
    ],
)
def test_ordinary_paths_and_lookalikes_pass(relpath: str) -> None:
    assert check_relpath(relpath) == relpath


def test_the_fast_checks_agree_with_the_rules_on_generated_paths() -> None:
    pieces = [
        "a",
        "b.txt",
        ".",
        "..",
        "...",
        "",
        ".x",
        ".usr",
        ".usrx",
        ".usr-tmp9",
        ".usr-staging",
        ".usr.lease.h",
        ".events.lock",
        ".usr.lock",
        "..a",
        "a..",
    ]
    rng = random.Random(23)
    for _ in range(20_000):
        relpath = "/".join(rng.choice(pieces) for _ in range(rng.randint(1, 5)))
        try:
            check_relpath(relpath)
            refused = False
        except InputError:
            refused = True
        assert refused == _refused_by_the_rules(relpath), relpath
