"""How DATASET names a dataset: an id under ``--root``, or a directory anywhere.

A directory's root is ``--root`` when it lies below it, else the nearest ancestor holding
``registry.toml``; anything that can not be placed is a one-line error with its exit code,
and nothing is created. Sync commands resolve through ``usr.sync.engine.resolve_target``,
the others through ``porcelain.targets.resolve_dataset``; both are checked here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from porcelain.options import Settings
from porcelain.targets import dataset_from_cwd, resolve_dataset
from usr.errors import InputError, NotFoundError
from usr.sync.engine import SyncOptions, resolve_target

DS = "densegen/my_dataset"


@pytest.fixture
def world(tmp_path):
    """``roots/a`` (a registered root with DS), ``roots/b`` (unregistered, with DS), and a
    flat dataset ``flat`` in ``a`` with a ``notebooks`` directory inside it."""
    a, b = tmp_path / "a", tmp_path / "b"
    (a / DS).mkdir(parents=True)
    (a / "registry.toml").write_text("")
    (b / DS).mkdir(parents=True)
    (a / "flat" / ".usr").mkdir(parents=True)
    (a / "flat" / ".usr" / "HEAD").write_text("ref: refs/heads/main\n")
    (a / "flat" / "notebooks").mkdir()  # an auxiliary directory
    (a / "flat" / "_derived").mkdir()
    return tmp_path


def where(root: Path, arg: str) -> tuple[Path, str, Path]:
    t = resolve_target(root, arg, SyncOptions())
    assert t.kind == "dataset"
    return t.root, t.dataset, Path(t.path)


def test_ids_and_directories_resolve_to_a_root_and_an_id(world, monkeypatch):
    a, b = world / "a", world / "b"
    assert where(a, DS) == (a, DS, a / DS)
    # Below --root: no registry.toml needed.
    assert where(b, str(b / DS)) == (b, DS, b / DS)
    # Outside --root: the registered ancestor is the root.
    assert where(world / "elsewhere", str(a / DS)) == (a, DS, a / DS)
    # Relative forms, normalised (no "x/../" left in the id).
    monkeypatch.chdir(a / "densegen")
    assert where(world / "elsewhere", "./my_dataset") == (a, DS, a / DS)
    (a / "other").mkdir()
    monkeypatch.chdir(a / "other")
    assert where(world / "elsewhere", "../densegen/my_dataset") == (a, DS, a / DS)
    monkeypatch.setenv("HOME", str(a))
    assert where(world / "elsewhere", "~/densegen/my_dataset") == (a, DS, a / DS)


def test_an_id_under_the_root_wins_over_a_directory_of_that_name(world, monkeypatch):
    a, b = world / "a", world / "b"
    monkeypatch.chdir(a)  # a/densegen/my_dataset exists relative to here too
    assert where(b, DS) == (b, DS, b / DS)
    # Not under --root: the directory of that name (in a registered root) is meant.
    assert where(world / "empty", DS) == (a, DS, a / DS)


@pytest.mark.parametrize(
    ("arg", "error", "words"),
    [
        ("b/densegen/my_dataset", NotFoundError, "no registry.toml above"),
        ("a/densegen/missing", NotFoundError, "does not exist"),
        ("a", InputError, "is a datasets root"),
        ("a/densegen/my_dataset/sub", InputError, "more than two parts"),
        ("a/flat/notebooks", InputError, "inside dataset 'flat'"),
        ("a/flat/_derived", InputError, "inside dataset 'flat'"),
    ],
)
def test_directories_that_are_not_datasets_are_refused(world, arg, error, words):
    (world / "a" / DS / "sub").mkdir(exist_ok=True)
    with pytest.raises(error, match=words):
        resolve_target(world / "elsewhere", str(world / arg), SyncOptions())
    assert not (world / "elsewhere").exists()


def test_an_id_inside_a_dataset_is_refused(world):
    with pytest.raises(InputError, match="inside dataset 'flat'"):
        resolve_target(world / "a", "flat/notebooks", SyncOptions())


def test_porcelain_resolution_of_ids_paths_and_the_current_directory(world, monkeypatch):
    a = world / "a"
    settings = Settings(root_option=str(a))
    assert resolve_dataset(settings, DS) == a / DS
    assert resolve_dataset(settings, str(world / "b" / DS)) == world / "b" / DS
    assert resolve_dataset(settings, "densegen/new", must_exist=False) == a / "densegen/new"
    with pytest.raises(NotFoundError, match="not found under"):
        resolve_dataset(settings, "densegen/new")
    for nested in ("flat/notebooks", str(a / "flat" / "notebooks")):
        with pytest.raises(InputError, match="inside dataset"):
            resolve_dataset(settings, nested)
    monkeypatch.chdir(a / "flat" / "notebooks")
    assert dataset_from_cwd() == a / "flat"
    with pytest.raises(NotFoundError, match="not inside a dataset"):
        dataset_from_cwd(world)


def test_the_cli_says_it_in_one_line(usr, world):
    r = usr("diff", str(world / "a"), "bu-scc")
    assert r.returncode == 3
    assert r.stderr.startswith("usr: error: ") and len(r.stderr.strip().splitlines()) == 1
    assert "is a datasets root" in r.stderr


def _tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.mark.parametrize("command", [["status"], ["snapshot"], ["log"], ["fsck"]])
def test_a_directory_that_is_not_a_dataset_is_never_adopted(usr, tmp_path, command):
    """``usr status /`` or a namespace directory full of datasets must not become a dataset:
    adopting it would hash everything below it into a new store."""
    somewhere = tmp_path / "home"
    (somewhere / "notes").mkdir(parents=True)
    (somewhere / "notes" / "todo.txt").write_text("buy reagents\n")
    root = tmp_path / "datasets"
    assert usr("--root", str(root), "init", "densegen/a").returncode == 0
    before = {p: _tree(p) for p in (somewhere, root)}
    for target in (str(somewhere), "densegen", str(root / "densegen")):
        r = usr("--root", str(root), *command, target)
        assert r.returncode == 3, (target, r.stdout, r.stderr)
        assert r.stderr.startswith("usr: error: ") and "is not a dataset" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    assert {p: _tree(p) for p in (somewhere, root)} == before


def _local_remote(tmp_path: Path, base: Path) -> Path:
    cfg = tmp_path / "remotes.toml"
    cfg.write_text(f'[remotes.hpc]\ntype = "local"\nbase_dir = "{base}"\n')
    cfg.chmod(0o600)
    return cfg


def test_serve_refuses_to_plant_a_dataset_inside_another_or_over_a_namespace(usr, tmp_path):
    """The remote end checks for itself (a client need not be usr): a push of ``flat/x``
    where the remote's ``flat`` is a dataset, or of ``densegen`` where the remote's
    ``densegen`` is a namespace directory holding datasets, is refused; nothing changes."""
    laptop, cluster = tmp_path / "laptop", tmp_path / "cluster"
    for ds in ("flat", "densegen/a"):
        assert usr("--root", str(cluster), "init", ds).returncode == 0
    # Locally both ids are fine datasets: here "flat" and "densegen" are namespaces.
    for ds in ("flat/x", "densegen"):
        assert usr("--root", str(laptop), "init", ds).returncode == 0
    cfg = _local_remote(tmp_path, cluster)
    before = _tree(cluster)
    for ds in ("flat/x", "densegen"):
        r = usr("--root", str(laptop), "push", ds, "hpc", "-y", "--remotes-config", str(cfg))
        assert r.returncode == 3, (ds, r.stdout, r.stderr)
        assert "is inside dataset 'flat'" in r.stderr or "is not a dataset" in r.stderr
    assert _tree(cluster) == before


def test_roots_made_by_init_or_a_first_pull_resolve_from_inside_a_dataset(usr, tmp_path):
    """``usr diff . hpc`` inside a dataset needs its root marked by registry.toml: usr init
    and a bootstrap pull leave that mark, so the form works in every root usr made."""
    laptop, cluster = tmp_path / "laptop", tmp_path / "cluster"
    assert usr("--root", str(cluster), "init", DS).returncode == 0
    assert (cluster / "registry.toml").read_bytes() == b""
    cfg = _local_remote(tmp_path, cluster)
    pulled = usr("--root", str(laptop), "pull", DS, "hpc", "-y", "--remotes-config", str(cfg))
    assert pulled.returncode == 0, pulled.stderr
    assert (laptop / "registry.toml").is_file()
    for where in (laptop / DS, cluster / DS):
        r = usr("diff", ".", "hpc", "--format", "json", "--remotes-config", str(cfg), cwd=where)
        assert r.returncode == 0, (where, r.stderr)
        assert '"relation": "equal"' in r.stdout
