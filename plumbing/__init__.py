"""Plumbing: exact, stable, scriptable commands over the store (``usr plumbing ...``).

Output here is a contract: stable columns, ``-z`` for NUL-separated paths, ``--format
json``, no colour, no prose. Each module holds one family and exposes ``COMMANDS``; a
module is imported only when one of its commands runs (:mod:`plumbing.lazy`), so ``usr
plumbing serve`` does not load pyarrow through ``verify-sidecars``.
"""

from __future__ import annotations

import click

from plumbing.lazy import Lazy, LazyGroup

#: Which module defines each plumbing command, and its one-line help.
TABLE: dict[str, Lazy] = {
    "hash-object": Lazy(
        "plumbing.objects",
        "Print the tree-entry id FILE would get (a blob id, or a manifest blob id).",
    ),
    "cat-file": Lazy(
        "plumbing.objects",
        "Show an object by id, revision or REV:PATH: -t type, -s size, -p content.",
    ),
    "write-tree": Lazy(
        "plumbing.objects",
        "Write the tree of the working files (objects only; no commit, no ref) and print it.",
    ),
    "commit-tree": Lazy(
        "plumbing.objects",
        "Write a commit of TREE with the given parents (no ref moves) and print its id.",
    ),
    "update-ref": Lazy(
        "plumbing.refs",
        "Move REF from OLD to NEW atomically (compare-and-swap); exit 8 if REF is not OLD.",
    ),
    "rev-parse": Lazy(
        "plumbing.refs",
        "Print the commit id of each REV (ids, abbreviations, HEAD, HEAD~N, ref names).",
    ),
    "rev-list": Lazy(
        "plumbing.refs",
        "Commits reachable from REVs and not from ^REVs, newest first (one id per line).",
    ),
    "ls-tree": Lazy(
        "plumbing.trees", "List a tree (default HEAD): mode, type, id, whole-file size, path."
    ),
    "diff-tree": Lazy(
        "plumbing.trees", "Per-file differences from A to B (commits, revisions or tree ids)."
    ),
    "diff-records": Lazy(
        "plumbing.records",
        "Records added (A), removed (D) and changed (M) from state A to state B, by id.",
    ),
    "serve": Lazy(
        "plumbing.transport",
        "Speak the usr protocol on stdin/stdout for one client (run by ssh or a local remote).",
    ),
    "ls-remote": Lazy(
        "plumbing.transport",
        "Print the remote dataset's refs: '<commit> TAB <ref>' per line (nothing if absent).",
    ),
    "fetch-pack": Lazy(
        "plumbing.transport",
        "Fetch the remote head's objects and chunks; move refs/remotes/REMOTE/main only.",
    ),
    "send-pack": Lazy(
        "plumbing.transport",
        "Send the local head's missing objects and chunks; fast-forward the remote under its lock.",
    ),
    "verify-sidecars": Lazy(
        "plumbing.verify",
        "Check every _derived and auxiliary file of a state (default: the working files).",
    ),
}


@click.group(cls=LazyGroup, table=TABLE)
def plumbing() -> None:
    """Low-level commands with stable, scriptable output."""


COMMANDS = [plumbing]
