"""The check of the working files after a pull's checkout (usr/sync/verify.py) on a real
recorded dataset: a file missing, a directory or nothing where a file must be, other bytes
of the same size, another size; a symlink to the right bytes is followed, as a read is."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import recorded_dataset
from usr.errors import VerifyError
from usr.store import Store
from usr.sync.options import SyncOptions
from usr.sync.verify import verify_working

FILES = {f"_aux/d{i % 3}/f{i}.txt": f"sidecar {i}\n".encode() * 20 for i in range(9)}
ONE = "_aux/d1/f4.txt"


def _check(ds: Path, **options: bool) -> int:
    store = Store.open(ds, create=False)
    return verify_working(store, ds, store.head(), SyncOptions(**options))


@pytest.fixture
def ds(tmp_path: Path) -> Path:
    return recorded_dataset(tmp_path, "verify_ds", FILES).path


def test_every_file_as_recorded_passes(ds: Path) -> None:
    assert _check(ds) >= len(FILES)


def test_a_missing_file_is_named(ds: Path) -> None:
    (ds / ONE).unlink()
    with pytest.raises(VerifyError, match=f"{ONE} is missing after checkout"):
        _check(ds)


def test_a_directory_or_a_missing_parent_where_a_file_must_be_is_missing(ds: Path) -> None:
    (ds / ONE).unlink()
    (ds / ONE).mkdir()
    with pytest.raises(VerifyError, match="missing after checkout"):
        _check(ds)
    shutil.rmtree(ds / "_aux" / "d1")
    (ds / "_aux" / "d1").write_bytes(b"a file where a directory was\n")
    with pytest.raises(VerifyError, match="missing after checkout"):
        _check(ds)


def test_other_bytes_of_the_same_size_fail_the_hash_and_pass_a_size_check(ds: Path) -> None:
    data = FILES[ONE]
    (ds / ONE).write_bytes(data[:-2] + b"X\n")
    with pytest.raises(VerifyError, match=f"{ONE}: content differs"):
        _check(ds)
    assert _check(ds, verify_derived_hashes=False) >= len(FILES)


def test_another_size_fails_a_size_check(ds: Path) -> None:
    (ds / ONE).write_bytes(FILES[ONE] + b"more\n")
    with pytest.raises(VerifyError, match=f"{ONE}: .* bytes after checkout"):
        _check(ds, verify_derived_hashes=False)


def test_a_symlink_to_the_recorded_bytes_is_followed(ds: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_bytes(FILES[ONE])
    (ds / ONE).unlink()
    os.symlink(outside, ds / ONE)
    assert _check(ds) >= len(FILES)
