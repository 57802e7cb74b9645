"""Record plumbing: diff-records, the record-level diff of two states for scripts.

Output (stable; documented in docs/cli.md "Plumbing"): one record per id,
``<status>\\t<id>`` with status ``A`` (added), ``D`` (removed) or ``M`` (changed: core
columns or overlay values), every id, written as it is found; ``-z`` ends each record with
NUL instead of newline. ``--format json`` prints the usual envelope with the counts, the
overlay values per namespace and column, and at most ``--max-ids`` ids.
"""

from __future__ import annotations

import json
import sys

import click

from plumbing.objects import split_dataset
from porcelain.options import envelope, format_option, max_ids_option, pass_settings
from usr.errors import InputError


def related_states(store, a: str, b: str) -> tuple[str, str]:
    """``a`` and ``b`` resolved to commits that share history: two states without a common
    state belong to two different datasets, and a record diff of them says nothing."""
    ca, cb = store.resolve(a), store.resolve(b)
    if ca != cb and store.merge_base(ca, cb) is None:
        raise InputError(
            f"{a} and {b} are states of two different datasets (no common history)",
            "compare states of one dataset (usr log DATASET lists them)",
        )
    return ca, cb


@click.command("diff-records")
@click.argument("args", nargs=-1, required=True, metavar="[DATASET] A B")
@click.option("-z", "nul", is_flag=True, help="End records with NUL, not newline.")
@max_ids_option
@format_option
@pass_settings
def diff_records(settings, args: tuple[str, ...], nul: bool, max_ids: int, fmt: str) -> None:
    """Records added (A), removed (D) and changed (M) from state A to state B, by id.

    One record per id, STATUS<TAB>ID, every id as it is found. A and B are revisions of
    the same dataset; records.parquet is read by row group from the store, unchanged row
    groups are skipped without decoding.
    """
    from usr.record_diff import STATUS, diff_states

    store, (a, b) = split_dataset(settings, args, 2)
    ca, cb = related_states(store, a, b)
    end = "\0" if nul else "\n"
    out = sys.stdout

    def write(kind: str, rid: str) -> None:
        out.write(f"{STATUS[kind]}\t{rid}{end}")

    result = diff_states(
        store, ca, cb, max_ids=max_ids, on_id=None if fmt == "json" else write, labels=(a, b)
    )
    if fmt == "json":
        data = {"a": ca, "b": cb, "records": result.to_json()}
        click.echo(json.dumps(envelope(data), indent=2, sort_keys=True))
    out.flush()


COMMANDS = [diff_records]
