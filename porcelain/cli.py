"""The root ``usr`` command group and the one place errors become exit codes."""

from __future__ import annotations

import importlib
import os
import sys
import traceback

import click

from porcelain.options import Settings
from usr import __version__
from usr.errors import UsrError

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
@click.version_option(__version__, prog_name="usr")
@click.pass_context
def root(ctx: click.Context, root_option: str | None, debug: bool) -> None:
    """usr keeps sequence datasets in sync between machines, like git for datasets.

    Each dataset directory carries its own object store (.usr/); every recorded state is a
    commit. Daily loop: usr diff DS REMOTE, then usr pull / usr push.

    New here? 'usr demo' plays the whole loop with nothing set up; docs/quickstart.md then
    sets it up against your cluster. 'usr COMMAND --help' explains each command; errors are
    one line 'usr: error: ...' whose exit code docs/troubleshooting.md explains.
    """
    ctx.obj = Settings(root_option=root_option, debug=debug)


def mount_all() -> None:
    """Mount every command module (for ``--help`` and for callers that walk ``root``)."""
    for module_name in dict.fromkeys(COMMAND_MODULES.values()):
        root._mount(module_name)


def serve_root(args: list[str]) -> str | None:
    """BASE_DIR when ``args`` is exactly ``plumbing serve --root BASE_DIR``, else None.

    The remote end of every pull and push is this command line. Dispatching it straight to
    the server skips click and every command module: the client waits on that start-up
    before its first reply. Any other spelling (``--help``, extra options) goes through click.
    """
    if args[:2] != ["plumbing", "serve"]:
        return None
    rest = args[2:]
    if len(rest) == 2 and rest[0] == "--root" and rest[1] and not rest[1].startswith("-"):
        return rest[1]
    if len(rest) == 1 and rest[0].startswith("--root=") and len(rest[0]) > len("--root="):
        return rest[0][len("--root=") :]
    return None


def _debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("USR_DEBUG") == "1"


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; map every failure to one line on stderr and a documented exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        base_dir = serve_root(args)
        if base_dir is not None:
            from usr.sync.server import serve

            sys.exit(serve(base_dir))
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
