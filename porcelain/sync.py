"""``usr diff``, ``usr pull``, ``usr push``: the daily sync loop of the runbooks.

Thin click layer over :mod:`usr.sync.engine`: parse and validate flags (refusing combinations
that make no sense, with the reason), resolve the target, ask before overwriting, print the
audit summary. All decisions and the audit itself live in the library.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from porcelain.options import (
    FlagPair,
    Settings,
    color,
    complete_dataset,
    complete_remote,
    format_option,
    max_ids_option,
    output_level,
    paint,
    pass_settings,
    remotes_config_option,
    yes_option,
)
from usr.errors import UsageError
from usr.sync import prestart

if TYPE_CHECKING:
    from collections.abc import Callable

    from usr.sync.options import SyncOptions

# The store, planner and audit are imported inside the commands, after the remote's
# process is started (usr.sync.prestart): their ~0.1 s of imports run beside its start-up.

STRICT_BOOTSTRAP_ENV = "USR_SYNC_STRICT_BOOTSTRAP_ID"


def _sync_options(func):
    """The flags every sync command shares, declared once."""
    decorators = [
        click.argument("dataset", metavar="DATASET", shell_complete=complete_dataset),
        click.argument(
            "remote", metavar="[REMOTE]", required=False, shell_complete=complete_remote
        ),
        remotes_config_option,
        click.option(
            "--primary-only",
            is_flag=True,
            help="Move only records.parquet; refused (exit 2) if other sections changed too.",
        ),
        click.option(
            "--skip-snapshots",
            is_flag=True,
            help="Leave _snapshots/ out; refused (exit 2) if they changed.",
        ),
        click.option(
            "--verify",
            "verify",
            type=click.Choice(["hash", "auto", "size", "parquet"]),
            default="hash",
            show_default=True,
            help="Check of records.parquet after promotion: hash = blake3 (strictest), "
            "parquet = size + footer, size = size only, auto = hash up to 256 MiB.",
        ),
        click.option(
            "--verify-sidecars/--no-verify-sidecars",
            cls=FlagPair,
            default=True,
            show_default=True,
            help="Hash-check meta.md, .events.log and _snapshots (strict) or skip (reduced).",
        ),
        click.option(
            "--verify-derived-hashes/--no-verify-derived-hashes",
            cls=FlagPair,
            default=True,
            show_default=True,
            help="Hash-check _derived and _auxiliary (on) or compare sizes only (reduced).",
        ),
        click.option(
            "--audit-json-out",
            type=click.Path(dir_okay=False),
            default=None,
            metavar="PATH",
            help="Also write the audit JSON here (written on failure too).",
        ),
        click.option(
            "--strict-bootstrap-id",
            is_flag=True,
            default=False,
            help="Refuse to create the dataset on the other side unless its id is "
            f"NAMESPACE/NAME (also ${STRICT_BOOTSTRAP_ENV}=1).",
        ),
        click.option(
            "--remote-path",
            default=None,
            metavar="PATH",
            help="File mode (DATASET is one file): the remote file (else the profile's "
            "repo_root mapping).",
        ),
        click.option(
            "--lock-timeout",
            type=float,
            default=None,
            metavar="SECONDS",
            help="Longest wait for a dataset lock (else $USR_LOCK_TIMEOUT, else 30).",
        ),
    ]
    for deco in reversed(decorators):
        func = deco(func)
    return func


#: ``--no-validate`` (pull, push, merge): the one override of the gate (usr.sync.gate).
no_validate_option = click.option(
    "--no-validate",
    is_flag=True,
    help="Transfer a state even if it fails the gate (records.parquet readable with the core "
    "schema and unique ids, .events.log lines JSON objects); recorded in the audit.",
)


def _explicit(ctx: click.Context, name: str) -> bool:
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def build_options(ctx: click.Context, params: dict[str, Any], action: str) -> SyncOptions:
    """Validate flag combinations and turn them into :class:`SyncOptions`.

    Refused (UsageError, exit 2) with the reason: a flag named together with its negation
    (``--verify-sidecars --no-verify-sidecars``); ``--verify-sidecars`` or
    ``--verify-derived-hashes`` named together with ``--primary-only`` (nothing of those
    sections is transferred, so there is nothing to verify); ``--primary-only`` with
    ``--skip-snapshots`` (redundant); ``--remote-path`` (file mode, one file) with either;
    a non-positive ``--lock-timeout``.
    """
    sidecars, derived = params["verify_sidecars"], params["verify_derived_hashes"]
    primary_only = params["primary_only"]
    if primary_only and _explicit(ctx, "verify_sidecars") and sidecars:
        raise UsageError(
            "--verify-sidecars cannot be combined with --primary-only",
            "--primary-only transfers no sidecars, so there is nothing to verify",
        )
    if primary_only and _explicit(ctx, "verify_derived_hashes") and derived:
        raise UsageError(
            "--verify-derived-hashes cannot be combined with --primary-only",
            "--primary-only transfers no _derived/_auxiliary files, so there is nothing to hash",
        )
    if primary_only and params["skip_snapshots"]:
        raise UsageError(
            "--skip-snapshots cannot be combined with --primary-only",
            "--primary-only already leaves _snapshots out; drop one of them",
        )
    if params.get("lock_timeout") is not None and params["lock_timeout"] <= 0:
        raise UsageError("--lock-timeout must be a positive number of seconds")
    if params.get("remote_path") is not None and (primary_only or params["skip_snapshots"]):
        raise UsageError(
            "--remote-path (file mode) cannot be combined with --primary-only/--skip-snapshots",
            "file mode moves exactly one file",
        )
    strict = params["strict_bootstrap_id"] or os.environ.get(STRICT_BOOTSTRAP_ENV, "") in (
        "1",
        "true",
        "yes",
    )
    from usr.sync.options import SyncOptions

    return SyncOptions(
        dry_run=bool(params.get("dry_run")),
        primary_only=primary_only,
        skip_snapshots=params["skip_snapshots"],
        verify=params["verify"],
        verify_sidecars=False if primary_only else sidecars,
        verify_derived_hashes=False if primary_only else derived,
        strict_bootstrap_id=strict,
        lock_timeout=params.get("lock_timeout"),
        remote_path=params.get("remote_path"),
        remotes_config=params.get("remotes_config"),
        no_verify=bool(params.get("no_verify")),
        no_validate=bool(params.get("no_validate")),
        merge=bool(params.get("merge")),
        rows=bool(params.get("rows")),
        max_ids=params.get("max_ids", 20),
    )


#: Flags that speak of a dataset (sections, history, hooks, the gate): refused in file mode
#: whenever they are named, whatever their value.
DATASET_ONLY_FLAGS = (
    ("--verify", "verify"),
    ("--verify-sidecars", "verify_sidecars"),
    ("--verify-derived-hashes", "verify_derived_hashes"),
    ("--primary-only", "primary_only"),
    ("--skip-snapshots", "skip_snapshots"),
    ("--strict-bootstrap-id", "strict_bootstrap_id"),
    ("--merge", "merge"),
    ("--no-verify", "no_verify"),
    ("--no-validate", "no_validate"),
    ("--rows", "rows"),
    ("--max-ids", "max_ids"),
)


def _as_named(flag: str, value: Any) -> str:
    """The flag as the command line gave it: ``--verify size``, ``--no-verify-sidecars``."""
    if isinstance(value, str):
        return f"{flag} {value}"
    if value is False and flag.startswith("--verify-"):
        return "--no-" + flag[2:]
    return flag


def _check_file_mode(ctx: click.Context, params: dict[str, Any]) -> None:
    """Refuse dataset-only flags on a single file, naming why (file mode always checks
    blake3 and has no sections, history, hooks or gate)."""
    named = [
        _as_named(flag, params[name])
        for flag, name in DATASET_ONLY_FLAGS
        if name in params and _explicit(ctx, name)
    ]
    if named:
        raise UsageError(
            f"{named[0]} does not apply to file mode ({params['dataset']} is a single file)",
            "file mode always verifies by blake3 and has no sections or history",
        )


def confirmer(yes: bool, action: str) -> Callable[[str], bool] | None:
    """The question asked before a pull/push overwrites anything: None with ``-y``, as
    nobody is asked (so a push checks its local record on a thread beside the transfer,
    not before it: ``usr.sync.push``); else, on a terminal we ask, and otherwise we refuse
    (never overwrite silently)."""
    if yes:
        return None

    def confirm(summary: str) -> bool:
        if not sys.stdin.isatty():
            raise UsageError(
                f"{action} would overwrite files and stdin is not a terminal",
                "rerun with -y to confirm, or use --dry-run to preview",
            )
        click.echo(summary, err=True)
        return click.confirm(f"Proceed with {action}?", default=False, err=True)

    return confirm


def _run(settings: Settings, ctx: click.Context, action: str, params: dict[str, Any]) -> None:
    prestart.start(params.get("remote"), params.get("remotes_config"))
    from usr.sync import audit as audit_mod
    from usr.sync import engine

    options = build_options(ctx, params, action)
    if action != "diff" and not options.dry_run:
        options.confirm = confirmer(params["yes"], action)
    target = engine.resolve_target(settings.root, params["dataset"], options)
    if target.kind == "file":
        _check_file_mode(ctx, params)
    if params.get("remote") is None:
        params["remote"] = engine.upstream(target)
    audit_out = Path(params["audit_json_out"]) if params.get("audit_json_out") else None
    fn = {"diff": engine.diff, "pull": engine.pull, "push": engine.push}[action]
    if options.merge:  # engine.merge dry-runs the merge first: conflicts change nothing
        fn = engine.merge
    doc = fn(target, params["remote"], options, audit_json_out=audit_out)
    fmt = params.get("fmt", "text")
    level = output_level()
    if fmt == "json":
        # The same document --audit-json-out writes: the usual envelope plus top-level
        # "changes", so one jq query works on either.
        engine.dump_audit(doc, sys.stdout)  # streamed: no whole-document string
        sys.stdout.flush()
    elif level.quiet:
        pass
    elif target.kind == "file":
        from usr.sync import filemode

        click.echo(filemode.render_text(doc), color=color())
    else:
        paths = None if level.verbose else audit_mod.PATHS_SHOWN
        click.echo(audit_mod.render_text(doc, paths, paint), color=color())
    if params.get("exit_code") and doc["data"].get("status") == "CHANGES":
        sys.exit(1)  # git diff --exit-code: 1 when the sides differ


@click.command("diff")
@_sync_options
@click.option(
    "--rows",
    is_flag=True,
    help="Also diff the records: added/removed/changed by id and overlay values "
    "(data.records; the remote's records.parquet and parts are fetched into the store).",
)
@max_ids_option
@format_option
@click.option(
    "--exit-code",
    is_flag=True,
    help="Exit 1 when the two sides differ (Status: CHANGES), 0 when up-to-date (git diff).",
)
@pass_settings
@click.pass_context
def diff_command(ctx: click.Context, settings: Settings, **params: Any) -> None:
    """Compare DATASET here with REMOTE, section by section; change nothing.

    DATASET is an id under --root (densegen/my_dataset), a dataset directory, or one file
    (file mode); REMOTE is a profile name from the remotes config (usr remotes list).
    Both working trees are computed (nothing is recorded, no working file or branch moves);
    the remote-tracking ref refs/remotes/REMOTE/main is refreshed, as git fetch does.
    Prints the relation (equal, local-ahead, remote-ahead, diverged, ...), one line per
    section, and ends with Status: CHANGES or Status: up-to-date.
    """
    _run(settings, ctx, "diff", params)


@click.command("pull")
@_sync_options
@yes_option
@click.option("--dry-run", is_flag=True, help="Say what a pull would do; change nothing.")
@click.option(
    "--merge",
    is_flag=True,
    help="When the histories diverged, merge the remote states in (three-way; see usr merge).",
)
@click.option(
    "--no-verify",
    is_flag=True,
    help="Skip the post-pull hook (recorded as skipped in the audit).",
)
@no_validate_option
@format_option
@pass_settings
@click.pass_context
def pull_command(ctx: click.Context, settings: Settings, **params: Any) -> None:
    """Bring REMOTE's newer states of DATASET here (fast-forward only).

    DATASET and REMOTE as for usr diff (a dataset absent here is created). Both sides
    record their working state first. Files are staged, verified, then promoted; nothing
    changes when it fails. Refused (exit 8) when local has newer states (push instead) or
    the histories diverged (--merge, or usr merge). Asks before changing files; -y answers
    yes, and without a terminal -y is required (exit 2).
    """
    _run(settings, ctx, "pull", params)


@click.command("push")
@_sync_options
@yes_option
@click.option("--dry-run", is_flag=True, help="Say what a push would do; change nothing.")
@click.option(
    "--no-verify",
    is_flag=True,
    help="Skip the pre-push and post-push hooks (recorded as skipped in the audit).",
)
@no_validate_option
@format_option
@pass_settings
@click.pass_context
def push_command(ctx: click.Context, settings: Settings, **params: Any) -> None:
    """Send DATASET's newer local states to REMOTE (fast-forward only).

    DATASET and REMOTE as for usr diff (a dataset absent on REMOTE is created there). Both
    sides record first; missing objects and chunks stream without any lock held, then the
    remote ref moves by compare-and-swap and the remote checkout is verified before success
    is reported. Refused (exit 8) with "remote has newer states; pull first" when behind, or
    as diverged. A pre-push hook may refuse (exit 10). Asks before changing files; -y
    answers yes, and without a terminal -y is required (exit 2).
    """
    _run(settings, ctx, "push", params)


COMMANDS: list[click.Command] = [diff_command, pull_command, push_command]
