"""File mode target resolution: which remote file a local file maps to."""

from __future__ import annotations

from pathlib import Path

import pytest

from usr.errors import InputError, UsageError
from usr.remotes import Profile
from usr.sync.engine import SyncOptions, resolve_target
from usr.sync.filemode import remote_path_for


def test_existing_file_is_file_mode_and_maps_through_repo_roots(tmp_path):
    f = tmp_path / "repo" / "outputs" / "table.csv"
    f.parent.mkdir(parents=True)
    f.write_text("a,b\n")
    target = resolve_target(tmp_path / "datasets", str(f), SyncOptions())
    assert target.kind == "file"
    profile = Profile(
        name="bu-scc", repo_root="/project/alice/repo", local_repo_root=str(tmp_path / "repo")
    )
    assert remote_path_for(target, profile) == "/project/alice/repo/outputs/table.csv"


def test_remote_path_wins_and_missing_mapping_is_refused(tmp_path):
    f = tmp_path / "x.txt"
    f.write_text("x")
    target = resolve_target(tmp_path, str(f), SyncOptions(remote_path="/elsewhere/x.txt"))
    assert remote_path_for(target, Profile(name="bu-scc")) == "/elsewhere/x.txt"
    plain = resolve_target(tmp_path, str(f), SyncOptions())
    with pytest.raises(UsageError, match="repo_root and local_repo_root"):
        remote_path_for(plain, Profile(name="bu-scc"))
    outside = Profile(name="bu-scc", repo_root="/r", local_repo_root=str(tmp_path / "other"))
    with pytest.raises(InputError, match="not under local_repo_root"):
        remote_path_for(plain, outside)


def test_dataset_ids_and_directories_are_not_file_mode(tmp_path):
    root = tmp_path / "datasets"
    (root / "densegen" / "my_dataset").mkdir(parents=True)
    (root / "registry.toml").write_text("")
    t = resolve_target(root, "densegen/my_dataset", SyncOptions())
    assert (t.kind, t.dataset) == ("dataset", "densegen/my_dataset")
    d = resolve_target(tmp_path / "elsewhere", str(root / "densegen" / "my_dataset"))
    assert (d.kind, d.dataset, d.root) == ("dataset", "densegen/my_dataset", root)
    assert Path(d.path) == root / "densegen" / "my_dataset"
