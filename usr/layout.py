"""Where things live: the datasets root, dataset ids, and which section a path belongs to.

Every command and every peer resolves ids and classifies paths through this module, so a
path is in the same section in ``status``, ``diff``, the audit JSON and ``diff-tree``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

from usr.errors import InputError

ROOT_ENV = "USR_ROOT"
DEFAULT_ROOT = "datasets"
REGISTRY_FILE = "registry.toml"

RECORDS_FILE = "records.parquet"
META_FILE = "meta.md"
EVENTS_FILE = ".events.log"
SNAPSHOTS_DIR = "_snapshots"
DERIVED_DIR = "_derived"
STORE_DIR = ".usr"

# ``\Z``, not ``$``: ``$`` also matches before a trailing newline ("a\n" would pass).
ID_PART_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
NAMESPACE_RE = re.compile(r"^[a-z][a-z0-9_]*\Z")
#: Names a datasets root holds for itself (compared case-folded, for case-insensitive
#: filesystems): no dataset id may start with one.
ROOT_OWNED = frozenset({REGISTRY_FILE.lower()})
#: Longest id part: one directory name (NAME_MAX on Linux and macOS).
ID_PART_MAX = 255
RESERVED_NAMESPACES = frozenset({"usr"})

#: Paths that are runtime state, never recorded, transferred or counted.
RUNTIME_NAMES = frozenset({STORE_DIR, ".usr.lock", ".events.lock", ".usr.transfer.lock"})
RUNTIME_PREFIXES = (".usr.lease.", ".usr-tmp", ".usr-staging")
#: Of those, usr's temporary files: a crash may leave one in any directory (an atomic
#: write's temp file, a staged file), so they are skipped at every depth. The other
#: runtime names live only at a dataset's top; below it they are refused, never skipped.
TEMP_PREFIXES = (".usr-tmp", ".usr-staging")
#: What every runtime name and prefix starts with, after a slash: a path without it names
#: no runtime state at any depth (:func:`check_relpath` looks no further).
_RUNTIME_START = "/" + os.path.commonprefix([*RUNTIME_NAMES, *RUNTIME_PREFIXES])

#: Longest path inside a dataset, in bytes of UTF-8: with a datasets root of up to 3,000
#: bytes on the other machine it still fits PATH_MAX (4,096 on Linux). A name is at most
#: NAME_MAX (255) anyway: the filesystem refuses longer ones.
MAX_RELPATH = 1024

#: Section names, in the order every report lists them.
SECTIONS = ("primary", "meta", "events", "snapshots", "derived", "auxiliary")


def resolve_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The datasets root: ``--root``, else ``$USR_ROOT``, else ``./datasets``."""
    chosen = root if root not in (None, "") else os.environ.get(ROOT_ENV) or DEFAULT_ROOT
    return Path(chosen).expanduser().absolute()


def validate_dataset_id(dataset_id: str) -> str:
    """Return ``dataset_id`` if it is flat (``name``) or qualified (``namespace/name``).

    Each part matches ``[A-Za-z0-9][A-Za-z0-9_.-]*`` and is at most 255 characters (one
    directory name); anything else (``..``, absolute paths, three parts, empty, a trailing
    newline) is refused, so an id can never name a path outside the root.
    """
    if not isinstance(dataset_id, str) or not dataset_id:
        raise InputError("bad dataset id '': empty", "use NAME or NAMESPACE/NAME")
    parts = dataset_id.split("/")
    if len(parts) > 2:
        raise InputError(
            f"bad dataset id {dataset_id!r}: more than two parts", "use NAME or NAMESPACE/NAME"
        )
    for part in parts:
        if not ID_PART_RE.match(part) or part in (".", ".."):
            raise InputError(
                f"bad dataset id {dataset_id!r}: part {part!r} must match "
                f"[A-Za-z0-9][A-Za-z0-9_.-]*",
                "use NAME or NAMESPACE/NAME",
            )
        if len(part) > ID_PART_MAX:
            raise InputError(
                f"bad dataset id {dataset_id[:40]!r}...: a part is longer than "
                f"{ID_PART_MAX} characters",
                "use a shorter name",
            )
    if parts[0].lower() in ROOT_OWNED:
        raise InputError(
            f"bad dataset id {dataset_id!r}: {parts[0]!r} is a file of the datasets root itself",
            "pick another name",
        )
    return dataset_id


def refuse_symlinks(root: Path, dataset_id: str) -> Path:
    """The dataset directory of ``dataset_id`` under ``root``, refusing a dataset or
    namespace directory that is a symlink, or a symlinked records.parquet, meta.md or
    .events.log: the store would record, and a sync would write, somewhere else."""
    here = root
    for part in dataset_id.split("/"):
        here = here / part
        if here.is_symlink():
            raise InputError(
                f"dataset path {here} is a symlink: what is written through it lands outside "
                "the root",
                "datasets must be real directories",
            )
    for name in (RECORDS_FILE, META_FILE, EVENTS_FILE):
        if (here / name).is_symlink():
            raise InputError(f"{here / name} is a symlink", "dataset files must be real files")
    return here


def dataset_path(root: Path, dataset_id: str) -> Path:
    """The directory of ``dataset_id`` under ``root`` (validated; not required to exist)."""
    validate_dataset_id(dataset_id)
    return root / dataset_id


def check_dataset_dir(directory: Path, root: Path | None = None) -> Path:
    """``directory`` if it can be used as a dataset: absent, empty, or holding a dataset (a
    store, or ``records.parquet`` made by another tool, adopted on first use); and not inside
    another dataset (an ancestor with a store, up to ``root``).

    Anything else is refused with InputError: recording an arbitrary directory (``/``, a
    home, a namespace directory full of datasets) would hash everything below it, and a
    store planted inside a dataset would be recorded as that dataset's files.
    """
    directory = directory.absolute()
    stop = root.absolute() if root is not None else None
    for parent in directory.parents:
        if stop is not None and (parent == stop or stop not in parent.parents):
            break
        if (parent / STORE_DIR).is_dir():
            raise InputError(
                f"{directory} is inside dataset '{parent.name}' ({parent}), not a dataset itself",
                f"name the dataset: {parent}",
            )
    if not directory.is_dir() or (directory / STORE_DIR).is_dir():
        return directory
    if (directory / RECORDS_FILE).is_file() or not any(directory.iterdir()):
        return directory
    raise InputError(
        f"{directory} is not a dataset: it holds neither {RECORDS_FILE} nor a {STORE_DIR}/ store",
        "name a dataset directory, usr ls lists them; or create one with usr init",
    )


def validate_namespace(namespace: str) -> str:
    if not NAMESPACE_RE.match(namespace or ""):
        raise InputError(f"bad namespace {namespace!r}: must match ^[a-z][a-z0-9_]*$")
    if namespace in RESERVED_NAMESPACES:
        raise InputError(f"namespace {namespace!r} is reserved", "pick another name")
    return namespace


def is_runtime_path(relpath: str) -> bool:
    """True for paths usr never records: its store, locks, leases and temporary files."""
    for part in PurePosixPath(relpath).parts:
        if part in RUNTIME_NAMES or part.startswith(RUNTIME_PREFIXES):
            return True
    return False


def section_of(relpath: str) -> str:
    """The section of a dataset-relative POSIX path (see the table in docs/format.md)."""
    if relpath == RECORDS_FILE:
        return "primary"
    if relpath == META_FILE:
        return "meta"
    if relpath == EVENTS_FILE:
        return "events"
    top = relpath.split("/", 1)[0]
    if top == SNAPSHOTS_DIR:
        return "snapshots"
    if top == DERIVED_DIR:
        return "derived"
    return "auxiliary"


def check_relpath(relpath: str) -> str:
    """Refuse a dataset-relative path that is absolute, escapes, or names runtime state.

    Used on every path that comes from a tree, a peer or a user, before it touches disk.
    """
    if not relpath or "\x00" in relpath or "\\" in relpath:
        raise InputError(f"bad path {relpath!r} in dataset")
    if len(relpath) > MAX_RELPATH // 4 and len(relpath.encode("utf-8", "replace")) > MAX_RELPATH:
        raise InputError(
            f"bad path {relpath[:60]!r}...: longer than {MAX_RELPATH} bytes",
            "shorten it: every path must fit below any datasets root on every machine",
        )
    # Substring tests on the path between slashes, no split or pathlib: this runs for
    # every entry of every tree walked and every file received (2.3 -> 0.34 µs a path).
    # A part is "", "." or ".." exactly where "//", "/./" or "/../" occurs ("" covers
    # absolute paths and a trailing slash too).
    wrapped = f"/{relpath}/"
    if "//" in wrapped or "/./" in wrapped or "/../" in wrapped:
        raise InputError(f"bad path {relpath!r}: absolute or escapes the dataset")
    if _RUNTIME_START in wrapped and any(
        part in RUNTIME_NAMES or part.startswith(RUNTIME_PREFIXES) for part in relpath.split("/")
    ):
        raise InputError(f"bad path {relpath!r}: names usr runtime state")
    return relpath


def dataset_holding(path: Path, stop: Path | None = None) -> Path | None:
    """The dataset directory (one holding a ``.usr/`` store) that ``path`` is in or is,
    looking up from ``path`` to ``stop`` (inclusive; else the filesystem root), or None.

    File mode refuses such paths: a file a dataset tracks changes only through the
    dataset's record, lock and append-only event log, never by a plain copy over it.
    """
    path = Path(os.path.abspath(path))
    top = Path(os.path.abspath(stop)) if stop is not None else None
    for here in (path, *path.parents):
        if (here / STORE_DIR).is_dir():
            return here
        if top is not None and here == top:
            break
    return None


def mark_root(root: Path) -> None:
    """Give a datasets root its (empty) ``registry.toml`` if it has none.

    The file is what marks a directory as a datasets root: a dataset named by its directory
    path (``usr diff . hpc`` from inside it) finds its root and id through it. An empty
    registry means the same as a missing one (same bytes, same hash), so creating it changes
    no overlay stamp. Created with O_EXCL: a concurrent ``namespace register`` wins.
    """
    try:
        with open(root / REGISTRY_FILE, "xb"):
            pass
    except FileExistsError:
        pass
