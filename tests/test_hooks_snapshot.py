"""``pre-snapshot``: run by the store's one record path, under the dataset lock, only when
there is something to record; a refusal records nothing."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import REPO
from usr import hooks, registry
from usr.dataset import Dataset
from usr.store import Store

DS = "densegen/my_dataset"


def _hook(root: Path, body: str) -> Path:
    path = hooks.root_hooks_dir(root) / "pre-snapshot"
    path.parent.mkdir(exist_ok=True)
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def test_pre_snapshot_refuses_and_passes(usr, root: Path, tmp_path: Path) -> None:
    registry.register(root, "infer", [("infer__ll", "float64")])
    d = Dataset.init(root, DS)
    head = Store.open(d.path).head()
    (d.path / "_artifacts").mkdir()
    (d.path / "_artifacts" / "notes.txt").write_text("dropped in by a tool\n")

    # A guard that runs the sidecar check on the working files about to be recorded.
    _hook(root, '"$USR_PYTHON" -m usr plumbing verify-sidecars "$USR_DATASET_DIR" >&2\n')
    r = usr("--root", str(root), "snapshot", DS, env={"PYTHONPATH": str(REPO)})
    assert r.returncode == 10, r.stderr
    assert "_artifacts/notes.txt\tledger\t" in r.stderr
    assert "pre-snapshot hook refused (exit 5)" in r.stderr
    assert Store.open(d.path).head() == head

    seen = tmp_path / "seen"
    _hook(root, f'echo "$1 $USR_HEAD $USR_DATASET" > {seen}\n')
    r = usr("--root", str(root), "snapshot", DS)
    assert r.returncode == 0, r.stderr
    assert Store.open(d.path).head() != head
    assert seen.read_text().split() == ["snapshot", head, DS]

    seen.unlink()
    r = usr("--root", str(root), "snapshot", DS)  # nothing changed: nothing to guard
    assert r.returncode == 0, r.stderr
    assert not seen.exists()
