"""What a sync command names: a dataset under a datasets root, or one file (file mode).

Owns :class:`Target`, :func:`resolve_target` (the DATASET argument -> a target), and the
two facts about a local dataset directory every operation asks first: whether a dataset
is there (:func:`local_exists`) and its store (:func:`open_store`). May import
:mod:`usr.layout`, :mod:`usr.errors`, :mod:`usr.store` and :mod:`usr.sync.options`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from usr.errors import InputError, NotFoundError
from usr.layout import (
    REGISTRY_FILE,
    check_dataset_dir,
    dataset_path,
    is_runtime_path,
    refuse_symlinks,
    validate_dataset_id,
)
from usr.sync.options import SyncOptions


@dataclass
class Target:
    """What to sync: a dataset (by id under a root) or, in file mode, one file."""

    kind: str  # "dataset" | "file"
    root: Path
    dataset: str
    path: Path
    remote_path: str | None = None


def _looks_like_path(arg: str) -> bool:
    return arg.startswith(("/", "./", "../", "~")) or arg in (".", "..")


def _find_registry_root(directory: Path) -> Path | None:
    for candidate in [directory, *directory.parents]:
        if (candidate / REGISTRY_FILE).is_file():
            return candidate
    return None


def resolve_target(root: Path, arg: str, options: SyncOptions | None = None) -> Target:
    """Turn the DATASET argument into a :class:`Target`.

    * a dataset id (``name`` or ``namespace/name``) under ``root``;
    * a dataset directory path (outside ``root`` too): its root is the nearest ancestor
      holding ``registry.toml``, and its id the path below that root;
    * file mode: an existing regular file, or any path with ``--remote-path``.
    """
    options = options or SyncOptions()
    # os.path, not pathlib: an argument the OS cannot even stat (too long, a NUL byte, an
    # unknown ~user) is then simply no file or directory, and ends as a bad dataset id.
    candidate = Path(os.path.expanduser(arg))
    if options.remote_path is not None or os.path.isfile(candidate):
        return Target("file", root, arg, candidate.absolute(), options.remote_path)
    # normpath: "../densegen/my_dataset" from inside a root must give the id, not "x/../..".
    as_dir = Path(os.path.normpath(candidate.absolute()))
    in_root = root / arg
    is_dir = os.path.isdir(as_dir)
    if _looks_like_path(arg) or (is_dir and not os.path.isdir(in_root) and "/" in arg):
        return _dataset_dir_target(root, as_dir, is_dir)
    validate_dataset_id(arg)
    refuse_symlinks(root, arg)
    check_dataset_dir(dataset_path(root, arg), root)
    return Target("dataset", root, arg, dataset_path(root, arg))


def _dataset_dir_target(root: Path, as_dir: Path, is_dir: bool) -> Target:
    """A dataset named by its directory: its root is the nearest one above it."""
    if not is_dir:
        raise NotFoundError(
            f"dataset directory {as_dir} does not exist", "check the path, or name a dataset id"
        )
    if (as_dir / REGISTRY_FILE).is_file():
        raise InputError(
            f"{as_dir} is a datasets root (it holds {REGISTRY_FILE}), not a dataset",
            "name a dataset in it: usr --root DIR COMMAND ID, or the dataset's directory",
        )
    top = Path(os.path.normpath(root.absolute()))
    found = top if top in as_dir.parents else _find_registry_root(as_dir.parent)
    if found is None:
        raise NotFoundError(
            f"no {REGISTRY_FILE} above {as_dir}: cannot tell which datasets root it is in",
            "name the dataset by its id with --root ROOT, or mark its datasets root: "
            "touch ROOT/registry.toml",
        )
    dataset = as_dir.relative_to(found).as_posix()
    check_dataset_dir(as_dir, found)
    validate_dataset_id(dataset)
    refuse_symlinks(found, dataset)
    return Target("dataset", found, dataset, as_dir)


def open_store(directory: Path, create: bool = False) -> Any:
    """The dataset's object store, its directory made if need be."""
    from usr.store import Store

    directory.mkdir(parents=True, exist_ok=True)
    return Store.open(directory, create=create)


def local_exists(directory: Path) -> bool:
    """A dataset is here when its directory holds anything but usr's own runtime state
    (a bootstrap pull cut off after fetching leaves only ``.usr/``: still absent)."""
    if not directory.is_dir():
        return False
    return any(not is_runtime_path(p.name) for p in directory.iterdir())


def scan_working(store: Any, why: str, timeout: float | None = None) -> tuple[str, str | None]:
    """``(working tree, HEAD)`` walked under the dataset lock: what
    ``Store.record(scanned=...)`` takes instead of walking again. A sync walks both sides'
    files at once this way (each on its own machine, or this side on a thread while the
    session opens), then records each one from its own walk."""
    with store.lock(why, timeout=timeout):
        return store.working_tree(), store.head()
