"""Tree plumbing: ls-tree and diff-tree, the exact file lists scripts build on.

Output formats (stable; documented in docs/cli.md "Plumbing"):

``ls-tree``  ``<mode> <type> <id> <size>\\t<path>`` (size ``-`` for trees)
``diff-tree`` ``<status>\\t<section>\\t<old_id>\\t<new_id>\\t<old_size>\\t<new_size>\\t<path>``
with ``-`` for an absent side. ``-z`` ends each record with NUL instead of newline (paths
are printed verbatim). ``--format json`` prints the usual envelope.
"""

from __future__ import annotations

import sys

import click

from plumbing.objects import split_dataset
from porcelain.options import envelope, format_option, pass_settings
from usr.store.worktree import MODE_TREE


def _write(fmt: str, data, records: list[str], nul: bool) -> None:
    import json

    if fmt == "json":
        click.echo(json.dumps(envelope(data), indent=2, sort_keys=True))
        return
    end = "\0" if nul else "\n"
    sys.stdout.write("".join(r + end for r in records))
    sys.stdout.flush()


@click.command("ls-tree")
@click.argument("args", nargs=-1, metavar="[DATASET] [REV]")
@click.option("-r", "recursive", is_flag=True, help="Recurse: list every file.")
@click.option("-z", "nul", is_flag=True, help="End records with NUL, not newline.")
@format_option
@pass_settings
def ls_tree(settings, args: tuple[str, ...], recursive: bool, nul: bool, fmt: str) -> None:
    """List a tree (default HEAD): mode, type, id, whole-file size, path."""
    if len(args) == 2 or (len(args) == 1 and _is_dataset(settings, args[0])):
        store, rest = split_dataset(settings, args, len(args) - 1)
    else:
        store, rest = split_dataset(settings, args, len(args))
    rev = rest[0] if rest else "HEAD"
    tree = store.tree_of(rev)
    rows = []
    if recursive:
        for path, oid, mode in store.ls_tree(tree):
            rows.append(
                {
                    "mode": f"{mode:06o}",
                    "type": "blob",
                    "id": oid,
                    "path": path,
                    "size": store.entry_size(oid),
                }
            )
    else:
        for e in store.repo[tree]:
            is_tree = e.filemode == MODE_TREE
            rows.append(
                {
                    "mode": f"{e.filemode:06o}",
                    "type": "tree" if is_tree else "blob",
                    "id": str(e.id),
                    "path": e.name,
                    "size": None if is_tree else store.entry_size(str(e.id)),
                }
            )
    records = [
        f"{r['mode']} {r['type']} {r['id']} {'-' if r['size'] is None else r['size']}\t{r['path']}"
        for r in rows
    ]
    _write(fmt, {"tree": tree, "entries": rows}, records, nul)


def _is_dataset(settings, arg: str) -> bool:
    from porcelain.targets import resolve_dataset

    try:
        return (resolve_dataset(settings, arg) / ".usr" / "HEAD").exists()
    except Exception:  # noqa: BLE001 - not a dataset: a revision
        return False


@click.command("diff-tree")
@click.argument("args", nargs=-1, required=True, metavar="[DATASET] A B")
@click.option("-z", "nul", is_flag=True, help="End records with NUL, not newline.")
@format_option
@pass_settings
def diff_tree(settings, args: tuple[str, ...], nul: bool, fmt: str) -> None:
    """Per-file differences from A to B (commits, revisions or tree ids).

    One record per path: status (A/M/D), section, old and new ids, old and new sizes, path.
    """
    store, (a, b) = split_dataset(settings, args, 2)
    changes = store.diff(a, b)
    records = [
        "\t".join(
            [
                c.status,
                c.section,
                c.old_id or "-",
                c.new_id or "-",
                "-" if c.old_size is None else str(c.old_size),
                "-" if c.new_size is None else str(c.new_size),
                c.path,
            ]
        )
        for c in changes
    ]
    data = {"a": store.tree_of(a), "b": store.tree_of(b), "changes": [c.as_dict() for c in changes]}
    _write(fmt, data, records, nul)


COMMANDS = [ls_tree, diff_tree]
