"""Ref plumbing: update-ref (compare-and-swap), rev-parse, rev-list."""

from __future__ import annotations

import click

from plumbing.objects import split_dataset, split_dataset_variadic
from porcelain.options import pass_settings
from usr.errors import UsageError

ZERO = "0" * 40


@click.command("update-ref")
@click.argument("args", nargs=-1, required=True, metavar="[DATASET] REF NEW OLD")
@pass_settings
def update_ref(settings, args: tuple[str, ...]) -> None:
    """Move REF from OLD to NEW atomically (compare-and-swap); exit 8 if REF is not OLD.

    OLD of 40 zeros means REF must not exist; NEW of 40 zeros deletes it. NEW may be any
    revision; OLD must be the exact id (it is what the caller last saw).
    """
    store, (ref, new, old) = split_dataset(settings, args, 3)
    if not ref.startswith("refs/"):
        raise UsageError(f"REF must be a full ref name (refs/...), got {ref!r}")
    new_id = None if new == ZERO else store.resolve(new)
    store.update_ref(ref, new_id, None if old == ZERO else old)


@click.command("rev-parse")
@click.argument("args", nargs=-1, required=True, metavar="[DATASET] REV...")
@pass_settings
def rev_parse(settings, args: tuple[str, ...]) -> None:
    """Print the commit id of each REV (ids, abbreviations, HEAD, HEAD~N, ref names)."""
    store, revs = split_dataset_variadic(settings, args)
    if not revs:
        raise UsageError("name at least one revision")
    for rev in revs:
        click.echo(store.resolve(rev))


@click.command("rev-list")
@click.argument("args", nargs=-1, required=True, metavar="[DATASET] REV... [^REV...]")
@click.option("-n", "--max-count", "limit", type=int, default=None, help="Print at most N.")
@click.option("--objects", is_flag=True, help="List every object a receiver lacking ^REVs needs.")
@pass_settings
def rev_list(settings, args: tuple[str, ...], limit: int | None, objects: bool) -> None:
    """Commits reachable from REVs and not from ^REVs, newest first (one id per line).

    With --objects: the objects a receiver that has the ^REVs needs, in the order it can
    write them (what a push sends).
    """
    store, revs = split_dataset_variadic(settings, args)
    wants = [store.resolve(r) for r in revs if not r.startswith("^")]
    haves = [store.resolve(r[1:]) for r in revs if r.startswith("^")]
    if not wants:
        raise UsageError("name at least one revision to list")
    if objects:
        for oid in store.missing_objects(wants, haves):
            click.echo(oid)
        return
    want_set = set()
    out = []
    for w in wants:
        for entry in store.log(w):
            if entry.id not in want_set:
                want_set.add(entry.id)
                out.append(entry)
    hidden = set()
    for h in haves:
        hidden |= {e.id for e in store.log(h)}
    out = [e for e in out if e.id not in hidden]
    out.sort(key=lambda e: -e.time)
    for e in out[:limit] if limit is not None else out:
        click.echo(e.id)


COMMANDS = [update_ref, rev_parse, rev_list]
