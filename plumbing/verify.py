"""``usr plumbing verify-sidecars``: are a state's sidecars verified? (used by hooks/pre-push)

Output is a contract: one line per problem, ``path<TAB>check<TAB>expected<TAB>found``
(checks are listed in :mod:`usr.sidecars`), nothing on success; ``--format json`` prints the
report envelope. Exit 0 only when every check passes, else 5 (VerifyError).
"""

from __future__ import annotations

import click

from porcelain.options import Settings, emit, format_option, pass_settings
from porcelain.targets import resolve_dataset
from usr import sidecars
from usr.errors import VerifyError


@click.command("verify-sidecars")
@click.argument("dataset", metavar="DATASET")
@click.argument("commit", metavar="[COMMIT]", required=False)
@click.option(
    "--record",
    is_flag=True,
    help="Vouch: when every other check passes, add the unrecorded sidecars' digests to "
    "the dataset's ledger (_registry/sidecar-ledger.jsonl).",
)
@format_option
@pass_settings
def verify_sidecars(
    settings: Settings, dataset: str, commit: str | None, record: bool, fmt: str
) -> None:
    """Check every _derived and auxiliary file of a state (default: the working files).

    Each sidecar must be in the digest ledger, match its tree entry and the working file,
    and every overlay part must be readable Parquet of a registered namespace with the
    registered column types, the registry's contract hash, and unique join keys present in
    records.parquet; .events.log must be JSON lines that only grew. Prints one line per
    problem: PATH, CHECK, EXPECTED, FOUND (tab-separated).
    """
    root = settings.root
    dataset_dir = resolve_dataset(settings, dataset)
    dataset_id = sidecars.dataset_label(root, dataset_dir)
    state = sidecars.open_state(dataset_dir, commit)
    if record:
        report = sidecars.vouch(state, dataset_id, dataset_dir, root)
    else:
        report = sidecars.check_state(state, dataset_id, root)
    if fmt == "json":
        emit(fmt, report.to_json())
    else:
        lines = [p.line() for p in report.problems]
        lines += [f"recorded\t{path}" for path in report.recorded]
        if lines:
            click.echo("\n".join(lines))
    if not report.ok:
        n = len(report.problems)
        raise VerifyError(
            f"{n} sidecar problem{'s' if n != 1 else ''} in {dataset_id} at {report.state}",
            "each is listed on stdout; fix the files, or vouch for checked ones with "
            "usr plumbing verify-sidecars DS --record",
        )


COMMANDS = [verify_sidecars]
