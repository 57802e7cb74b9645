"""``usr hooks install`` / ``usr hooks list`` through the real CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.conftest import REPO


def test_install_root_wide_then_list(usr, root: Path) -> None:
    r = usr("--root", str(root), "hooks", "install", "--root-wide")
    assert r.returncode == 0, r.stderr
    installed = root / ".usr-hooks" / "pre-push"
    assert r.stdout.strip() == f"installed\tpre-push\t{installed}"
    assert installed.read_bytes() == (REPO / "hooks" / "pre-push").read_bytes()
    assert os.access(installed, os.X_OK)

    again = usr("--root", str(root), "hooks", "install", "--root-wide", "pre-push")
    assert again.stdout.startswith("unchanged\tpre-push")

    listing = usr("--root", str(root), "hooks", "list", "--format", "json")
    assert listing.returncode == 0, listing.stderr
    rows = {h["hook"]: h for h in json.loads(listing.stdout)["data"]["hooks"]}
    assert rows["pre-push"]["scope"] == "root"
    assert rows["pre-push"]["shipped"] is True
    assert rows["post-pull"]["path"] is None


def test_install_keeps_a_different_hook_unless_forced(usr, root: Path) -> None:
    ds = root / "densegen" / "my_dataset"
    (ds / ".usr" / "hooks").mkdir(parents=True)
    own = ds / ".usr" / "hooks" / "pre-push"
    own.write_text("#!/bin/sh\nexit 0\n")
    own.chmod(0o755)

    r = usr("--root", str(root), "hooks", "install", "densegen/my_dataset")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("kept\tpre-push")
    assert "differs (use --force)" in r.stderr
    assert own.read_text() == "#!/bin/sh\nexit 0\n"

    listing = usr("--root", str(root), "hooks", "list", "densegen/my_dataset")
    line = next(ln for ln in listing.stdout.splitlines() if ln.startswith("pre-push"))
    assert line.split("\t")[:4] == ["pre-push", "dataset", "yes", "custom"]

    forced = usr("--root", str(root), "hooks", "install", "densegen/my_dataset", "--force")
    assert forced.stdout.startswith("replaced\tpre-push")
    assert own.read_bytes() == (REPO / "hooks" / "pre-push").read_bytes()


def test_install_refuses_unknown_names_and_missing_target(usr, root: Path) -> None:
    r = usr("--root", str(root), "hooks", "install", "--root-wide", "pre-commit")
    assert r.returncode == 3
    assert "unknown hook 'pre-commit'" in r.stderr
    r = usr("--root", str(root), "hooks", "install", "--root-wide", "post-pull")
    assert r.returncode == 4
    assert "usr ships no post-pull hook" in r.stderr
    r = usr("--root", str(root), "hooks", "install")
    assert r.returncode == 2
    assert "--root-wide" in r.stderr
    r = usr("--root", str(root), "hooks", "install", "nosuch")
    assert r.returncode == 4


def test_list_flags_a_non_executable_hook(usr, root: Path) -> None:
    (root / ".usr-hooks").mkdir()
    (root / ".usr-hooks" / "post-push").write_text("#!/bin/sh\n")
    r = usr("--root", str(root), "hooks", "list")
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("post-push"))
    assert line.split("\t")[:4] == ["post-push", "root", "NO", "custom"]
