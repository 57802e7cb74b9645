"""How a command names a dataset: an id under ``--root``, or a dataset directory path.

Every command resolves its DATASET argument here, so ``usr status my_ds``, ``usr status
densegen/my_ds`` and ``usr status ./datasets/densegen/my_ds`` mean the same dataset, and
plumbing run inside a dataset directory finds it without an argument.
"""

from __future__ import annotations

import os
from pathlib import Path

from porcelain.options import Settings
from usr.errors import InputError, NotFoundError
from usr.layout import STORE_DIR, check_dataset_dir, dataset_path, validate_dataset_id


def _looks_like_path(arg: str) -> bool:
    return arg.startswith(("/", "./", "../", "~")) or arg in (".", "..") or os.sep + os.sep in arg


def resolve_dataset(settings: Settings, arg: str, must_exist: bool = True) -> Path:
    """The directory of the dataset named by ``arg``.

    ``arg`` is tried as a dataset id under the root first (ids win: ``ns/name`` is both a
    valid id and a relative path); then as a path to an existing directory. With
    ``must_exist`` a missing dataset is a NotFoundError naming where it was looked for. A
    directory inside another dataset (``ds/_derived``) is refused: opening a store there
    would nest one dataset in another. (Sync commands resolve through
    :func:`usr.sync.engine.resolve_target`, which also finds the root of a directory.)
    """
    if not arg:
        validate_dataset_id(arg)  # refused: Path("") would be the current directory
    if not _looks_like_path(arg):
        try:
            validate_dataset_id(arg)
        except InputError:
            pass
        else:
            candidate = dataset_path(settings.root, arg)
            if candidate.is_dir() or (not must_exist and not os.path.isdir(arg)):
                return check_dataset_dir(candidate)
    # os.path, not pathlib: an argument the OS cannot stat (too long, an unknown ~user)
    # is no directory, so it ends as "not found" instead of an internal error.
    path = Path(os.path.expanduser(arg))
    if os.path.isdir(path):
        return check_dataset_dir(Path(os.path.normpath(path.absolute())))
    if must_exist:
        raise NotFoundError(
            f"dataset {arg!r} not found under {settings.root} nor as a directory",
            "check --root / $USR_ROOT, or pass the dataset directory",
        )
    validate_dataset_id(arg)
    return check_dataset_dir(dataset_path(settings.root, arg))


def dataset_from_cwd(start: Path | None = None) -> Path:
    """The dataset directory containing ``start`` (default: the current directory): the
    nearest ancestor with a ``.usr/`` store. NotFoundError if there is none."""
    here = (start or Path.cwd()).absolute()
    for candidate in (here, *here.parents):
        if (candidate / STORE_DIR / "HEAD").exists():
            return candidate
    raise NotFoundError(
        f"{here} is not inside a dataset (no {STORE_DIR}/ found)",
        "cd into a dataset directory, or name the dataset",
    )
