"""Adversarial schemas and sidecars: what a careless or broken tool writes must be refused,
and a refusal must leave every file, the event log and the history as they were.

Writers go through the real Python API and the real CLI; pushes run the shipped pre-push
hook (installed with ``usr hooks install --root-wide``) against a ``local`` remote.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tomli_w

from usr import drills, mock
from usr.dataset import Dataset
from usr.errors import InputError, NotFoundError
from usr.store import Store
from usr.sync import engine
from usr.sync.engine import SyncOptions

DS = "densegen/my_dataset"


def _snapshot(directory: Path) -> tuple[dict[str, bytes], str | None]:
    files = {
        p.relative_to(directory).as_posix(): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
        and p.relative_to(directory).parts[0] != ".usr"
        and not p.name.endswith(".lock")
    }
    return files, Store.open(directory, create=False).head()


class World:
    def __init__(self, tmp_path: Path) -> None:
        self.laptop, self.cluster = tmp_path / "laptop", tmp_path / "cluster"
        self.laptop.mkdir(exist_ok=True)
        self.cluster.mkdir(exist_ok=True)
        self.config = tmp_path / "remotes.toml"
        table = {"type": "local", "base_dir": str(self.cluster)}
        self.config.write_text(tomli_w.dumps({"remotes": {"bu-scc": table}}))
        self.config.chmod(0o600)

    @property
    def local_dir(self) -> Path:
        return self.laptop / DS

    def sync(self, action: str) -> dict:
        opts = SyncOptions(remotes_config=str(self.config))
        fn = {"diff": engine.diff, "pull": engine.pull, "push": engine.push}[action]
        return fn(engine.resolve_target(self.laptop, DS, opts), "bu-scc", opts)["data"]

    def cli(self, usr, *args: str):
        return usr("--root", str(self.laptop), *args)

    def push_cli(self, usr, *extra: str):
        return self.cli(
            usr, "push", DS, "bu-scc", "-y", "--remotes-config", str(self.config), *extra
        )


@pytest.fixture(scope="module")
def synced(tmp_path_factory: pytest.TempPathFactory) -> World:
    """Cluster batch pulled to the laptop, scored there and pushed back: both sides equal.
    Built once; tests that change anything work on a copy (:func:`world`)."""
    w = World(tmp_path_factory.mktemp("synced"))
    mock.mock_batch(w.cluster, DS, rows=12)
    w.sync("pull")
    mock.mock_infer(w.laptop, DS)
    w.sync("push")
    return w


@pytest.fixture
def world(synced: World, tmp_path: Path) -> World:
    """A private copy of :func:`synced` (both roots, plain file copies) with its own remote."""
    for name in ("laptop", "cluster"):
        shutil.copytree(getattr(synced, name), tmp_path / name, symlinks=True)
    return World(tmp_path)


def _ids(w: World, n: int = 3) -> list[str]:
    return Dataset.open(w.laptop, DS).head(n, overlay=False).column("id").to_pylist()


def test_schema_violating_overlay_csv_is_refused_by_attach(world: World, usr, tmp_path) -> None:
    bad = drills.write_schema_violating_overlay(world.laptop, DS, tmp_path / "bad.csv")
    before = _snapshot(world.local_dir)
    r = world.cli(
        usr, "attach", DS, "--path", str(bad), "--namespace", "infer", "--columns", "ll",
        "--allow-overwrite",
    )  # fmt: skip
    assert r.returncode == 3, r.stderr
    assert "registered type float64" in r.stderr and r.stderr.count("\n") == 1
    assert _snapshot(world.local_dir) == before


@pytest.mark.parametrize(
    "case",
    ["wrong-type", "unregistered-column", "unregistered-namespace", "orphan-keys", "dup-keys"],
)
def test_overlay_contract_violations_through_the_api(synced: World, case: str) -> None:
    world = synced
    ds = Dataset.open(world.laptop, DS)
    ids = _ids(world)
    table, namespace, error = {
        "wrong-type": (pa.table({"id": ids, "infer__ll": ["high"] * 3}), "infer", InputError),
        "unregistered-column": (
            pa.table({"id": ids, "infer__extra": [1.0] * 3}),
            "infer",
            InputError,
        ),
        "unregistered-namespace": (pa.table({"id": ids, "qc__x": [1.0] * 3}), "qc", NotFoundError),
        "orphan-keys": (
            pa.table({"id": ["0" * 40], "infer__ll": [1.0]}),
            "infer",
            InputError,
        ),
        "dup-keys": (pa.table({"id": [ids[0]] * 2, "infer__ll": [1.0, 2.0]}), "infer", InputError),
    }[case]
    before = _snapshot(world.local_dir)
    with pytest.raises(error):
        ds.attach(table, namespace=namespace, allow_overwrite=True)
    assert _snapshot(world.local_dir) == before


@pytest.mark.parametrize(
    "row",
    [
        {"sequence": "ACGTXXACGT"},  # not dna_4
        {"sequence": "ACGTNNACGT"},  # N is dna_5, not dna_4
        {"sequence": ""},
    ],
)
def test_records_that_break_the_core_schema_are_refused(synced: World, row: dict) -> None:
    world = synced
    ds = Dataset.open(world.laptop, DS)
    before = _snapshot(world.local_dir)
    with pytest.raises(InputError):
        ds.append_records([row], bio_type="dna", alphabet="dna_4")
    assert _snapshot(world.local_dir) == before


def _install_hook(world: World, usr) -> None:
    r = world.cli(usr, "hooks", "install", "--root-wide")
    assert r.returncode == 0, r.stderr


def test_hand_written_part_with_wrong_types_is_refused_by_pre_push(world: World, usr) -> None:
    _install_hook(world, usr)
    rogue = world.local_dir / "_derived" / "infer" / "part-rogue.parquet"
    pq.write_table(pa.table({"id": _ids(world), "infer__ll": ["a", "b", "c"]}), rogue)
    remote_before = _snapshot(world.cluster / DS)

    check = world.cli(usr, "plumbing", "verify-sidecars", DS)
    assert check.returncode == 5
    problems = {tuple(line.split("\t")[:2]) for line in check.stdout.splitlines()}
    rel = "_derived/infer/part-rogue.parquet"
    assert (rel, "ledger") in problems and (rel, "columns") in problems

    r = world.push_cli(usr)
    assert r.returncode == 10, r.stderr
    assert "pre-push hook refused" in r.stderr.splitlines()[-1]
    assert _snapshot(world.cluster / DS) == remote_before


def test_tampered_sidecar_is_refused_then_checkout_restores(world: World, usr) -> None:
    _install_hook(world, usr)
    good_head = Store.open(world.local_dir).head()
    remote_before = _snapshot(world.cluster / DS)
    rel = drills.tamper_overlay_part(world.laptop, DS)

    r = world.push_cli(usr)
    assert r.returncode == 10, r.stderr
    assert rel in r.stderr and "ledger" in r.stderr
    assert _snapshot(world.cluster / DS) == remote_before

    # The refused push recorded the tampered state locally (nothing is ever lost);
    # stepping back to the state before it restores the vouched bytes.
    r = world.cli(usr, "checkout", DS, "HEAD~1")
    assert r.returncode == 0, r.stderr
    assert Store.open(world.local_dir).head() == good_head
    assert world.sync("diff")["status"] == "up-to-date"
    assert world.push_cli(usr).returncode == 0
