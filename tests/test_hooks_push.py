"""Issue 10 "done when": the shipped pre-push hook guarding real pushes over real SSH.

A dataset built through the Python API is bootstrapped to the ``bu-scc`` remote (the shared
sshd fixture) once per module; each test starts from a copy of that pair, breaks one thing
the way it happens in the field, pushes with the real CLI, and checks the refusal, the
message, and that the remote is byte-for-byte unchanged with nothing sent.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO, Result, run_usr
from usr import hooks, ledger, registry, sidecars
from usr.dataset import Dataset
from usr.errors import HookRefused
from usr.store import Store

pytestmark = pytest.mark.ssh

DS = "densegen/my_dataset"


@dataclass
class Pair:
    root: Path  # local datasets root
    remote_base: Path  # the remote's base_dir
    config: Path  # remotes.toml with profile bu-scc
    tmp: Path

    @property
    def local(self) -> Path:
        return self.root / DS

    @property
    def remote(self) -> Path:
        return self.remote_base / DS

    def push(self, *flags: str, env: dict[str, str] | None = None) -> tuple[Result, dict]:
        audit = self.tmp / "push.json"
        audit.unlink(missing_ok=True)
        r = run_usr(
            "--root", str(self.root), "push", DS, "bu-scc", "-y",
            "--remotes-config", str(self.config), "--audit-json-out", str(audit), *flags,
            env=env,
        )  # fmt: skip
        doc = json.loads(audit.read_text()) if audit.exists() else {}
        return r, doc


def _snapshot_remote(remote: Path) -> dict[str, object]:
    """Everything a push could change on the remote: its head, its working files, and the
    objects and chunks in its store (anything sent would add some)."""
    files: dict[str, bytes] = {}
    stored: set[str] = set()
    for p in sorted(remote.rglob("*")):
        rel = p.relative_to(remote).as_posix()
        if not p.is_file():
            continue
        if rel.startswith(".usr/"):
            if rel.startswith((".usr/objects/", ".usr/chunks/")):
                stored.add(rel)
            continue
        if not rel.startswith(".usr"):
            files[rel] = p.read_bytes()
    return {"head": Store.open(remote, create=False).head(), "files": files, "stored": stored}


@pytest.fixture(scope="module")
def template(sshd, tmp_path_factory: pytest.TempPathFactory) -> Pair:
    """Local dataset (records + an attached overlay) bootstrapped to bu-scc, hooks installed
    root-wide through the real CLI."""
    base = tmp_path_factory.mktemp("hookpush")
    root = base / "local"
    remote_base = base / "remote"
    remote_base.mkdir()
    registry.register(root, "infer", [("infer__ll", "float64")])
    d = Dataset.init(root, DS, source="hook test")
    d.append_records([{"sequence": s} for s in ("ACGT", "GGCC", "TTAA", "CCGG")], bio_type="dna")
    ids = d.to_table(overlay=False).column("id").to_pylist()
    d.attach(pa.table({"id": ids, "ll": [0.1, 0.2, 0.3, 0.4]}), namespace="infer")
    config = sshd.write_remotes(base / "remotes.toml", remote_base)
    r = run_usr("--root", str(root), "hooks", "install", "--root-wide")
    assert r.returncode == 0, r.stderr
    pair = Pair(root, remote_base, config, base)
    r, doc = pair.push()
    assert r.returncode == 0, r.stderr
    assert doc["data"]["hooks"]["pre-push"]["status"] == "passed"
    return pair


@pytest.fixture
def pair(template: Pair, tmp_path: Path) -> Pair:
    """A private copy of the bootstrapped local/remote pair (stores, refs and all)."""
    shutil.copytree(template.root, tmp_path / "local", symlinks=True)
    shutil.copytree(template.remote_base, tmp_path / "remote", symlinks=True)
    config = tmp_path / "remotes.toml"
    text = template.config.read_text().replace(str(template.remote_base), str(tmp_path / "remote"))
    config.write_text(text)
    config.chmod(0o600)
    return Pair(tmp_path / "local", tmp_path / "remote", config, tmp_path)


def _ids(p: Pair) -> list[str]:
    return Dataset.open(p.root, DS).to_table(overlay=False).column("id").to_pylist()


def _foreign_part(p: Pair, namespace: str, table: pa.Table, contract: str | None = None) -> str:
    """A part written by a tool through the Python API (so it is in the ledger): only the
    structural check under test can fail."""
    ns = registry.Registry.load(p.root).namespaces.get(namespace)
    stamps = {
        "usr:namespace": namespace,
        "usr:key": "id",
        "usr:contract_hash": contract or (ns.contract_hash() if ns else "f" * 64),
    }
    rel = f"_derived/{namespace}/part-foreign.parquet"
    (p.local / rel).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.replace_schema_metadata(stamps), p.local / rel)
    ledger.record(p.local, [rel], via="api")
    return rel


def _assert_refused(p: Pair, before: dict, result: Result, doc: dict, *needles: str) -> None:
    assert result.returncode == 10, (result.stdout, result.stderr)
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("usr: error: pre-push hook refused (exit 1): pre-push: ")
    for needle in needles:
        assert needle in result.stderr, result.stderr
    assert _snapshot_remote(p.remote) == before, "the remote changed"
    assert doc["data"]["transfer_state"] == "FAILED"
    assert doc["data"]["hooks"]["pre-push"]["status"] == "refused"
    assert doc["data"]["bytes_moved"]["sent"] < 64 * 1024  # requests only, no objects


def test_clean_push_passes_the_hook_and_runs_post_push(pair: Pair) -> None:
    seen = pair.tmp / "post-push.txt"
    hook = pair.root / ".usr-hooks" / "post-push"
    hook.write_text(f'#!/bin/sh\n{{ echo "$1"; cat; }} > {seen}\n')
    hook.chmod(0o755)
    before_head = Store.open(pair.remote, create=False).head()
    Dataset.open(pair.root, DS).append_event("note", {"why": "new state"})
    r, doc = pair.push()
    assert r.returncode == 0, r.stderr
    assert doc["data"]["hooks"]["pre-push"]["status"] == "passed"
    local_head = Store.open(pair.local, create=False).head()
    assert Store.open(pair.remote, create=False).head() == local_head
    assert seen.read_text().splitlines() == [
        "bu-scc",
        f"refs/heads/main {local_head} refs/heads/main {before_head}",
    ]
    # The ledger travelled with the push: verified here, verified there too (the remote's
    # root never registered "infer"; the dataset's frozen registry copy covers it).
    assert not (pair.remote_base / "registry.toml").exists()
    state = sidecars.open_state(pair.remote, "HEAD")
    report = sidecars.check_state(state, DS, pair.remote_base)
    assert report.problems == [] and len(report.checked) == 3  # part, registry copy, ledger


def test_tampered_overlay_part_is_refused(pair: Pair) -> None:
    before = _snapshot_remote(pair.remote)
    part = next((pair.local / "_derived" / "infer").glob("*.parquet"))
    table = pq.read_table(part)
    pq.write_table(table.set_column(1, "infer__ll", pa.array([9.0] * table.num_rows)), part)
    r, doc = pair.push()
    _assert_refused(pair, before, r, doc, "\tledger\t", "other bytes were recorded")


def test_unvouched_auxiliary_file_is_refused(pair: Pair) -> None:
    before = _snapshot_remote(pair.remote)
    (pair.local / "_artifacts").mkdir()
    (pair.local / "_artifacts" / "plot.svg").write_text("<svg/>")
    r, doc = pair.push()
    _assert_refused(pair, before, r, doc, "_artifacts/plot.svg\tledger\t", "never recorded")


def test_unregistered_namespace_is_refused(pair: Pair) -> None:
    before = _snapshot_remote(pair.remote)
    rel = _foreign_part(pair, "ghost", pa.table({"id": _ids(pair), "ghost__v": [1.0] * 4}))
    r, doc = pair.push()
    _assert_refused(pair, before, r, doc, f"{rel}\tnamespace\tghost registered")


def test_stale_contract_hash_is_refused(pair: Pair) -> None:
    before = _snapshot_remote(pair.remote)
    table = pa.table({"id": _ids(pair), "infer__ll": [1.0] * 4})
    rel = _foreign_part(pair, "infer", table, contract="0" * 64)
    r, doc = pair.push()
    _assert_refused(pair, before, r, doc, f"{rel}\tcontract-hash\t")


def test_duplicate_join_key_is_refused(pair: Pair) -> None:
    before = _snapshot_remote(pair.remote)
    ids = _ids(pair)
    rel = _foreign_part(pair, "infer", pa.table({"id": [ids[0], ids[0]], "infer__ll": [1.0, 2.0]}))
    r, doc = pair.push()
    _assert_refused(pair, before, r, doc, f"{rel}\tjoin-key\tunique id")


def test_rewritten_events_log_is_refused(pair: Pair) -> None:
    before = _snapshot_remote(pair.remote)
    log = pair.local / ".events.log"
    lines = log.read_text().splitlines(keepends=True)
    first = json.loads(lines[0])
    first["actor"] = "someone else"
    log.write_text(json.dumps(first) + "\n" + "".join(lines[1:]))
    r, doc = pair.push()
    # The sync engine's own append-only invariant refuses first (exit 8, before the hook);
    # the hook's check refuses the same recorded state too.
    assert r.returncode == 8, r.stderr
    assert "rewrites .events.log instead of appending to it" in r.stderr
    assert _snapshot_remote(pair.remote) == before
    assert doc["data"]["transfer_state"] == "FAILED"
    assert doc["data"]["bytes_moved"]["sent"] < 64 * 1024  # requests only, no objects
    v = run_usr("--root", str(pair.root), "plumbing", "verify-sidecars", DS, "HEAD")
    assert v.returncode == 5
    assert v.stdout.startswith(".events.log\tevents-append-only\t")
    # The installed hook, given that state as the one to push, refuses it by itself.
    head = Store.open(pair.local, create=False).head()
    ctx = hooks.context_for(pair.local, pair.root, DS)
    env = {"PYTHONPATH": str(REPO)}
    with pytest.raises(HookRefused, match=f"{DS} {head} has unverified sidecars"):
        hooks.run_pre_push(ctx, "bu-scc", "/r", head, before["head"], {**env, **hooks.verify_env()})


def test_reduced_sidecar_fidelity_is_refused_unless_allowed(pair: Pair) -> None:
    before = _snapshot_remote(pair.remote)
    Dataset.open(pair.root, DS).append_event("note", {"why": "new state"})
    r, doc = pair.push("--no-verify-sidecars")
    _assert_refused(pair, before, r, doc, "reduced sidecar fidelity (--no-verify-sidecars)")
    assert "USR_ALLOW_UNVERIFIED_SIDECARS=1" in r.stderr
    r, doc = pair.push("--no-verify-sidecars", env={"USR_ALLOW_UNVERIFIED_SIDECARS": "1"})
    assert r.returncode == 0, r.stderr
    assert "reduced sidecar fidelity accepted" in r.stderr
    assert doc["data"]["hooks"]["pre-push"]["status"] == "passed"


def test_no_verify_bypasses_and_is_audited(pair: Pair) -> None:
    (pair.local / "_artifacts").mkdir()
    (pair.local / "_artifacts" / "plot.svg").write_text("<svg/>")
    r, doc = pair.push("--no-verify")
    assert r.returncode == 0, r.stderr
    assert doc["data"]["hooks"]["pre-push"] == {"status": "skipped"}
    assert (pair.remote / "_artifacts" / "plot.svg").read_text() == "<svg/>"


def test_not_executable_hook_is_a_clear_error(pair: Pair) -> None:
    before = _snapshot_remote(pair.remote)
    hook = pair.root / ".usr-hooks" / "pre-push"
    hook.chmod(0o644)
    Dataset.open(pair.root, DS).append_event("note", {"why": "new state"})
    r, doc = pair.push()
    assert r.returncode == 10
    assert f"pre-push hook {hook} is not executable (chmod +x {hook}" in r.stderr
    assert _snapshot_remote(pair.remote) == before
    assert doc["data"]["hooks"]["pre-push"]["status"] == "refused"


def test_hanging_hook_is_killed_and_refuses(pair: Pair) -> None:
    """A hook blocked reading a FIFO nobody writes, with a short timeout (no sleeping)."""
    before = _snapshot_remote(pair.remote)
    fifo = pair.tmp / "never-written"
    os.mkfifo(fifo)
    hook = pair.local / ".usr" / "hooks" / "pre-push"
    hook.parent.mkdir(parents=True, exist_ok=True)
    hook.write_text(f'#!/bin/sh\ncat "{fifo}"\n')
    hook.chmod(0o755)
    Dataset.open(pair.root, DS).append_event("note", {"why": "new state"})
    r, doc = pair.push(env={"USR_HOOK_TIMEOUT": "0.5"})
    assert r.returncode == 10
    assert f"pre-push hook {hook} did not finish within 0.5s" in r.stderr
    assert "its process group was killed (fix the hook, or raise USR_HOOK_TIMEOUT)" in r.stderr
    assert _snapshot_remote(pair.remote) == before
    assert doc["data"]["hooks"]["pre-push"]["status"] == "refused"
    assert doc["data"]["bytes_moved"]["sent"] < 64 * 1024
