"""Every sync command chain in ../shared/seeds/ runs as written against this project.

Each ```bash block of the runbooks is run by bash exactly as printed, with one substitution:
``uv run `` is dropped and ``usr`` on PATH is this checkout's entry point (``python -m
usr``). The datasets root and remotes come from the environment (``USR_ROOT``,
``LOCAL_USR_ROOT``, ``USR_REMOTES_PATH``), and ``bu-scc`` is the real sshd fixture. The jq
answers are checked against what the runbooks say they mean.

``infer`` (another tool in the chained DenseGen/Infer loop) is stood in for by a small
script that writes derived outputs through the dataset API, as the real tool would. The
chains that run the harness and the drill name ``src/dnadesign/usr/scripts/`` and
``.../tests/``, the runbooks' repository's paths; here they are ``scripts/`` and ``tests/``
(the only other substitution), and those chains run side by side, each with its own /tmp.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import tomli_w

from tests.conftest import REPO, usr_env
from usr.dataset import Dataset
from usr.events import append_event

# The runbooks live beside the project (../shared/seeds/); USR_SEEDS_DIR points elsewhere.
SEEDS = Path(os.environ.get("USR_SEEDS_DIR") or REPO.parent / "shared" / "seeds")
pytestmark = pytest.mark.skipif(
    not SEEDS.is_dir(), reason=f"operator runbooks not found at {SEEDS} (set USR_SEEDS_DIR)"
)
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


#: Where the runbooks' repository keeps usr's harness scripts and tests, and where this one
#: does (the workflow map is written for the larger repository usr came from).
HARNESS_PATHS = {"src/dnadesign/usr/scripts/": "scripts/", "src/dnadesign/usr/tests/": "tests/"}


def as_run(script: str) -> str:
    """The substitutions: ``uv run X`` runs X from this checkout, and the harness paths of
    the runbooks' repository are this repository's ``scripts/`` and ``tests/``."""
    script = script.replace("uv run ", "")
    for theirs, ours in HARNESS_PATHS.items():
        script = script.replace(theirs, ours)
    return script


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


def _ruff() -> str:
    beside = Path(sys.executable).with_name("ruff")
    return str(beside) if beside.exists() else "ruff"


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


HARNESS_CHAINS = [
    "Pressure-test loop (mock batch + adversarial schemas)",
    "Deterministic harness cycle",
    "Deterministic sync audit drill",
]


@pytest.fixture(scope="module")
def harness_runs(request, tmp_path_factory) -> dict[str, tuple[str, Path, str]]:
    """Run the selected harness/drill chains side by side: ``{heading: (chain, scratch,
    stdout)}``. They build their own local remote and roots, so they need no sshd.

    The chains write fixed paths under /tmp (reports, the drill's work dir); each chain's
    /tmp is its own scratch directory (and $TMPDIR, where the harness makes its work dir), so
    the chains can run at the same time, and beside other runs of this suite on the machine.
    """
    wanted = [h for h in HARNESS_CHAINS if any(h in item.nodeid for item in request.session.items)]
    base = tmp_path_factory.mktemp("harness-chains")
    bindir = base / "bin"
    bindir.mkdir()
    _exe(bindir / "usr", f'#!/bin/sh\nexec "{sys.executable}" -m usr "$@"\n')
    _exe(bindir / "python", f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    _exe(bindir / "pytest", f'#!/bin/sh\nexec "{sys.executable}" -m pytest "$@"\n')

    def run(index: int, heading: str) -> tuple[str, Path, str]:
        scratch = base / f"tmp{index}"
        scratch.mkdir()
        chain = as_run(sections("workflow-map.md")[heading]).replace("/tmp/", f"{scratch}/")
        env = usr_env(
            {
                "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}",
                "TMPDIR": str(scratch),
                # The harness's own `uv run X` commands, substituted the same way.
                "USR_HARNESS_USR": "usr",
                "USR_HARNESS_PYTHON": "python",
                "USR_HARNESS_PYTEST": "pytest",
                "USR_HARNESS_RUFF": _ruff(),
            }
        )
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", f"cd {REPO}\n{chain}"],
            env=env,
            capture_output=True,
            text=True,
            timeout=280,
        )
        assert proc.returncode == 0, f"chain failed:\n{chain}\n{proc.stdout}\n{proc.stderr}"
        return chain, scratch, proc.stdout

    with ThreadPoolExecutor(max_workers=len(wanted) or 1) as pool:
        futures = {h: pool.submit(run, i, h) for i, h in enumerate(wanted)}
        return {h: f.result() for h, f in futures.items()}


@pytest.mark.parametrize("heading", HARNESS_CHAINS)
def test_harness_chains(harness_runs, heading):
    """The harness and drill chains, verbatim but for ``uv run``, the harness paths and
    the scratch directory; their reports say every step passed."""
    chain, scratch, out = harness_runs[heading]
    assert "src/dnadesign" not in chain
    named = dict.fromkeys(re.findall(r"\b(?:scripts|tests)/[\w./-]+\.(?:sh|py)\b", chain))
    assert named and all((REPO / p).is_file() for p in named), named
    if "run_usr_harness_cycle.sh" in chain:
        assert "harness: passed" in out
        harness = json.loads((scratch / "usr-harness-report.json").read_text())
        assert harness["status"] == "passed" and harness["exit_code"] == 0
        steps = {step["name"]: step["status"] for step in harness["steps"]}
        assert steps["run:cycle-1:push"] == "passed" and steps["verify:diff-up-to-date"] == "passed"
        drill_ran = "USR_HARNESS_RUN_SYNC_AUDIT_DRILL=1" in chain
        assert steps["run:sync-audit-drill"] == ("passed" if drill_ran else "skipped")
    if "run_usr_sync_audit_drill" in chain:
        drill = json.loads((scratch / "usr-sync-audit-drill-report.json").read_text())
        assert drill["ok"] is True and drill["final_up_to_date"] is True, drill["steps"]
    if re.search(r"^pytest ", chain, re.M):  # the suites the runbook re-runs directly
        assert re.search(r"^\d+ passed", out, re.M), out[-2000:]


def test_sync_audit_loop_against_an_object_store(s3server, tmp_path, monkeypatch):
    """The seeds' daily loop (diff, pull -y, push -y with --audit-json-out, then their jq
    decision checks) runs as written against a remote named ``bu-scc`` that is an S3
    bucket (the real SeaweedFS fixture) instead of the cluster's sshd. The cluster's side
    is a second root that pushes its batch to the bucket, as a batch job there would."""
    from usr.sync import engine

    laptop, cluster, work = tmp_path / "laptop", tmp_path / "cluster", tmp_path / "work"
    for d in (laptop, cluster, work):
        d.mkdir()
    config = tmp_path / "remotes.toml"
    table = s3server.profile(prefix="lab/datasets")
    config.write_text(tomli_w.dumps({"remotes": {"bu-scc": table}}))
    config.chmod(0o600)
    env = usr_env({"USR_ROOT": str(laptop), "USR_REMOTES_PATH": str(config), **s3server.env()})
    for key, value in s3server.env().items():  # the in-process setup pushes read them
        monkeypatch.setenv(key, value)
    opts = engine.SyncOptions(remotes_config=str(config))

    def sync(root: Path, verb: str) -> None:
        getattr(engine, verb)(engine.resolve_target(root, DS, opts), "bu-scc", opts)

    remote = dataset(cluster)
    sync(cluster, "push")
    sync(laptop, "pull")
    remote.append_records([{"sequence": "AAAACCCCGG"}], bio_type="dna", alphabet="dna_4")
    sync(cluster, "push")
    chain = sections("sync-audit-loop.md")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    _exe(bindir / "usr", f'#!/bin/sh\nexec "{sys.executable}" -m usr "$@"\n')
    env["PATH"] = f"{bindir}{os.pathsep}{os.environ['PATH']}"
    proc = subprocess.run(
        [
            "bash",
            "-euo",
            "pipefail",
            "-c",
            as_run(chain["Quick loop"] + "\n" + chain["Decision checks from JSON"]),
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    assert "pull\tTRANSFERRED\ttrue\tfalse\tfalse" in proc.stdout.splitlines()
    audit = work / ".usr-sync-audit"
    diff = json.loads((audit / "diff-before-transfer.json").read_text())
    assert diff["data"]["transfer_state"] == "DIFF-ONLY"
    assert diff["data"]["relation"] == "remote-ahead"
    push = json.loads((audit / "push.json").read_text())
    assert push["data"]["transfer_state"] == "NO-OP"
    assert (laptop / DS / "records.parquet").read_bytes() == (
        cluster / DS / "records.parquet"
    ).read_bytes()
