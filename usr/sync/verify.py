"""Checking the working files after a checkout, at the fidelity the options name.

Owns :func:`verify_working` and the per-section levels (``--verify hash|size|parquet|auto``
for the primary table; sidecars strict or off; content hashes on or off). May import
:mod:`usr.store` (objects, manifests) and :mod:`usr.sync.trees`, :mod:`usr.sync.options`.
"""

from __future__ import annotations

import os
import stat as statmod
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import blake3

from usr.errors import VerifyError
from usr.store import FileChange
from usr.sync.options import SyncOptions
from usr.sync.trees import listing

#: ``--verify auto`` hashes files up to this size and checks larger ones by size (and
#: Parquet footer for the primary table), trading a full re-read for speed on huge files.
AUTO_HASH_LIMIT = 256 * 1024 * 1024


def verify_working(
    store: Any,
    directory: Path,
    commit: str,
    options: SyncOptions,
    only: set[str] | None = None,
    entries: Iterable[FileChange] | None = None,
) -> int:
    """Re-check the working files against ``commit``'s tree after promotion.

    Per section, by the verify profile: primary by ``--verify``; ``meta.md``,
    ``.events.log`` and ``_snapshots`` by hash when sidecars are strict (skipped when off);
    ``_derived``/``_auxiliary`` by hash when content hashes are on, else by size. Returns
    how many files were checked; raises :class:`VerifyError` naming the first mismatch.
    ``only`` limits the check to the paths a transfer wrote (the rest did not change);
    ``entries`` gives those files directly, as ``commit``'s side (``new_id``/``new_size``)
    of a comparison already made, so the tree is not listed and sized again.
    """
    checked = 0
    base = str(directory)
    for entry in listing(store, commit) if entries is None else entries:
        if only is not None and entry.path not in only:
            continue
        if entries is not None and entry.section == "primary":
            # ``--verify auto`` picks the level by size: the store's size, not the peer's.
            entry = replace(entry, new_size=store.entry_size(entry.new_id))
        level = level_for(entry, options)
        if level == "off":
            continue
        path = f"{base}/{entry.path}"  # a str: a Path a file cost more than its stat
        size = _regular_size(path, entry.path)
        # Sizes from a comparison may be the peer's word (a fetch listing): the store's
        # own object says the size, unless the file is hashed, which checks it anyway.
        want = entry.new_size if entries is None else _stored_size(store, entry, level)
        if want is not None and size != want:
            raise VerifyError(f"{entry.path}: {size} bytes after checkout, the tree says {want}")
        if level == "parquet":
            check_parquet(Path(path))
        elif level == "hash":
            check_hash(store, path, entry, size)
        checked += 1
    return checked


def _regular_size(path: str, shown: str) -> int:
    """The size of the regular file at ``path`` (symlinks followed); VerifyError if none."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        st = None
    if st is None or not statmod.S_ISREG(st.st_mode):
        raise VerifyError(f"{shown} is missing after checkout")
    return st.st_size


def _stored_size(store: Any, entry: FileChange, level: str) -> int | None:
    """The whole-file size the local store holds for ``entry`` (None when its hash is
    checked instead: sizing a small file reads its object)."""
    if level == "hash":
        return None
    if entry.section == "primary":
        return entry.new_size  # sized from the store just above
    return store.entry_size(entry.new_id)


def level_for(entry: FileChange, options: SyncOptions) -> str:
    """How ``entry`` is checked: ``hash``, ``size``, ``parquet`` or ``off``."""
    section = entry.section
    if section == "primary":
        level = options.verify
        if level == "auto":
            level = "hash" if (entry.new_size or 0) <= AUTO_HASH_LIMIT else "parquet"
        return level
    if section in ("meta", "events", "snapshots"):
        return "hash" if options.verify_sidecars else "off"
    return "hash" if options.verify_derived_hashes else "size"


def check_parquet(path: Path) -> None:
    """The file's Parquet footer reads."""
    import pyarrow.parquet as pq

    try:
        pq.ParquetFile(path).metadata  # noqa: B018 - reading the footer is the check
    except Exception as exc:  # noqa: BLE001 - any parse failure is a verify failure
        raise VerifyError(f"{path.name}: not a readable Parquet file: {exc}") from None


def check_hash(store: Any, path: str | Path, entry: FileChange, size: int) -> None:
    """The working file (of ``size`` bytes) hashes to its entry: for a small file, its own
    bytes to the blob id, without reading the object (a blob that is not a manifest is the
    file's bytes); else by the manifest's whole-file blake3."""
    from usr.store.objects import MAGIC, git_object_id, inline_limit

    if size <= inline_limit():
        data = _read(path)
        if not data.startswith(MAGIC) and git_object_id("blob", data) == entry.new_id:
            return
    manifest = store.manifest_of(entry.new_id)
    if manifest is not None:
        h = blake3.blake3()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        if h.hexdigest() != manifest.blake3:
            raise VerifyError(f"{entry.path}: blake3 differs from the tree after checkout")
        return
    if git_object_id("blob", _read(path)) != entry.new_id:
        raise VerifyError(f"{entry.path}: content differs from the tree after checkout")


def _read(path: str | Path) -> bytes:
    with open(path, "rb", buffering=0) as fh:
        return fh.read()
