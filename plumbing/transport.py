"""Transport plumbing: the serve endpoint and the script-level fetch/push primitives.

``serve`` is what a client starts on the remote; ``ls-remote``, ``fetch-pack`` and
``send-pack`` are the exact steps ``usr pull`` / ``usr push`` build on, for scripts that want
them one at a time. Output is a contract: tab-separated columns or ``--format json``.
"""

from __future__ import annotations

import sys

import click

from porcelain.options import emit, format_option, pass_settings, remotes_config_option
from usr.errors import ConflictError, NotFoundError
from usr.layout import dataset_path, validate_dataset_id
from usr.sync.history import set_tracking, tracking_ref

lock_timeout_option = click.option(
    "--lock-timeout",
    type=float,
    default=None,
    metavar="SECONDS",
    help="Longest wait for a dataset lock, here and on the remote (default 30).",
)


@click.command("serve")
@click.option("--root", "base_dir", required=True, metavar="BASE_DIR", help="Datasets served.")
@click.option(
    "--repo-root",
    default=None,
    metavar="DIR",
    help="File mode: a second root whose files may be read and replaced (repo_root).",
)
def serve_command(base_dir: str, repo_root: str | None) -> None:
    """Speak the usr protocol on stdin/stdout for one client (run by ssh or a local remote).

    Serves only datasets under BASE_DIR, and single files (file mode) under BASE_DIR and
    --repo-root; see docs/protocol.md.
    """
    from usr.sync.server import serve

    sys.exit(serve(base_dir, repo_root))


@click.command("ls-remote")
@click.argument("remote")
@click.argument("dataset")
@remotes_config_option
@lock_timeout_option
@format_option
def ls_remote_command(
    remote: str, dataset: str, remotes_config: str | None, lock_timeout: float | None, fmt: str
) -> None:
    """Print the remote dataset's refs: '<commit> TAB <ref>' per line (nothing if absent)."""
    from usr.sync.client import open_session

    validate_dataset_id(dataset)
    with open_session(remote, remotes_config, lock_timeout=lock_timeout) as session:
        heads = session.heads(dataset)
    refs = {k: v for k, v in heads["refs"].items() if v}
    lines = "\n".join(f"{oid}\t{name}" for name, oid in sorted(refs.items()))
    emit(
        fmt,
        {"remote": remote, "dataset": dataset, "exists": heads["exists"], "refs": refs},
        lines or None,
    )


@click.command("fetch-pack")
@click.argument("remote")
@click.argument("dataset")
@remotes_config_option
@lock_timeout_option
@format_option
@pass_settings
def fetch_pack_command(
    settings,
    remote: str,
    dataset: str,
    remotes_config: str | None,
    lock_timeout: float | None,
    fmt: str,
) -> None:
    """Fetch the remote head's objects and chunks; move refs/remotes/REMOTE/main only.

    Working files and refs/heads/main are not touched. Prints the fetched head.
    """
    from usr.store import Store
    from usr.sync.client import open_session

    path = dataset_path(settings.root, dataset)
    with open_session(remote, remotes_config, lock_timeout=lock_timeout) as session:
        head = session.heads(dataset)["head"]
        if head is None:
            raise NotFoundError(f"dataset {dataset!r} has no recorded state on remote {remote}")
        store = Store.open(path, create=True)
        stats = session.fetch(dataset, store, [head])
    set_tracking(store, remote, head)
    ref = tracking_ref(remote)
    emit(
        fmt,
        {
            "remote": remote,
            "dataset": dataset,
            "head": head,
            "ref": ref,
            "objects": stats.objects,
            "chunks": stats.chunks,
            "bytes": stats.wire_bytes_in,
        },
        f"{head}\t{ref}",
    )


@click.command("send-pack")
@click.argument("remote")
@click.argument("dataset")
@remotes_config_option
@lock_timeout_option
@format_option
@pass_settings
def send_pack_command(
    settings,
    remote: str,
    dataset: str,
    remotes_config: str | None,
    lock_timeout: float | None,
    fmt: str,
) -> None:
    """Send the local head's missing objects and chunks; fast-forward the remote under its lock.

    The remote ref moves only by compare-and-swap from the head read at the start, and only
    if that head is an ancestor of the local one; the remote working directory follows.
    """
    from usr.store import Store
    from usr.sync.client import open_session

    path = dataset_path(settings.root, dataset)
    if not (path / ".usr").is_dir():
        raise NotFoundError(f"dataset {dataset!r} has no store at {path}")
    store = Store.open(path, create=False)
    new = store.head()
    if new is None:
        raise NotFoundError(f"dataset {dataset!r} has no recorded state", "usr snapshot it first")
    with open_session(remote, remotes_config, lock_timeout=lock_timeout) as session:
        old = session.heads(dataset)["head"]
        if old is not None and old != new:
            session.fetch_trees(dataset, store, [old])
            if not store.is_ancestor(old, new):
                raise ConflictError(
                    f"remote {remote} head {old[:12]} is not an ancestor of local {new[:12]}",
                    "pull first",
                )
        stats = session.push(dataset, store, new, old) if old != new else None
    set_tracking(store, remote, new)
    emit(
        fmt,
        {
            "remote": remote,
            "dataset": dataset,
            "old": old,
            "new": new,
            "objects": stats.objects if stats else 0,
            "chunks": stats.chunks if stats else 0,
            "bytes": stats.wire_bytes_out if stats else 0,
        },
        f"{old or '-'}\t{new}",
    )


COMMANDS = [serve_command, ls_remote_command, fetch_pack_command, send_pack_command]
