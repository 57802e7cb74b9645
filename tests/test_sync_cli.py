"""usr diff/pull/push through the real CLI: prompts, text output, audit files, target modes,
and transfers killed midway (``USR_FAULT_POINT``) then rerun to completion.

Over sshd (profile ``bu-scc``) and a ``local`` remote, like test_sync_scenarios.py.
"""

from __future__ import annotations

import json

import pytest
import tomli_w

from tests.conftest import run_usr
from tests.test_sync_scenarios import DS, Env, files_of, head, make_dataset, make_env
from usr.errors import TransportError
from usr.sync import engine


@pytest.fixture(params=["local", "ssh"])
def env(request, tmp_path) -> Env:
    """Both remote kinds: for the transfer scenarios (interrupted, rerun)."""
    return make_env(request.param, tmp_path, request)


@pytest.fixture
def local_env(tmp_path) -> Env:
    """CLI behaviour that does not depend on the transport (prompts, output, targets)."""
    return make_env("local", tmp_path)


def cli(e, *args, extra_env=None):
    environment = {"USR_REMOTES_PATH": str(e.config), **(extra_env or {})}
    return run_usr("--root", str(e.local_root), *args, env=environment)


def test_no_tty_without_yes_refuses_and_writes_a_failed_audit(local_env, tmp_path):
    make_dataset(local_env.remote_root)
    audit = tmp_path / "pull.json"
    r = cli(local_env, "pull", DS, "bu-scc", "--audit-json-out", str(audit))
    assert r.returncode == 2
    assert "stdin is not a terminal" in r.stderr and "-y" in r.stderr
    assert not (local_env.local_dir / "records.parquet").exists()
    doc = json.loads(audit.read_text())
    assert doc["data"]["transfer_state"] == "FAILED"
    assert doc["data"]["error"]["kind"] == "usage"
    assert doc["data"]["remote"] == "bu-scc"
    assert doc["data"]["started_at"] and doc["data"]["finished_at"]

    r = cli(local_env, "pull", DS, "bu-scc", "-y", "--audit-json-out", str(audit))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "PULL audit: TRANSFERRED"
    assert json.loads(audit.read_text())["data"]["transfer_state"] == "TRANSFERRED"
    # Nothing left to overwrite: a NO-OP needs no -y.
    r = cli(local_env, "pull", DS, "bu-scc")
    assert r.returncode == 0 and r.stdout.startswith("PULL audit: NO-OP")


def test_diff_text_and_json(local_env):
    make_dataset(local_env.remote_root)
    r = cli(local_env, "diff", DS, "bu-scc")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[-1] == "Status: CHANGES"
    for label in ("Primary:", "meta.md:", ".events.log:", "_snapshots:", "_derived:"):
        assert any(line.startswith(label) for line in lines), label
    assert "Relation:    local-missing" in r.stdout
    r = cli(local_env, "diff", DS, "bu-scc", "--format", "json")
    doc = json.loads(r.stdout)
    assert doc["usr_output_version"] == 1
    assert doc["data"]["transfer_state"] == "DIFF-ONLY"
    assert doc["changes"] == doc["data"]["changes"] and doc["changes"]["primary"] is True
    assert r.stderr == ""
    # Streamed to stdout as to the audit file: the same bytes, the indented document.
    out = local_env.local_root.parent / "diff.json"
    r = cli(local_env, "diff", DS, "bu-scc", "--format", "json", "--audit-json-out", str(out))
    assert r.stdout == out.read_text()
    assert r.stdout == json.dumps(json.loads(r.stdout), indent=2, sort_keys=True) + "\n"


def test_refusals_exit_codes_and_messages(local_env):
    remote = make_dataset(local_env.remote_root)
    assert cli(local_env, "pull", DS, "bu-scc", "-y").returncode == 0
    remote.append_event("batch", {"n": 1})
    r = cli(local_env, "push", DS, "bu-scc", "-y")
    assert r.returncode == 8
    assert "remote has newer states; pull first" in r.stderr


def test_dataset_directory_path_outside_root(local_env, tmp_path):
    make_dataset(local_env.remote_root)
    (local_env.local_root / "registry.toml").write_text("")
    engine.pull(local_env.target(), "bu-scc", local_env.opts())
    r = run_usr(
        "diff",
        str(local_env.local_dir),
        "bu-scc",
        env={"USR_REMOTES_PATH": str(local_env.config)},
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert f"Dataset:     {DS}" in r.stdout
    assert r.stdout.splitlines()[-1] == "Status: up-to-date"


def test_strict_bootstrap_id(local_env):
    Dataset = pytest.importorskip("usr.dataset").Dataset
    Dataset.init(local_env.remote_root, "flat_ds", source="t")
    r = run_usr(
        "--root",
        str(local_env.local_root),
        "pull",
        "flat_ds",
        "bu-scc",
        "-y",
        env={"USR_REMOTES_PATH": str(local_env.config), "USR_SYNC_STRICT_BOOTSTRAP_ID": "1"},
    )
    assert r.returncode == 2 and "NAMESPACE/NAME" in r.stderr
    assert not (local_env.local_root / "flat_ds" / "records.parquet").exists()


def test_interrupted_pull_then_rerun_completes(env):
    remote = make_dataset(env.remote_root)
    assert cli(env, "pull", DS, "bu-scc", "-y").returncode == 0
    remote.append_records([{"sequence": "AAAACCCCGG"}], bio_type="dna", alphabet="dna_4")
    r = cli(env, "pull", DS, "bu-scc", "-y", extra_env={"USR_FAULT_POINT": "checkout.mid-stage"})
    assert r.returncode == -9  # SIGKILL mid-checkout
    r = cli(env, "pull", DS, "bu-scc", "-y")
    assert r.returncode == 0, r.stderr
    assert files_of(env.local_dir) == files_of(env.remote_dir)
    assert head(env.local_dir) == head(env.remote_dir)


def test_interrupted_push_then_rerun_completes(env):
    make_dataset(env.local_root)
    engine.push(env.target(), "bu-scc", env.opts())
    from usr.dataset import Dataset

    Dataset.open(env.local_root, DS).append_records(
        [{"sequence": "AAAACCCCGG"}], bio_type="dna", alphabet="dna_4"
    )
    # The remote usr dies after writing its checkout journal (kill -9 on the cluster).
    import tomllib

    table = tomllib.loads(env.config.read_text())["remotes"]["bu-scc"]
    base = table.get("remote_usr", "usr")
    faulty = dict(table)
    faulty["remote_usr"] = "env USR_FAULT_POINT=checkout.journal-written " + (
        base if base != "usr" else "python3 -m usr"
    )
    if env.kind == "local":
        import sys

        faulty["remote_usr"] = (
            f"env USR_FAULT_POINT=checkout.journal-written {sys.executable} -m usr"
        )
    env.config.write_text(tomli_w.dumps({"remotes": {"bu-scc": faulty}}))
    with pytest.raises(TransportError):
        engine.push(env.target(), "bu-scc", env.opts())
    env.config.write_text(tomli_w.dumps({"remotes": {"bu-scc": table}}))
    doc = engine.push(env.target(), "bu-scc", env.opts())
    assert doc["data"]["transfer_state"] in ("NO-OP", "TRANSFERRED")
    assert files_of(env.remote_dir) == files_of(env.local_dir)
    assert head(env.remote_dir) == head(env.local_dir)


def test_status_and_log_against_the_remote(local_env):
    remote = make_dataset(local_env.remote_root)
    engine.pull(local_env.target(), "bu-scc", local_env.opts())
    remote.append_event("batch", {"n": 1})
    remote.record_state("batch")
    r = cli(local_env, "status", DS)
    assert r.returncode == 0, r.stderr
    assert "bu-scc (last seen" in r.stdout and "up-to-date" in r.stdout
    r = cli(local_env, "status", DS, "bu-scc", "--format", "json")
    assert r.returncode == 0, r.stderr
    (entry,) = json.loads(r.stdout)["data"]["remotes"]
    assert entry["live"] is True and entry["relation"] == "remote-ahead"
    assert (entry["ahead"], entry["behind"]) == (0, 1)
    r = cli(local_env, "log", DS, "--remote", "bu-scc", "--oneline")
    assert r.returncode == 0, r.stderr
    assert " batch (" in r.stdout.splitlines()[0]
    r = cli(local_env, "log", DS, "--remote", "nowhere")
    assert r.returncode == 4 and "usr diff" in r.stderr


def test_reduced_fidelity_is_named_in_the_audit(local_env, tmp_path):
    make_dataset(local_env.remote_root)
    out = tmp_path / "dry.json"
    r = cli(
        local_env,
        "pull",
        DS,
        "bu-scc",
        "--dry-run",
        "--verify",
        "parquet",
        "--no-verify-sidecars",
        "--no-verify-derived-hashes",
        "--audit-json-out",
        str(out),
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("PULL audit: DRY-RUN")
    assert "would bootstrap" in r.stdout
    assert not local_env.local_dir.exists()
    d = json.loads(out.read_text())["data"]
    assert d["verify"] == {"primary": "parquet", "sidecars": "off", "content_hashes": "off"}
    r = cli(local_env, "pull", DS, "bu-scc", "-y", "--primary-only", "--audit-json-out", str(out))
    assert r.returncode == 2 and "--primary-only would leave out changed sections" in r.stderr
    d = json.loads(out.read_text())["data"]
    assert d["transfer_state"] == "FAILED"
    assert d["verify"]["sidecars"] == "off" and d["options"]["primary_only"] is True


def test_terminal_prompt_before_overwriting(local_env):
    """On a terminal pull asks first; answering no changes nothing."""
    import os
    import pty
    import subprocess
    import sys

    from tests.conftest import usr_env

    make_dataset(local_env.remote_root)
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "usr", "--root", str(local_env.local_root), "pull", DS, "bu-scc"],
        stdin=slave,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=usr_env({"USR_REMOTES_PATH": str(local_env.config)}),
    )
    os.close(slave)
    os.write(master, b"n\n")
    out, err = proc.communicate(timeout=120)
    os.close(master)
    assert b"Proceed with pull?" in err
    assert proc.returncode == 2 and b"cancelled; nothing was changed" in err
    assert not (local_env.local_dir / "records.parquet").exists()


def test_lock_timeout_names_the_holder(local_env):
    from usr.locks import dataset_lock

    make_dataset(local_env.local_root)
    with dataset_lock(local_env.local_dir, what="batch writer"):
        r = cli(local_env, "push", DS, "bu-scc", "-y", "--lock-timeout", "0.2")
    assert r.returncode == 9
    assert "batch writer" in r.stderr


def test_a_copy_without_history_adopts_the_identical_remote_history(local_env):
    """A dataset copied here by rsync (files, no .usr/) joins the remote history."""
    import shutil

    make_dataset(local_env.remote_root)
    shutil.copytree(
        local_env.remote_dir,
        local_env.local_dir,
        ignore=shutil.ignore_patterns(".usr", "*.lock"),
    )
    doc = engine.pull(local_env.target(), "bu-scc", local_env.opts())
    assert doc["data"]["transfer_state"] == "NO-OP"
    assert any("adopted the remote history" in n for n in doc["data"]["notes"])
    assert head(local_env.local_dir) == head(local_env.remote_dir)
