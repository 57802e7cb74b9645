"""The audit document is a contract: for the same states it is the same bytes.

Both sides' states are built here with fixed contents and fixed commit times, so their ids
are the same on every run; a sequence of diff / dry run / push / pull / refusal then writes
audit documents that are compared, byte for byte, with the ones recorded in
``tests/fixtures/audit_golden/``. Only what a clock decides is masked (start and end times,
durations). A restructuring of the sync engine must leave these bytes as they are;
a deliberate change to the audit regenerates them with ``USR_REGEN_AUDIT_GOLDEN=1``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tomli_w

from usr.errors import ConflictError
from usr.store import Store
from usr.sync import engine
from usr.sync.engine import SyncOptions

GOLDEN = Path(__file__).parent / "fixtures" / "audit_golden"
DS = "densegen/golden"
WHEN = 1_767_225_600  # 2026-01-01T00:00:00Z
ACTOR = "golden golden@example.invalid"
MASKED = ("started_at", "finished_at", "duration", "timestamp_utc")


def _records(n: int) -> bytes:
    table = pa.table(
        {
            "id": [f"id{i:04d}" for i in range(n)],
            "bio_type": ["dna"] * n,
            "sequence": ["ACGT" * (i % 7 + 1) for i in range(n)],
            "alphabet": ["dna_4"] * n,
            "length": pa.array([4 * (i % 7 + 1) for i in range(n)], pa.int32()),
            "source": ["golden"] * n,
            "created_at": pa.array([WHEN * 1_000_000] * n, pa.timestamp("us", tz="UTC")),
        }
    )
    out = io.BytesIO()
    pq.write_table(table, out)
    return out.getvalue()


def _event(i: int) -> bytes:
    line = {
        "event_version": 1,
        "timestamp_utc": "2026-01-01T00:00:00Z",
        "action": f"step{i}",
        "dataset": DS,
        "args": {},
        "actor": "golden",
    }
    return (json.dumps(line, sort_keys=True) + "\n").encode()


def _write(directory: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def _record(directory: Path, action: str, when: int) -> str:
    """Commit the working files with a fixed time and actor (so the id is fixed)."""
    store = Store.open(directory, create=True)
    tree = store.working_tree()
    head = store.head()
    commit = store.commit_tree(tree, [head] if head else [], action, actor=ACTOR, when=when)
    store.update_ref("refs/heads/main", commit, head)
    return commit


def _mask(text: str) -> str:
    for key in MASKED:
        text = re.sub(rf'("{key}": )("[^"]*"|[0-9.e-]+)', r'\1"*"', text)
    return text


class Golden:
    def __init__(self, tmp_path: Path) -> None:
        self.local_root = tmp_path / "laptop"
        self.remote_root = tmp_path / "cluster"
        for r in (self.local_root, self.remote_root):
            r.mkdir()
            (r / "registry.toml").write_text("")
        self.config = tmp_path / "remotes.toml"
        table = {"type": "local", "base_dir": str(self.remote_root)}
        self.config.write_text(tomli_w.dumps({"remotes": {"bu-scc": table}}))
        self.config.chmod(0o600)
        self.out = tmp_path / "audit.json"
        self.docs: dict[str, str] = {}

    def opts(self, **kw) -> SyncOptions:
        return SyncOptions(remotes_config=str(self.config), actor=ACTOR, **kw)

    def run(self, name: str, verb: str, **kw) -> None:
        fn = getattr(engine, verb)
        target = engine.resolve_target(self.local_root, DS, self.opts(**kw))
        # A refusal's audit is written too, and is part of the contract.
        with contextlib.suppress(ConflictError):
            fn(target, "bu-scc", self.opts(**kw), audit_json_out=self.out)
        self.docs[name] = _mask(self.out.read_text())


def _scenario(tmp_path: Path) -> dict[str, str]:
    """``tmp_path`` must have the same length on every run: the server names its root in
    its hello, so the bytes a session moves depend on it."""
    g = Golden(tmp_path)
    local = g.local_root / DS
    remote = g.remote_root / DS
    base = {
        "records.parquet": _records(40),
        "meta.md": b"# golden\n",
        ".events.log": _event(0),
        "_derived/infer/part-0.txt": b"derived zero\n",
        "_artifacts/notes.txt": b"artifact\n",
        "_snapshots/records-0.parquet": _records(10),
    }
    _write(local, base)
    _record(local, "import", WHEN)
    g.run("01-diff-remote-missing", "diff")
    g.run("02-push-dry-run-bootstrap", "push", dry_run=True)
    g.run("03-push-bootstrap", "push")
    g.run("04-diff-equal", "diff")
    g.run("05-push-noop", "push")
    _write(
        local,
        {
            ".events.log": _event(0) + _event(1),
            "_derived/infer/part-1.txt": b"derived one\n",
            "meta.md": b"# golden\n\nannotated\n",
        },
    )
    _record(local, "attach infer", WHEN + 60)
    g.run("06-diff-local-ahead", "diff")
    g.run("07-push-fast-forward", "push")
    _write(
        remote,
        {
            "records.parquet": _records(55),
            ".events.log": _event(0) + _event(1) + _event(2),
            "_auxiliary/run.log": b"batch\n",
        },
    )
    _record(remote, "batch", WHEN + 120)
    g.run("08-diff-remote-ahead", "diff")
    g.run("09-pull-dry-run", "pull", dry_run=True)
    g.run("10-push-refused-remote-ahead", "push")
    g.run("11-pull-fast-forward", "pull")
    g.run("12-pull-noop", "pull")
    _write(local, {"_artifacts/local.txt": b"local only\n"})
    _record(local, "local note", WHEN + 180)
    _write(remote, {"_artifacts/remote.txt": b"remote only\n"})
    _record(remote, "remote note", WHEN + 240)
    g.run("13-diff-diverged", "diff")
    g.run("14-pull-refused-diverged", "pull")
    g.run("15-push-primary-only-dry-run", "push", dry_run=True, primary_only=True)
    return g.docs


@pytest.fixture
def fixed_dir() -> Iterator[Path]:
    """A scratch directory whose path has the same length on every run and machine."""
    path = Path(tempfile.mkdtemp(prefix="usr-golden-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_audit_documents_are_byte_identical_for_the_same_states(fixed_dir: Path) -> None:
    tmp_path = fixed_dir
    docs = _scenario(tmp_path)
    if os.environ.get("USR_REGEN_AUDIT_GOLDEN"):
        GOLDEN.mkdir(parents=True, exist_ok=True)
        for name, text in docs.items():
            (GOLDEN / f"{name}.json").write_text(text.replace(str(tmp_path), "TMP"))
    recorded = sorted(p.stem for p in GOLDEN.glob("*.json"))
    assert recorded == sorted(docs), "the golden set and the scenario name the same steps"
    for name, text in docs.items():
        want = (GOLDEN / f"{name}.json").read_text()
        assert text.replace(str(tmp_path), "TMP") == want, f"audit {name} changed"


def test_the_golden_documents_mask_only_clock_fields() -> None:
    """A mask that hid more than the clock would make the comparison above weaker."""
    for path in GOLDEN.glob("*.json"):
        doc = json.loads(path.read_text())
        data = doc["data"]
        assert data["dataset"] == DS
        assert data["action"] in ("diff", "pull", "push")
        masked = re.findall(r'"([a-z_]+)": "\*"', path.read_text())
        assert set(masked) <= set(MASKED), path.name


@pytest.mark.parametrize("name", ["03-push-bootstrap", "11-pull-fast-forward"])
def test_golden_transfers_moved_data(name: str) -> None:
    data = json.loads((GOLDEN / f"{name}.json").read_text())["data"]
    assert data["transfer_state"] == "TRANSFERRED"
