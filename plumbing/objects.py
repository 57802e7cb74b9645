"""Object plumbing: hash-object, cat-file, write-tree, commit-tree.

Every command takes an optional leading DATASET (an id under ``--root`` or a directory);
without it the dataset is the one containing the current directory. Output is one id per
line, or the raw object for ``cat-file -p``.
"""

from __future__ import annotations

import sys

import click

from porcelain.options import pass_settings
from porcelain.targets import dataset_from_cwd, resolve_dataset
from usr.errors import NotFoundError, UsageError
from usr.store import Store
from usr.store.objects import inline_limit
from usr.store.worktree import hash_file


def split_dataset(settings, args: tuple[str, ...], wanted: int) -> tuple[Store, list[str]]:
    """``(store, rest)``: a leading DATASET when ``args`` has ``wanted + 1`` items, else
    the dataset containing the current directory."""
    args = list(args)
    if len(args) == wanted + 1:
        return Store.open(resolve_dataset(settings, args[0]), create=False), args[1:]
    if len(args) == wanted:
        return Store.open(dataset_from_cwd(), create=False), args
    raise UsageError(f"expected {wanted} arguments after an optional DATASET, got {len(args)}")


def split_dataset_variadic(settings, args: tuple[str, ...]) -> tuple[Store, list[str]]:
    """Like :func:`split_dataset` for commands taking any number of revisions: the first
    argument is the dataset unless the current directory is inside one and it is not."""
    args = list(args)
    try:
        here = dataset_from_cwd()
    except Exception:  # noqa: BLE001 - not inside a dataset: the first argument must be one
        here = None
    if args and (here is None or len(args) > 1):
        try:
            path = resolve_dataset(settings, args[0])
        except Exception:  # noqa: BLE001 - not a dataset: it is a revision
            path = None
        if path is not None and (path / ".usr" / "HEAD").exists():
            return Store.open(path, create=False), args[1:]
    if here is None:
        raise UsageError("name a DATASET, or run this inside a dataset directory")
    return Store.open(here, create=False), args


@click.command("hash-object")
@click.argument("args", nargs=-1, required=True, metavar="[DATASET] FILE")
@click.option("-w", "write", is_flag=True, help="Also write the blob/manifest and chunks.")
@pass_settings
def hash_object(settings, args: tuple[str, ...], write: bool) -> None:
    """Print the tree-entry id FILE would get (a blob id, or a manifest blob id)."""
    if not write and len(args) == 1:
        oid, _ = hash_file(args[0], inline_limit(), None, None)
        click.echo(oid)
        return
    store, rest = split_dataset(settings, args, 1)
    if write:
        with store.chunks.writer() as writer:
            oid, _ = hash_file(rest[0], inline_limit(), store.repo, writer)
    else:
        oid, _ = hash_file(rest[0], inline_limit(), None, None)
    click.echo(oid)


def object_id(store: Store, name: str) -> str:
    """The object ``name`` names: an object id, a revision (its commit), or ``REV:PATH`` (the
    tree entry at PATH in that state, as git spells it; ``REV:`` is the state's tree)."""
    if store.has_object(name):
        return name
    rev, colon, path = name.partition(":")
    if not colon:
        return store.resolve(name)
    tree = store.repo[store.tree_of(rev or "HEAD")]
    path = path.strip("/")
    if not path:
        return str(tree.id)
    try:
        return str(tree[path].id)
    except KeyError:
        raise NotFoundError(f"{path!r} is not in state {rev or 'HEAD'}") from None


@click.command("cat-file")
@click.argument("args", nargs=-1, required=True, metavar="[DATASET] OBJECT")
@click.option("-t", "mode", flag_value="type", help="Print the object type.")
@click.option("-s", "mode", flag_value="size", help="Print the object size in bytes.")
@click.option("-p", "mode", flag_value="print", help="Print the object content.")
@click.option(
    "--file-size", "mode", flag_value="file-size", help="Whole-file size behind an entry."
)
@click.option(
    "--file", "mode", flag_value="file", help="File content behind an entry (follows manifests)."
)
@pass_settings
def cat_file(settings, args: tuple[str, ...], mode: str | None) -> None:
    """Show an object by id, revision or REV:PATH: -t type, -s size, -p content.

    For a manifest blob -p prints the manifest text; --file prints the file it describes,
    streamed and verified chunk by chunk.
    """
    if mode is None:
        raise UsageError("choose one of -t, -s, -p, --file-size, --file")
    store, rest = split_dataset(settings, args, 1)
    oid = object_id(store, rest[0])
    if mode == "file":
        for piece in store.open_entry(oid, oid):
            sys.stdout.buffer.write(piece)
        sys.stdout.buffer.flush()
        return
    if mode == "file-size":
        click.echo(store.entry_size(oid))
        return
    kind, data = store.read_object(oid)
    if mode == "type":
        click.echo(kind)
    elif mode == "size":
        click.echo(len(data))
    elif kind == "tree":
        for entry in store.repo[oid]:
            kind_of = "tree" if entry.filemode == 0o040000 else "blob"
            click.echo(f"{entry.filemode:06o} {kind_of} {entry.id}\t{entry.name}")
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()


@click.command("write-tree")
@click.argument("args", nargs=-1, metavar="[DATASET]")
@pass_settings
def write_tree(settings, args: tuple[str, ...]) -> None:
    """Write the tree of the working files (objects only; no commit, no ref) and print it."""
    store, _ = split_dataset(settings, args, 0)
    click.echo(store.working_tree())


@click.command("commit-tree")
@click.argument("args", nargs=-1, required=True, metavar="[DATASET] TREE")
@click.option("-p", "parents", multiple=True, metavar="COMMIT", help="A parent (repeatable).")
@click.option("-m", "message", default="commit-tree", show_default=True, help="First line: action.")
@pass_settings
def commit_tree(settings, args: tuple[str, ...], parents: tuple[str, ...], message: str) -> None:
    """Write a commit of TREE with the given parents (no ref moves) and print its id."""
    store, rest = split_dataset(settings, args, 1)
    tree = store.tree_of(rest[0])
    action, _, body = message.partition("\n")
    commit = store.commit_tree(
        tree, [store.resolve(p) for p in parents], action.strip() or "commit-tree", None, body
    )
    click.echo(commit)


COMMANDS = [hash_object, cat_file, write_tree, commit_tree]
