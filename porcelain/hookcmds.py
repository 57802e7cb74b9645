"""``usr hooks install`` and ``usr hooks list``: put the shipped hooks where usr looks.

Shipped hooks live in the repository's ``hooks/`` directory (editable installs, a clone) or,
in a wheel, in ``usr/_shipped_hooks`` (pyproject force-include). Installing copies them
(or symlinks, with ``--symlink``) into ``<dataset>/.usr/hooks/`` or, with ``--root-wide``,
``<root>/.usr-hooks/``. An existing hook with other content is an operator's own work: it is
kept, and said so, unless ``--force``.
"""

from __future__ import annotations

import filecmp
import os
import shutil
from pathlib import Path

import click

import usr
from porcelain.options import Settings, emit, format_option, pass_settings, warn
from porcelain.targets import resolve_dataset
from usr import hooks as hookmod
from usr.errors import InputError, NotFoundError, UsageError
from usr.sidecars import dataset_label


def shipped_hooks_dir() -> Path:
    """Where this usr's sample hooks are: the wheel copy, else the source tree's hooks/."""
    package = Path(usr.__file__).resolve().parent
    for candidate in (package / "_shipped_hooks", package.parent / "hooks"):
        if candidate.is_dir():
            return candidate
    raise NotFoundError(
        "the shipped hooks are not installed with this usr",
        "reinstall usr, or copy hooks/pre-push from its source by hand",
    )


def shipped_hooks() -> dict[str, Path]:
    """Shipped hook name -> file (only names usr runs)."""
    base = shipped_hooks_dir()
    return {n: base / n for n in hookmod.HOOK_NAMES if (base / n).is_file()}


def _install_one(source: Path, dest: Path, force: bool, symlink: bool) -> str:
    """Install ``source`` at ``dest``; returns installed|unchanged|replaced|kept."""
    exists = dest.exists() or dest.is_symlink()
    same = exists and dest.is_file() and filecmp.cmp(source, dest, shallow=False)
    if same and symlink == dest.is_symlink():
        return "unchanged"
    if exists and not force:
        return "kept"
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".usr-tmp-{dest.name}")
    if tmp.exists() or tmp.is_symlink():
        tmp.unlink()
    if symlink:
        tmp.symlink_to(source.resolve())
    else:
        shutil.copyfile(source, tmp)
        os.chmod(tmp, 0o755)
    os.replace(tmp, dest)
    return "replaced" if exists else "installed"


@click.group("hooks")
def hooks_group() -> None:
    """Install and list hooks (pre-snapshot, pre-push, post-push, post-pull).

    usr runs <dataset>/.usr/hooks/NAME, else <root>/.usr-hooks/NAME. See docs/hooks.md.
    """


@hooks_group.command("install")
@click.argument("args", nargs=-1, metavar="[DATASET] [NAME ...]")
@click.option("--root-wide", is_flag=True, help="Install into <root>/.usr-hooks/ (every dataset).")
@click.option("--force", is_flag=True, help="Replace an existing hook with other content.")
@click.option("--symlink", is_flag=True, help="Link to the shipped hook instead of copying it.")
@format_option
@pass_settings
def install(
    settings: Settings, args: tuple[str, ...], root_wide: bool, force: bool, symlink: bool, fmt: str
) -> None:
    """Install the shipped hooks (default: all of them) for DATASET or the whole root."""
    root = settings.root
    names = list(args)
    if root_wide:
        target = hookmod.root_hooks_dir(root)
        where = f"root {root}"
    else:
        if not names:
            raise UsageError("name a dataset, or pass --root-wide", "usr hooks install DS")
        dataset_dir = resolve_dataset(settings, names.pop(0))
        dataset_id = dataset_label(root, dataset_dir)
        target = hookmod.dataset_hooks_dir(dataset_dir)
        where = f"dataset {dataset_id}"
    available = shipped_hooks()
    for name in names:
        if name not in hookmod.HOOK_NAMES:
            raise InputError(
                f"unknown hook {name!r}", f"hooks are: {', '.join(hookmod.HOOK_NAMES)}"
            )
        if name not in available:
            raise NotFoundError(
                f"usr ships no {name} hook", f"shipped: {', '.join(available) or 'none'}"
            )
    results = []
    for name in names or list(available):
        status = _install_one(available[name], target / name, force, symlink)
        results.append({"hook": name, "status": status, "path": str(target / name)})
        if status == "kept":
            warn(f"kept existing {name} hook {target / name}: it differs (use --force)")
    text = "\n".join(f"{r['status']}\t{r['hook']}\t{r['path']}" for r in results)
    emit(fmt, {"target": where, "hooks": results}, text)


def _describe(path: Path | None) -> dict[str, object]:
    if path is None:
        return {"path": None, "executable": False, "shipped": None}
    shipped = None
    try:
        source = shipped_hooks().get(path.name)
        shipped = bool(source and filecmp.cmp(source, path, shallow=False))
    except NotFoundError:
        pass
    return {"path": str(path), "executable": os.access(path, os.X_OK), "shipped": shipped}


@hooks_group.command("list")
@click.argument("dataset", required=False, metavar="[DATASET]")
@format_option
@pass_settings
def list_hooks(settings: Settings, dataset: str | None, fmt: str) -> None:
    """Show which hook runs for DATASET (or root-wide), from where, and whether it is the
    shipped one. Columns: NAME, SCOPE (dataset|root|-), EXECUTABLE, SHIPPED, PATH."""
    root = settings.root
    dataset_dir = resolve_dataset(settings, dataset) if dataset else None
    rows = []
    for name in hookmod.HOOK_NAMES:
        path = hookmod.find_hook(name, dataset_dir, root)
        scope = "-"
        if path is not None:
            scope = "root" if path.parent == hookmod.root_hooks_dir(root) else "dataset"
        rows.append({"hook": name, "scope": scope, **_describe(path)})
    lines = []
    for r in rows:
        executable = "-" if r["path"] is None else ("yes" if r["executable"] else "NO")
        shipped = {True: "shipped", False: "custom", None: "-"}[r["shipped"]]
        lines.append(f"{r['hook']}\t{r['scope']}\t{executable}\t{shipped}\t{r['path'] or '-'}")
    emit(fmt, {"root": str(root), "dataset": dataset, "hooks": rows}, "\n".join(lines))


COMMANDS = [hooks_group]
