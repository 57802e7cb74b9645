"""The root ``usr`` command group and the one place errors become exit codes."""

from __future__ import annotations

import os
import sys
import traceback
from typing import NoReturn

import click

from plumbing.lazy import Lazy, LazyGroup
from porcelain.options import Settings
from usr import __version__
from usr.errors import UsrError, store_damage

#: Which module defines each top-level command, and its one-line help. A command's module
#: (and what it imports: pyarrow, pygit2, asyncssh) is loaded only when that command runs,
#: so ``usr diff`` does not pay for pyarrow and ``usr --version`` and ``usr --help`` pay for
#: nothing. tests/test_cli_startup.py checks this table against each module's ``COMMANDS``.
COMMANDS_TABLE: dict[str, Lazy] = {
    "attach": Lazy(
        "porcelain.lifecycle",
        "Attach overlay columns of a registered namespace as a new part under _derived/.",
    ),
    "checkout": Lazy(
        "porcelain.history", "Restore the working files of DATASET to recorded state COMMIT."
    ),
    "demo": Lazy(
        "porcelain.demo",
        "Play the HPC <-> laptop loop on a scratch local remote; needs no SSH and no config.",
    ),
    "dev": Lazy("porcelain.demo", None),
    "diff": Lazy(
        "porcelain.sync",
        "Compare DATASET here with REMOTE, section by section; change nothing.",
    ),
    "drill": Lazy(
        "porcelain.demo",
        "Deterministic end-to-end drills that check sync fidelity and write a JSON report.",
    ),
    "events": Lazy("porcelain.lifecycle", "Read a dataset's .events.log."),
    "export": Lazy(
        "porcelain.lifecycle",
        "Write the overlay view to DIR/<dataset>.<fmt> (ids with / become __).",
    ),
    "fsck": Lazy(
        "porcelain.history",
        "Verify every reachable object and chunk of DATASET by hash, and that .events.log "
        "only ever grew by appended lines.",
    ),
    "gc": Lazy(
        "porcelain.history",
        "Remove objects, chunks and crash leftovers that no recorded state reaches.",
    ),
    "head": Lazy(
        "porcelain.lifecycle",
        "The first N rows of the overlay view (records plus overlay columns).",
    ),
    "hooks": Lazy(
        "porcelain.hookcmds",
        "Install and list hooks (pre-snapshot, pre-push, post-push, post-pull).",
    ),
    "import": Lazy(
        "porcelain.lifecycle",
        "Append the records of a csv/tsv/parquet/jsonl file (needs a 'sequence' column).",
    ),
    "info": Lazy(
        "porcelain.lifecycle",
        "Rows, sizes, overlay namespaces, events and the recorded head of a dataset.",
    ),
    "init": Lazy(
        "porcelain.lifecycle",
        "Create an empty dataset (records.parquet, meta.md, .events.log, .usr/).",
    ),
    "log": Lazy(
        "porcelain.history",
        "Recorded states of DATASET, newest first: id, time, actor, action.",
    ),
    "ls": Lazy("porcelain.lifecycle", "List the datasets under the root."),
    "merge": Lazy(
        "porcelain.merge",
        "Merge REMOTE's states of DATASET with the local ones (three-way, from their base).",
    ),
    "namespace": Lazy(
        "porcelain.lifecycle",
        "Register and inspect overlay namespaces (registry.toml under the root).",
    ),
    "plumbing": Lazy("plumbing", "Low-level commands with stable, scriptable output."),
    "pull": Lazy(
        "porcelain.sync", "Bring REMOTE's newer states of DATASET here (fast-forward only)."
    ),
    "push": Lazy(
        "porcelain.sync", "Send DATASET's newer local states to REMOTE (fast-forward only)."
    ),
    "remotes": Lazy(
        "porcelain.remotes",
        "Remote profiles (remotes.toml): list, show, add, remove, doctor, status, warm-auth.",
    ),
    "schema": Lazy(
        "porcelain.lifecycle", "Columns of the overlay view with their types and origin."
    ),
    "show": Lazy(
        "porcelain.history",
        "One recorded state of DATASET and what it changed against its parent.",
    ),
    "snapshot": Lazy(
        "porcelain.history",
        "Record the working state of DATASET as a new state (no-op if unchanged).",
    ),
    "status": Lazy(
        "porcelain.history",
        "Working files of DATASET against its last recorded state, by section and file.",
    ),
    "validate": Lazy(
        "porcelain.lifecycle",
        "Check records, overlays, events and meta; exit 5 when a check fails.",
    ),
}


#: Root options may also come after the command (git's ``-C`` is global too): ``--root``,
#: ``--debug``, ``--color``, ``--no-color``, ``--no-pager`` are moved in front before click
#: parses, except for ``plumbing``, whose ``serve`` has a ``--root`` of its own.


def hoist_globals(args: list[str]) -> list[str]:
    """``usr status DS --root DIR`` as ``usr --root DIR status DS``."""
    command, i = None, 0
    while i < len(args):
        if args[i] in ("--root", "--color"):
            i += 2  # and its value
            continue
        if not args[i].startswith("-"):
            command = i
            break
        i += 1
    if command is None or args[command] == "plumbing":
        return args
    front, rest, i = list(args[:command]), [], command
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest += args[i:]
            break
        if arg in ("--debug", "--no-color", "--no-pager") or arg.startswith(
            ("--root=", "--color=")
        ):
            front.append(arg)
        elif arg in ("--root", "--color") and i + 1 < len(args):
            front += [arg, args[i + 1]]
            i += 1
        else:
            rest.append(arg)
        i += 1
    return front + rest


@click.group(
    cls=LazyGroup,
    table=COMMANDS_TABLE,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.option(
    "--root",
    "root_option",
    envvar=None,
    default=None,
    metavar="DIR",
    help="Datasets root (else $USR_ROOT, else ./datasets).",
)
@click.option("--debug", is_flag=True, help="Show tracebacks on errors (also USR_DEBUG=1).")
@click.option(
    "--color",
    "color",
    type=click.Choice(["auto", "always", "never"]),
    default="auto",
    show_default=True,
    help="Colour the text output: on a terminal (auto, off when $NO_COLOR is set), always, never.",
)
@click.option("--no-color", is_flag=True, help="The same as --color never.")
@click.option("--no-pager", is_flag=True, help="Print long text (usr log) without $PAGER.")
@click.version_option(__version__, prog_name="usr")
@click.pass_context
def root(
    ctx: click.Context,
    root_option: str | None,
    debug: bool,
    color: str,
    no_color: bool,
    no_pager: bool,
) -> None:
    """usr keeps sequence datasets in sync between machines, like git for datasets.

    Each dataset directory carries its own object store (.usr/); every recorded state is a
    commit. Daily loop: usr diff DS REMOTE, then usr pull / usr push.

    New here? 'usr demo' plays the whole loop with nothing set up; docs/quickstart.md then
    sets it up against your cluster. 'usr COMMAND --help' explains each command; errors are
    one line 'usr: error: ...' whose exit code docs/troubleshooting.md explains.
    """
    ctx.obj = Settings(
        root_option=root_option,
        debug=debug,
        color="never" if no_color else color,
        pager=not no_pager,
    )


def mount_all() -> None:
    """Mount every command (for callers that walk ``root``'s tree of commands)."""
    root.mount_all()


def _debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("USR_DEBUG") == "1"


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; map every failure to one line on stderr and a documented exit code."""
    args = hoist_globals(list(sys.argv[1:] if argv is None else argv))
    try:
        rv = root.main(args=args, prog_name="usr", standalone_mode=False)
    except BaseException as exc:  # noqa: BLE001 - fail() maps each kind to its exit code
        fail(exc, args)
    if isinstance(rv, int):
        sys.exit(rv)


def fail(exc: BaseException, args: list[str]) -> NoReturn:
    """The one place a failure becomes a line on stderr and an exit code."""
    try:
        raise exc
    except SystemExit:
        raise
    except UsrError as err:
        if _debug_requested(args):
            traceback.print_exc()
        click.echo(f"usr: error: {err.one_line()}", err=True)
        sys.exit(err.exit_code)
    except click.exceptions.Abort:
        click.echo("usr: error: aborted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        hint = ""
        if isinstance(err, click.UsageError) and err.ctx is not None:
            hint = f" (see '{err.ctx.command_path} --help')"
        click.echo(f"usr: error: {' '.join(err.format_message().split())}{hint}", err=True)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        click.echo("usr: error: interrupted", err=True)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(141)
    except Exception as err:  # noqa: BLE001 - the last line of defence
        if _debug_requested(args):
            traceback.print_exc()
        damage = store_damage(err)
        if damage is not None:
            click.echo(f"usr: error: {damage.one_line()}", err=True)
            sys.exit(damage.exit_code)
        click.echo(
            f"usr: error: internal error: {type(err).__name__}: {err} "
            "(rerun with --debug and report it)",
            err=True,
        )
        sys.exit(1)
