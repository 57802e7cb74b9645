"""Click groups whose commands are imported on first use (``usr`` and ``usr plumbing``).

A command's module brings pyarrow, pygit2 or asyncssh with it, and every pull, push and
diff waits on two interpreter start-ups, so a group names its commands in a table
(:class:`Lazy`: the module that defines each one and its one-line help) and imports a
module only when one of its commands runs. ``--help`` lists the table without importing
anything; tests/test_cli_startup.py holds every table to its modules' ``COMMANDS`` and
their help. Each module exposes ``COMMANDS``, the commands it defines.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass

import click


@dataclass(frozen=True)
class Lazy:
    """One command of a lazy group: the module defining it, and its one-line help as
    ``get_short_help_str`` gives it unshortened (None: a hidden command)."""

    module: str
    help: str | None


class LazyGroup(click.Group):
    """A group whose commands (``table``) are mounted from their module when looked up."""

    def __init__(self, *args, table: dict[str, Lazy] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.table: dict[str, Lazy] = dict(table or {})

    def mount(self, module_name: str) -> None:
        for command in importlib.import_module(module_name).COMMANDS:
            self.add_command(command)

    def mount_all(self) -> None:
        """Mount every command, and those of lazy groups below (for callers that walk the
        tree of commands)."""
        for module_name in dict.fromkeys(lazy.module for lazy in self.table.values()):
            self.mount(module_name)
        for command in self.commands.values():
            if isinstance(command, LazyGroup):
                command.mount_all()

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.table:
            self.mount(self.table[cmd_name].module)
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.commands) | set(self.table))

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """As click's, but a command not yet mounted is shown from the table: ``--help``
        imports no command module."""
        shown: list[tuple[str, click.Command]] = []
        for name in self.list_commands(ctx):
            command = self.commands.get(name)
            if command is None:
                lazy = self.table[name]
                command = click.Command(name, help=lazy.help, hidden=lazy.help is None)
            if not command.hidden:
                shown.append((name, command))
        if shown:
            limit = formatter.width - 6 - max(len(name) for name, _ in shown)
            with formatter.section("Commands"):
                formatter.write_dl([(name, cmd.get_short_help_str(limit)) for name, cmd in shown])

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        """As click's, but a mistyped command is answered with the nearest names (git's
        "Did you mean"), found in the table without importing any module."""
        name = click.utils.make_str(args[0]) if args else ""
        if args and not name.startswith("-") and self.get_command(ctx, name) is None:
            near = difflib.get_close_matches(name, self.list_commands(ctx), n=3, cutoff=0.6)
            if near:
                ctx.fail(f"No such command {name!r}. Did you mean {' or '.join(map(repr, near))}?")
        return super().resolve_command(ctx, args)
