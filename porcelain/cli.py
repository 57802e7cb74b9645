"""The root ``usr`` command group and the one place errors become exit codes."""

from __future__ import annotations

import os
import sys
import traceback

import click

from porcelain.options import Settings
from usr import __version__
from usr.errors import UsrError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--root",
    "root_option",
    envvar=None,
    default=None,
    metavar="DIR",
    help="Datasets root (else $USR_ROOT, else ./datasets).",
)
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
@click.version_option(__version__, prog_name="usr")
@click.pass_context
def root(ctx: click.Context, root_option: str | None, debug: bool) -> None:
    """usr keeps sequence datasets in sync between machines, like git for datasets.

    Each dataset directory carries its own object store (.usr/); every recorded state is a
    commit. Daily loop: usr diff DS REMOTE, then usr pull / usr push.
    """
    ctx.obj = Settings(root_option=root_option, debug=debug)


def _register() -> None:
    """Mount every command module. Each module exposes ``COMMANDS``, a list of commands."""
    from plumbing import plumbing
    from porcelain import demo, history, hookcmds, lifecycle, merge, remotes, sync

    for module in (lifecycle, history, remotes, sync, merge, hookcmds, demo):
        for command in module.COMMANDS:
            root.add_command(command)
    root.add_command(plumbing)


_register()


def _debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("USR_DEBUG") == "1"


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; map every failure to one line on stderr and a documented exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        rv = root.main(args=args, prog_name="usr", standalone_mode=False)
    except UsrError as exc:
        if _debug_requested(args):
            traceback.print_exc()
        click.echo(f"usr: error: {exc.one_line()}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("usr: error: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        hint = ""
        if isinstance(exc, click.UsageError) and exc.ctx is not None:
            hint = f" (see '{exc.ctx.command_path} --help')"
        click.echo(f"usr: error: {' '.join(exc.format_message().split())}{hint}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("usr: error: interrupted", err=True)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(141)
    except Exception as exc:  # noqa: BLE001 - the last line of defence
        if _debug_requested(args):
            traceback.print_exc()
        click.echo(
            f"usr: error: internal error: {type(exc).__name__}: {exc} "
            "(rerun with --debug and report it)",
            err=True,
        )
        sys.exit(1)
    if isinstance(rv, int):
        sys.exit(rv)
