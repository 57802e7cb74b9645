"""The root ``usr`` command group and the one place errors become exit codes."""

from __future__ import annotations

import difflib
import importlib
import os
import sys
import traceback
from typing import NoReturn

import click

from porcelain.options import Settings
from usr import __version__
from usr.errors import UsrError, store_damage

#: Which module defines each top-level command. A command's module (and what it imports:
#: pyarrow, pygit2, asyncssh) is loaded only when that command runs, so ``usr diff`` does not
#: pay for pyarrow and ``usr --version`` pays for nothing. ``--help`` loads every module.
#: tests/test_cli_startup.py checks this table against each module's ``COMMANDS``.
COMMAND_MODULES: dict[str, str] = {
    **dict.fromkeys(
        ("namespace", "init", "import", "attach", "ls", "info", "head", "schema", "events")
        + ("validate", "export"),
        "porcelain.lifecycle",
    ),
    **dict.fromkeys(
        ("snapshot", "status", "log", "show", "checkout", "gc", "fsck"), "porcelain.history"
    ),
    "remotes": "porcelain.remotes",
    **dict.fromkeys(("diff", "pull", "push"), "porcelain.sync"),
    "merge": "porcelain.merge",
    "hooks": "porcelain.hookcmds",
    **dict.fromkeys(("demo", "dev", "drill"), "porcelain.demo"),
    "plumbing": "plumbing",
}


class LazyGroup(click.Group):
    """The root group: mounts a command's module the first time the command is looked up."""

    def _mount(self, module_name: str) -> None:
        module = importlib.import_module(module_name)
        if module_name == "plumbing":
            self.add_command(module.plumbing)
            return
        for command in module.COMMANDS:
            self.add_command(command)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMAND_MODULES:
            self._mount(COMMAND_MODULES[cmd_name])
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        mount_all()
        return super().list_commands(ctx)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        """As click's, but a mistyped command is answered with the nearest names (git's
        "Did you mean"), found among the commands without loading their modules."""
        name = click.utils.make_str(args[0]) if args else ""
        if args and not name.startswith("-") and self.get_command(ctx, name) is None:
            near = difflib.get_close_matches(name, sorted(COMMAND_MODULES), n=3, cutoff=0.6)
            if near:
                ctx.fail(f"No such command {name!r}. Did you mean {' or '.join(map(repr, near))}?")
        return super().resolve_command(ctx, args)


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


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
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
    """Mount every command module (for ``--help`` and for callers that walk ``root``)."""
    for module_name in dict.fromkeys(COMMAND_MODULES.values()):
        root._mount(module_name)


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
