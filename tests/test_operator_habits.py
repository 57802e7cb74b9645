"""Output and arguments that behave like git, rsync and rclone (docs/cli.md "Global
options"): every test drives the real CLI in a subprocess."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w

from tests.conftest import run_usr, usr_env
from usr.store import Store

DS = "densegen/ds"


def _remotes(path: Path, cluster: Path) -> Path:
    path.write_text(
        tomli_w.dumps({"remotes": {"hpc": {"type": "local", "base_dir": str(cluster)}}})
    )
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Made once per module (three CLI runs): a cluster root with one dataset and a laptop
    root that pulled it; each test gets its own copy."""
    base = tmp_path_factory.mktemp("habits-template")
    laptop, cluster = base / "laptop", base / "cluster"
    for r in (laptop, cluster):
        r.mkdir()
        (r / "registry.toml").write_text("")
    config = _remotes(base / "remotes.toml", cluster)
    for args in (("init", DS), ("dev", "mock-batch", DS, "--rows", "5")):
        assert run_usr("--root", str(cluster), *args).returncode == 0
    r = run_usr(
        "--root", str(laptop), "pull", DS, "hpc", "-y", env={"USR_REMOTES_PATH": str(config)}
    )
    assert r.returncode == 0, r.stderr
    return base


@pytest.fixture
def sides(template: Path, tmp_path: Path) -> dict[str, Path]:
    """A laptop and a cluster root with one dataset pulled, and a local remote profile."""
    laptop, cluster = tmp_path / "laptop", tmp_path / "cluster"
    shutil.copytree(template / "laptop", laptop, symlinks=True)
    shutil.copytree(template / "cluster", cluster, symlinks=True)
    config = _remotes(tmp_path / "remotes.toml", cluster)
    env = {"USR_REMOTES_PATH": str(config)}
    return {"laptop": laptop, "cluster": cluster, "config": config, "env": env}


def usr_at(sides: dict, *args: str):
    return run_usr("--root", str(sides["laptop"]), *args, env=sides["env"])


def test_log_oneline_shows_the_message_subject(sides: dict) -> None:
    for n in range(3):
        (sides["laptop"] / DS / "_artifacts").mkdir(exist_ok=True)
        (sides["laptop"] / DS / "_artifacts" / f"n{n}.txt").write_text(str(n))
        r = usr_at(sides, "snapshot", DS, "-m", f"note {n}\n\nbody line")
        assert r.returncode == 0, r.stderr
    lines = usr_at(sides, "log", DS, "--oneline").stdout.splitlines()
    assert [re.search(r"note \d", line).group(0) for line in lines[:3]] == [
        "note 2",
        "note 1",
        "note 0",
    ]
    assert all("body line" not in line for line in lines)
    graph = usr_at(sides, "log", DS, "--graph").stdout
    assert "note 2" in graph


def test_diff_lists_changed_paths_capped_and_exit_code(sides: dict) -> None:
    art = sides["cluster"] / DS / "_artifacts"
    art.mkdir()
    for n in range(25):
        (art / f"f{n:02d}.txt").write_text(str(n))
    r = usr_at(sides, "diff", DS, "hpc")
    assert r.returncode == 0
    assert "Paths:       25 changed" in r.stdout
    listed = [line for line in r.stdout.splitlines() if "_artifacts/f" in line]
    assert len(listed) == 20 and "remote " in listed[0] and "added" in listed[0]
    assert "... and 5 more" in r.stdout
    every = usr_at(sides, "diff", DS, "hpc", "-v").stdout
    assert len([line for line in every.splitlines() if "_artifacts/f" in line]) == 25
    assert usr_at(sides, "diff", DS, "hpc", "--exit-code").returncode == 1
    assert usr_at(sides, "pull", DS, "hpc", "-y").returncode == 0
    same = usr_at(sides, "diff", DS, "hpc", "--exit-code")
    assert same.returncode == 0 and "Status: up-to-date" in same.stdout


def test_pull_and_push_take_format_json(sides: dict) -> None:
    (sides["cluster"] / DS / "meta.md").write_text("# changed there\n")
    r = usr_at(sides, "pull", DS, "hpc", "-y", "--format", "json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["data"]["action"] == "pull" and doc["data"]["transfer_state"] == "TRANSFERRED"
    assert doc["changes"]["meta"] is True
    (sides["laptop"] / DS / "meta.md").write_text("# changed here\n")
    r = usr_at(sides, "push", DS, "hpc", "-y", "--format", "json")
    assert json.loads(r.stdout)["data"]["action"] == "push"


def test_quiet_prints_nothing_on_success_and_errors_still_print(sides: dict) -> None:
    for args in (("status", DS, "-q"), ("diff", DS, "hpc", "-q"), ("log", DS, "-q")):
        r = usr_at(sides, *args)
        assert r.returncode == 0 and r.stdout == "", args
    r = usr_at(sides, "status", "no/such", "-q")
    assert r.returncode == 4 and r.stderr.startswith("usr: error: ")


def test_a_mistyped_command_gets_did_you_mean() -> None:
    r = run_usr("statsu")
    assert r.returncode == 2
    assert "Did you mean 'status'?" in r.stderr


def test_global_options_may_come_after_the_command(sides: dict) -> None:
    r = run_usr("status", DS, "--root", str(sides["laptop"]))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"{DS}: clean")
    r = run_usr("log", DS, f"--root={sides['laptop']}", "--oneline")
    assert r.returncode == 0 and "mock batch" in r.stdout


def test_remotes_status_and_doctor_take_the_name_as_an_argument(sides: dict) -> None:
    for sub in ("status", "doctor"):
        r = run_usr("remotes", sub, "hpc", env=sides["env"])
        assert r.returncode == 0, r.stderr
        assert run_usr("remotes", sub, "--remote", "hpc", env=sides["env"]).returncode == 0
    r = run_usr("remotes", "status", env=sides["env"])
    assert r.returncode == 2 and "which remote" in r.stderr


def test_import_says_when_it_does_not_use_the_files_id_column(sides: dict, tmp_path: Path) -> None:
    csv = tmp_path / "rows.csv"
    csv.write_text("id,sequence\nmy-own-1,ACGTACGTAC\n")
    r = usr_at(sides, "import", DS, "--path", str(csv))
    assert r.returncode == 0, r.stderr
    assert "its 'id' column was not used" in r.stderr
    r = usr_at(
        sides, "import", DS, "--path", str(csv), "--format", "json", "--on-duplicate", "skip"
    )
    assert json.loads(r.stdout)["data"]["ignored_columns"] == ["id"]


def test_the_transfer_summary_uses_human_units(sides: dict) -> None:
    (sides["cluster"] / DS / "meta.md").write_text("# changed there\n" * 200)
    r = usr_at(sides, "pull", DS, "hpc", "-y")
    moved = next(line for line in r.stdout.splitlines() if line.startswith("Moved:"))
    assert re.match(r"Moved:\s+[\d.]+ (B|KiB|MiB|GiB) \(sent ", moved), moved


def test_cryptography_deprecations_from_asyncssh_are_not_shown() -> None:
    """A dependency's deprecation warnings must never reach a user (they printed ten lines
    per SSH command): once the SSH layer is loaded, one raised as asyncssh would is silent,
    in a fresh interpreter that shows every warning."""
    code = (
        "import warnings; warnings.simplefilter('default'); import usr.ssh; "
        "from cryptography.utils import CryptographyDeprecationWarning as C; "
        "warnings.warn('deprecated algorithm', C); print('ran')"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=usr_env(), check=False
    )
    assert proc.stdout.strip() == "ran", proc.stderr
    assert "Warning" not in proc.stderr


def test_store_records_are_untouched_by_a_quiet_status(sides: dict) -> None:
    head = Store.open(sides["laptop"] / DS, create=False).head()
    assert usr_at(sides, "status", DS, "-q", "-v").returncode == 0
    assert Store.open(sides["laptop"] / DS, create=False).head() == head


def test_history_commands_find_the_dataset_from_the_working_directory(sides: dict) -> None:
    inside = sides["laptop"] / DS / "_derived"
    inside.mkdir(exist_ok=True)
    r = run_usr("status", cwd=inside)
    assert r.returncode == 0, r.stderr
    assert "clean" in r.stdout
    assert "mock batch" in run_usr("log", "--oneline", cwd=sides["laptop"] / DS).stdout
    outside = run_usr("status", cwd=sides["laptop"])
    assert outside.returncode == 4 and "not inside a dataset" in outside.stderr


def test_a_sync_without_remote_uses_the_one_it_synced_with(sides: dict, tmp_path: Path) -> None:
    r = usr_at(sides, "diff", DS)
    assert r.returncode == 0, r.stderr
    assert "Remote:      hpc" in r.stdout
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    r = run_usr("--root", str(fresh), "pull", DS, "-y", env=sides["env"])
    assert r.returncode == 2 and "has not synced with one yet" in r.stderr


def test_checkout_of_an_old_state_says_it_moved_main_and_the_way_back(sides: dict) -> None:
    head = Store.open(sides["laptop"] / DS, create=False).head()
    r = usr_at(sides, "checkout", DS, "HEAD~1")
    assert r.returncode == 0, r.stderr
    assert "refs/heads/main moved from" in r.stdout
    assert f"undo with: usr checkout {DS} {head}" in r.stdout
    assert usr_at(sides, "checkout", DS, head).returncode == 0
    assert Store.open(sides["laptop"] / DS, create=False).head() == head


# -- colour and pager, on a real pseudo-terminal ------------------------------------------


def _in_pty(args: list[str], extra: dict[str, str]) -> str:
    """Run the CLI with its stdin, stdout and stderr on a pseudo-terminal; what it showed."""
    import os
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "usr", *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=usr_env(extra),
        close_fds=True,
    )
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the terminal's other side is closed
            break
        if not chunk:
            break
        out += chunk
    assert proc.wait(timeout=60) == 0, out
    os.close(master)
    return out.decode(errors="replace")


def test_log_on_a_terminal_is_coloured_and_paged(sides: dict) -> None:
    pager = {"PAGER": "sed s/^/PAGED:/", **sides["env"]}
    shown = _in_pty(["--root", str(sides["laptop"]), "log", DS, "--oneline"], pager)
    lines = [line for line in shown.splitlines() if line.strip()]
    assert lines and all(line.startswith("PAGED:") for line in lines), shown
    assert "\x1b[33m" in shown  # ids in yellow, as git shows them
    plain = _in_pty(["--root", str(sides["laptop"]), "log", DS, "--oneline", "--no-pager"], pager)
    assert "PAGED:" not in plain and "\x1b[33m" in plain
    no_color = _in_pty(
        ["--root", str(sides["laptop"]), "--no-pager", "log", DS], {**pager, "NO_COLOR": "1"}
    )
    assert "\x1b[" not in no_color and "mock batch" in no_color


def test_colour_is_off_in_a_pipe_unless_asked(sides: dict) -> None:
    piped = usr_at(sides, "log", DS, "--oneline")
    assert "\x1b[" not in piped.stdout
    forced = usr_at(sides, "log", DS, "--oneline", "--color", "always")
    assert "\x1b[33m" in forced.stdout
    never = usr_at(sides, "--no-color", "log", DS, "--oneline", "--color", "always")
    assert never.returncode == 0


def test_many_changed_files_are_shown_by_directory_with_counts(sides: dict) -> None:
    many = sides["laptop"] / DS / "_artifacts" / "batch"
    many.mkdir(parents=True)
    for n in range(300):
        (many / f"f{n:04d}.txt").write_text("x" * 10)
    r = usr_at(sides, "status", DS)
    assert r.returncode == 0
    assert "_artifacts/batch/  (300 files" in r.stdout
    assert len(r.stdout.splitlines()) < 15
    every = usr_at(sides, "status", DS, "-v").stdout
    assert len([line for line in every.splitlines() if "batch/f" in line]) == 300
    snap = usr_at(sides, "snapshot", DS)
    assert "_artifacts/batch/  (300 files" in snap.stdout and len(snap.stdout.splitlines()) < 15


def test_shell_completion_offers_dataset_ids_and_remote_names(sides: dict) -> None:
    """click's completion protocol, as bash's completion function drives it."""

    def complete(words: str) -> list[str]:
        extra = {
            **sides["env"],
            "_USR_COMPLETE": "bash_complete",
            "COMP_WORDS": words,
            "COMP_CWORD": str(len(words.split()) - 1),
        }
        r = run_usr(env=extra)
        assert r.returncode == 0, r.stderr
        return [line.split(",", 1)[1] for line in r.stdout.splitlines()]

    assert complete(f"usr --root {sides['laptop']} status den") == [DS]
    assert complete(f"usr --root {sides['laptop']} pull {DS} h") == ["hpc"]
    assert complete("usr remotes doctor h") == ["hpc"]
    script = run_usr(env={"_USR_COMPLETE": "bash_source"})
    assert "complete " in script.stdout and "_usr_completion" in script.stdout


def test_the_docs_show_the_loop_and_the_sections_as_pictures() -> None:
    """README.md and docs/quickstart.md show SVG diagrams that exist and parse."""
    import xml.etree.ElementTree as ET

    from tests.conftest import REPO

    for page in (REPO / "README.md", REPO / "docs" / "quickstart.md"):
        images = re.findall(r"!\[[^\]]+\]\(([^)]+\.svg)\)", page.read_text())
        assert images, page
        for rel in images:
            svg = ET.parse(page.parent / rel).getroot()
            assert (
                svg.tag.endswith("svg")
                and svg.find("{http://www.w3.org/2000/svg}title") is not None
            )


def test_a_wait_says_what_it_waits_for_on_a_terminal(sides: dict, tmp_path: Path) -> None:
    """Connecting and importing say so on a terminal (drawn at once with USR_PROGRESS=1,
    the switch that stands in for a terminal), then clear the line; never in a pipe."""
    forced = {**sides["env"], "USR_PROGRESS": "1"}
    r = run_usr("--root", str(sides["laptop"]), "diff", DS, "hpc", env=forced)
    assert r.returncode == 0 and "usr: connecting to hpc ..." in r.stderr
    assert r.stderr.rstrip("\n").endswith("\x1b[K")  # the line is cleared again
    csv = tmp_path / "rows.csv"
    csv.write_text("sequence\nACGTACGTAA\n")
    r = run_usr("--root", str(sides["laptop"]), "import", DS, "--path", str(csv), env=forced)
    assert r.returncode == 0 and "usr: importing rows.csv into" in r.stderr
    quiet = usr_at(sides, "diff", DS, "hpc")
    assert "connecting" not in quiet.stderr
