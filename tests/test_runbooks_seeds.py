"""Every sync command chain in ../shared/seeds/ runs as written against this project.

Each ```bash block of the runbooks is run by bash exactly as printed, with one substitution:
``uv run `` is dropped and ``usr`` on PATH is this checkout's entry point (``python -m
usr``). The datasets root and remotes come from the environment (``USR_ROOT``,
``LOCAL_USR_ROOT``, ``USR_REMOTES_PATH``), and ``bu-scc`` is the real sshd fixture. The jq
answers are checked against what the runbooks say they mean.

``infer`` (another tool in the chained DenseGen/Infer loop) is stood in for by a small
script that writes derived outputs through the dataset API, as the real tool would. Chains
that run the drill harness (``src/dnadesign/usr/scripts/...`` and its test files) run when
every path they name exists in this repository and are skipped, naming them, otherwise.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, usr_env
from usr.dataset import Dataset
from usr.events import append_event

SEEDS = REPO.parent / "shared" / "seeds"
DS = "densegen/my_dataset"
BLOCK_RE = re.compile(r"^```bash\n(.*?)^```", re.S | re.M)


def sections(name: str) -> dict[str, str]:
    """``{heading: the section's bash blocks joined}`` of one runbook."""
    text = (SEEDS / name).read_text()
    out: dict[str, str] = {}
    for part in re.split(r"^## ", text, flags=re.M)[1:]:
        heading, _, body = part.partition("\n")
        blocks = BLOCK_RE.findall(body)
        if blocks:
            out[heading.strip()] = "\n".join(blocks)
    return out


def as_run(script: str) -> str:
    """The one substitution: ``uv run X`` runs X from this checkout."""
    return script.replace("uv run ", "")


@pytest.fixture
def shell(tmp_path, sshd):
    """Run a runbook chain in bash against a laptop root and the sshd ``bu-scc`` remote."""
    local_root = tmp_path / "laptop"
    remote_root = tmp_path / "cluster"
    local_root.mkdir()
    remote_root.mkdir()
    config = sshd.write_remotes(tmp_path / "remotes.toml", remote_root)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    _exe(bindir / "usr", f'#!/bin/sh\nexec "{sys.executable}" -m usr "$@"\n')
    _exe(bindir / "infer", f'#!/bin/sh\nexec "{sys.executable}" "{INFER_STANDIN}" "$@"\n')
    work = tmp_path / "work"
    work.mkdir()
    env = usr_env(
        {
            "USR_ROOT": str(local_root),
            "LOCAL_USR_ROOT": str(local_root),
            "USR_REMOTES_PATH": str(config),
            "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}",
        }
    )

    def run(script: str) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", as_run(script)],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, f"chain failed:\n{script}\n{proc.stdout}\n{proc.stderr}"
        return proc

    def pull() -> None:
        """Setup (not a runbook step): bring the laptop up to date in-process."""
        from usr.sync import engine

        opts = engine.SyncOptions(remotes_config=str(config))
        engine.pull(engine.resolve_target(local_root, DS, opts), "bu-scc", opts)

    run.pull = pull  # type: ignore[attr-defined]
    run.local_root = local_root  # type: ignore[attr-defined]
    run.remote_root = remote_root  # type: ignore[attr-defined]
    run.work = work  # type: ignore[attr-defined]
    return run


def _exe(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


INFER_STANDIN = Path(__file__).with_name("infer_standin.py")


def dataset(root: Path) -> Dataset:
    ds = Dataset.init(root, DS, source="densegen")
    seqs = ["ACGTACGTAA", "GGGTTTAACC", "TTTTCCCCAA"]
    ds.append_records([{"sequence": s} for s in seqs], bio_type="dna", alphabet="dna_4")
    return ds


def _files(directory: Path) -> dict[str, bytes]:
    return {
        p.relative_to(directory).as_posix(): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
        and not p.relative_to(directory).as_posix().startswith(".usr")
        and not p.name.endswith(".lock")
    }


def test_every_sync_chain_is_covered():
    """The runbooks' sections with bash, each run below or knowingly skipped."""
    covered = {
        ("workflow-map.md", "Bootstrap from remote -> local clone"),
        ("workflow-map.md", "Bootstrap from local -> remote clone"),
        ("workflow-map.md", "Iterative HPC batch loop"),
        ("workflow-map.md", "DenseGen -> USR -> Infer -> USR chained loop"),
        ("workflow-map.md", "Machine-readable sync decisions"),
        ("workflow-map.md", "Pressure-test loop (mock batch + adversarial schemas)"),
        ("workflow-map.md", "Deterministic harness cycle"),
        ("workflow-map.md", "Deterministic sync audit drill"),
        ("sync-audit-loop.md", "Quick loop"),
        ("sync-audit-loop.md", "Decision checks from JSON"),
    }
    found = {(f.name, h) for f in sorted(SEEDS.glob("*.md")) for h in sections(f.name)}
    assert found <= covered, f"new runbook chains to cover: {sorted(found - covered)}"


def test_bootstrap_remote_to_local(shell):
    dataset(shell.remote_root)
    out = shell(sections("workflow-map.md")["Bootstrap from remote -> local clone"]).stdout
    assert "Relation:    local-missing" in out
    assert "PULL audit: TRANSFERRED" in out
    assert out.rstrip().endswith("Status: up-to-date")
    assert _files(shell.local_root / DS) == _files(shell.remote_root / DS)


def test_bootstrap_local_to_remote(shell):
    dataset(shell.local_root)
    out = shell(sections("workflow-map.md")["Bootstrap from local -> remote clone"]).stdout
    assert "Relation:    remote-missing" in out
    assert "PUSH audit: TRANSFERRED" in out
    assert out.rstrip().endswith("Status: up-to-date")
    assert _files(shell.local_root / DS) == _files(shell.remote_root / DS)


def test_iterative_hpc_batch_loop(shell):
    remote = dataset(shell.remote_root)
    chain = sections("workflow-map.md")["Iterative HPC batch loop"]
    shell.pull()
    remote.append_records([{"sequence": "AAAACCCCGG"}], bio_type="dna", alphabet="dna_4")
    out = shell(chain).stdout
    assert "Relation:    remote-ahead" in out and "PULL audit: TRANSFERRED" in out
    assert out.rstrip().endswith("Status: up-to-date")
    assert _files(shell.local_root / DS) == _files(shell.remote_root / DS)


def test_densegen_infer_chained_loop(shell):
    remote = dataset(shell.remote_root)
    shell.pull()
    remote.append_records([{"sequence": "AAAACCCCGG"}], bio_type="dna", alphabet="dna_4")
    out = shell(sections("workflow-map.md")["DenseGen -> USR -> Infer -> USR chained loop"])
    assert "PULL audit: TRANSFERRED" in out.stdout and "PUSH audit: TRANSFERRED" in out.stdout
    derived = sorted(p.name for p in (shell.remote_root / DS / "_derived").rglob("*.parquet"))
    assert derived, "infer's derived outputs reached the cluster"
    assert _files(shell.local_root / DS) == _files(shell.remote_root / DS)


def test_machine_readable_sync_decisions(shell):
    dataset(shell.remote_root)
    shell.pull()
    remote_dir, local_dir = shell.remote_root / DS, shell.local_root / DS
    (remote_dir / "_derived/infer").mkdir(parents=True)
    (remote_dir / "_derived/infer/part-1.parquet").write_bytes(b"remote part")
    (remote_dir / "_registry").mkdir()
    (remote_dir / "_registry/infer.toml").write_text("x = 1\n")
    (local_dir / "_artifacts").mkdir()
    (local_dir / "_artifacts/plot.svg").write_text("<svg/>")
    out = shell(sections("workflow-map.md")["Machine-readable sync decisions"]).stdout
    import json

    assert "Status: CHANGES" in out  # the diff's own summary comes first
    out = out[out.index("\n{") + 1 :]
    decoder = json.JSONDecoder()
    changes, end = decoder.raw_decode(out)
    deltas, _ = decoder.raw_decode(out[end:].lstrip())
    assert changes["derived"] is True and changes["auxiliary"] is True
    assert changes["primary"] is False and changes["events"] is False
    assert deltas == {
        "derived_local_only": [],
        "derived_remote_only": ["_derived/infer/part-1.parquet"],
        "aux_local_only": ["_artifacts/plot.svg"],
        "aux_remote_only": ["_registry/infer.toml"],
    }


def test_sync_audit_loop_quick_loop_and_decision_checks(shell):
    remote = dataset(shell.remote_root)
    shell.pull()
    remote.append_records([{"sequence": "AAAACCCCGG"}], bio_type="dna", alphabet="dna_4")
    append_event(shell.remote_root / DS, "densegen batch", DS, {"batch": 2})
    chain = sections("sync-audit-loop.md")
    out = shell(chain["Quick loop"] + "\n" + chain["Decision checks from JSON"]).stdout
    lines = out.splitlines()
    assert "pull\tTRANSFERRED\ttrue\tfalse\tfalse" in lines
    assert "1\thash\tstrict\ton" in lines
    audit = shell.work / ".usr-sync-audit"
    import json

    diff = json.loads((audit / "diff-before-transfer.json").read_text())
    assert diff["data"]["transfer_state"] == "DIFF-ONLY"
    assert diff["data"]["_snapshots"]["newer_than_local"] == 1  # the event is not recorded yet
    assert diff["data"]["unrecorded"]["remote"] is True
    push = json.loads((audit / "push.json").read_text())
    assert push["data"]["transfer_state"] == "NO-OP"  # nothing changed locally in step 3
    assert not push["changes"]["any"]
    # The last jq (sidecar deltas) printed empty lists: nothing non-primary moved.
    assert '"derived_remote_only": []' in out


@pytest.mark.parametrize(
    "heading",
    [
        "Pressure-test loop (mock batch + adversarial schemas)",
        "Deterministic harness cycle",
        "Deterministic sync audit drill",
    ],
)
def test_harness_chains(shell, heading):
    chain = sections("workflow-map.md")[heading]
    paths = dict.fromkeys(re.findall(r"src/dnadesign/usr/\S+", chain))
    missing = [p for p in paths if not (REPO / p).exists()]
    if missing:
        pytest.skip(f"harness files not in this repository: {', '.join(missing)}")
    shell(f"cd {REPO}\n" + chain)
