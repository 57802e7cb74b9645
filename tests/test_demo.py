"""``usr demo`` as a new user runs it: the real entry point in a subprocess, no config.

HOME points at an empty directory, so the test also proves the demo never reads or writes
~/.config/usr (its remote profile lives in the scratch directory only).
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import REPO


def test_demo_runs_the_loop_and_keeps_everything_with_keep(usr, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    keep = tmp_path / "demo"
    r = usr("demo", "--keep", str(keep), env={"HOME": str(home)}, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for n in range(1, 9):
        assert f"[{n}/8]" in out
    assert "Relation:    local-missing" in out
    assert "PULL audit: TRANSFERRED" in out and "PUSH audit: TRANSFERRED" in out
    assert "    Status: up-to-date" in out
    assert " attach infer " in out and " mock batch " in out  # the log step
    assert "Demo complete" in out
    assert not (home / ".config").exists()

    audits = {p.stem: json.loads(p.read_text()) for p in (keep / "audits").glob("*.json")}
    assert sorted(audits) == ["01-diff", "02-pull", "03-diff", "04-push", "05-diff"]
    states = {k: v["data"]["transfer_state"] for k, v in audits.items()}
    assert states == {
        "01-diff": "DIFF-ONLY",
        "02-pull": "TRANSFERRED",
        "03-diff": "DIFF-ONLY",
        "04-push": "TRANSFERRED",
        "05-diff": "DIFF-ONLY",
    }
    assert audits["03-diff"]["data"]["_derived"]["local_only"]
    assert audits["05-diff"]["data"]["status"] == "up-to-date"
    assert not audits["05-diff"]["changes"]["any"]

    # The printed commands really work from the kept directory.
    again = usr(
        "--root",
        "laptop",
        "diff",
        "densegen/demo",
        "hpc",
        "--remotes-config",
        "remotes.toml",
        cwd=keep,
        env={"HOME": str(home)},
    )
    assert again.returncode == 0, again.stderr
    assert again.stdout.rstrip().endswith("Status: up-to-date")


def test_demo_rerun_in_kept_dir_and_refuses_a_foreign_dir(usr, tmp_path: Path) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.txt").write_text("do not delete")
    r = usr("demo", "--keep", str(foreign))
    assert r.returncode == 2
    assert r.stderr.startswith("usr: error: ") and "not made by usr demo" in r.stderr
    assert (foreign / "thesis.txt").read_text() == "do not delete"


def test_demo_without_keep_leaves_no_scratch_behind(usr, tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    r = usr("demo", env={"TMPDIR": str(tmp), "HOME": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    assert list(tmp.iterdir()) == []
    assert "scratch directory was removed" in r.stdout


def test_readme_main_job_is_usr_demo() -> None:
    text = (REPO / "README.md").read_text()
    assert "python3 -m pip install -q uv && uv run usr demo" in text


def test_dev_group_is_hidden_but_works(usr, tmp_path: Path) -> None:
    root = tmp_path / "r"
    assert "dev " not in usr("--help").stdout.replace("demo", "")
    r = usr("--root", str(root), "dev", "mock-batch", "densegen/x", "--rows", "7", "--seed", "3")
    assert r.returncode == 0, r.stderr
    r = usr("--root", str(root), "dev", "mock-infer", "densegen/x", "--format", "json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)["data"]
    assert data["scored"] == 7 and data["part"].startswith("_derived/infer/part-")
    r = usr("--root", str(root), "dev", "mock-infer", "densegen/x")
    assert "nothing attached" in r.stdout
    assert (
        usr("--root", str(root), "dev", "mock-batch", "densegen/x", "--rows", "0").returncode == 2
    )
