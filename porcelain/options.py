"""Options and output helpers shared by every command, defined once.

A command declares ``@format_option`` rather than its own ``--format``; read commands print
through :func:`emit`, so ``--format json`` always means ``{"usr_output_version": 1, "data":
...}`` on stdout and nothing else there.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import click

from usr import OUTPUT_VERSION
from usr.errors import UsageError
from usr.layout import resolve_root


@dataclass
class Settings:
    """What the root group parsed; reached in commands through ``@pass_settings``."""

    root_option: str | None = None
    debug: bool = False
    #: ``-q``: no text on success (JSON, warnings and errors still print).
    quiet: bool = False
    #: ``-v``: every path, not the first ones.
    verbose: bool = False
    #: ``--color auto|always|never`` (``--no-color`` is never; ``$NO_COLOR`` makes auto never).
    color: str = "auto"
    #: ``--no-pager`` clears it: long text on a terminal goes through ``$PAGER``.
    pager: bool = True

    @property
    def root(self) -> Path:
        return resolve_root(self.root_option)


pass_settings = click.make_pass_decorator(Settings, ensure=True)


def _set_level(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    """``-q``/``-v`` land in the Settings every command reaches (not in its arguments)."""
    if value:
        settings = ctx.ensure_object(Settings)
        if param.name == "quiet":
            settings.quiet = True
        else:
            settings.verbose = True
    return value


_format = click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help='text for people; json prints {"usr_output_version": 1, "data": ...} and nothing else.',
)
_quiet = click.option(
    "-q",
    "--quiet",
    is_flag=True,
    expose_value=False,
    callback=_set_level,
    help="Print nothing on success but what --format json asks for; errors still print.",
)
_verbose = click.option(
    "-v",
    "--verbose",
    is_flag=True,
    expose_value=False,
    callback=_set_level,
    help="Say more: every path rather than the first ones, and what each step did.",
)


def format_option(func: Any) -> Any:
    """``--format text|json``, ``-q/--quiet`` and ``-v/--verbose``: the output options every
    read and sync command shares, declared once."""
    return _format(_quiet(_verbose(func)))


def output_level() -> Settings:
    """The Settings of the running command (quiet, verbose), or the defaults outside one."""
    ctx = click.get_current_context(silent=True)
    found = ctx.find_object(Settings) if ctx is not None else None
    return found if found is not None else Settings()


yes_option = click.option(
    "-y",
    "--yes",
    is_flag=True,
    help="Do not prompt; needed to overwrite when stdin is not a terminal.",
)


def complete_dataset(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    """Shell completion of DATASET: the ids under the root (``--root``, else ``$USR_ROOT``)."""
    from click.shell_completion import CompletionItem

    from usr.dataset import list_datasets

    top = ctx.find_root().params.get("root_option")
    try:
        ids = list_datasets(resolve_root(top))
    except Exception:  # noqa: BLE001 - completion must never print an error into a shell
        return []
    return [CompletionItem(i) for i in ids if i.startswith(incomplete)]


def complete_remote(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    """Shell completion of REMOTE: the profile names of the remotes config."""
    from click.shell_completion import CompletionItem

    from usr import remotes

    try:
        names = sorted(remotes.load(remotes.config_path(ctx.params.get("remotes_config"))))
    except Exception:  # noqa: BLE001 - completion must never print an error into a shell
        return []
    return [CompletionItem(n) for n in names if n.startswith(incomplete)]


dataset_argument = click.argument("dataset", metavar="DATASET", shell_complete=complete_dataset)

#: ``--max-ids N`` of the record diffs (``show --rows``, ``diff --rows``, ``plumbing
#: diff-records``): how many ids the report lists; counts are always whole.
max_ids_option = click.option(
    "--max-ids",
    type=click.IntRange(min=0),
    default=20,
    show_default=True,
    metavar="N",
    help="Ids listed in the record diff (JSON ids and samples); counts are always whole.",
)


class FlagPair(click.Option):
    """A ``--x/--no-x`` flag that refuses being named both ways (exit 2): click's own pair
    keeps whichever came last, so ``--verify-sidecars --no-verify-sidecars`` ran."""

    def add_to_parser(self, parser: Any, ctx: click.Context) -> None:
        parser.add_option(
            obj=self, opts=self.opts, dest=self.name, action="append_const", const=True
        )
        parser.add_option(
            obj=self, opts=self.secondary_opts, dest=self.name, action="append_const", const=False
        )

    def process_value(self, ctx: click.Context, value: Any) -> Any:
        if not isinstance(value, list):
            return value  # not named: the default
        if len(set(value)) > 1:
            on, off = self.opts[0], self.secondary_opts[0]
            raise UsageError(
                f"{on} cannot be combined with {off}",
                "they contradict each other; keep the one you mean",
            )
        return value[-1]


_warned_open: set[str] = set()


def warn_if_open(path: Path) -> None:
    """Warn (once per file) when the remotes file is readable by group or others: it names
    hosts, users and key paths. Every command that takes ``--remotes-config`` checks."""
    from usr import remotes

    if str(path) not in _warned_open and remotes.is_too_open(path):
        _warned_open.add(str(path))
        warn(f"{path} is readable by group or others; run: chmod 600 {path}")


def _check_remotes_config(ctx: click.Context, param: click.Parameter, value: str | None):
    from usr import remotes

    warn_if_open(remotes.config_path(value))
    return value


remotes_config_option = click.option(
    "--remotes-config",
    type=click.Path(dir_okay=False),
    default=None,
    callback=_check_remotes_config,
    help="Remote profiles TOML (else $USR_REMOTES_PATH, else ~/.config/usr/remotes.toml).",
)


def envelope(data: Any) -> dict[str, Any]:
    """The versioned JSON document every ``--format json`` output and audit file uses."""
    return {"usr_output_version": OUTPUT_VERSION, "data": data}


def emit(fmt: str, data: Any, text: str | None = None, page: bool = False) -> None:
    """Print ``data`` as the JSON envelope, or ``text`` for people: coloured by
    :func:`color`, and with ``page`` through the pager when stdout is a terminal."""
    if fmt == "json":
        click.echo(json.dumps(envelope(data), indent=2, sort_keys=True, default=str))
    elif text is not None and not output_level().quiet:
        if page and output_level().pager and sys.stdout.isatty():
            # git's default: quit if one screen, keep colours, do not clear the screen.
            os.environ.setdefault("LESS", "FRX")
            # On a terminal, colour goes to the pager too (less shows it with -R, as git's).
            click.echo_via_pager(text, color=color() is not False)
        else:
            click.echo(text, color=color())


class Later:
    """A value of a streamed document made when :func:`emit_stream` reaches it, so after
    the keys sorted before it (a streamed list's summary, say) are written."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self.make = make


_SCALARS = (str, int, float, bool, type(None))


def emit_stream(data: dict[str, Any], out: TextIO | None = None) -> None:
    """``--format json`` of ``data`` whose values may be iterators (written as lists, item
    by item) and :class:`Later`: the bytes :func:`emit` prints for the same document with
    the lists built, without building them or the whole string (as
    :func:`usr.sync.engine.dump_audit` does for audit files)."""
    out = out or sys.stdout
    _dump(envelope(data), 0, out)
    out.write("\n")
    out.flush()


def _dump(value: Any, level: int, out: TextIO) -> None:
    if isinstance(value, Later):
        value = value.make()
    pad = "  " * (level + 1)
    if isinstance(value, dict) and any(_streamed(v) for v in value.values()):
        sep = "{"
        for key in sorted(value):
            out.write(f"{sep}\n{pad}{json.dumps(key)}: ")
            _dump(value[key], level + 1, out)
            sep = ","
        out.write("\n" + "  " * level + "}")
    elif isinstance(value, Iterator):
        sep = "["
        fields = json.JSONEncoder(sort_keys=True, separators=(",\n" + pad + "  ", ": "))
        for item in value:
            out.write(f"{sep}\n{pad}")
            if isinstance(item, dict) and item and all(type(v) in _SCALARS for v in item.values()):
                # The C encoder with the indented layout's separators (one flat dict).
                out.write(f"{{\n{pad}  {fields.encode(item)[1:-1]}\n{pad}}}")
            else:
                _dump(item, level + 1, out)
            sep = ","
        out.write("[]" if sep == "[" else "\n" + "  " * level + "]")
    else:
        text = json.dumps(value, indent=2, sort_keys=True, default=str)
        out.write(text.replace("\n", "\n" + "  " * level))


def _streamed(value: Any) -> bool:
    return isinstance(value, Later | Iterator) or (
        isinstance(value, dict) and any(_streamed(v) for v in value.values())
    )


def color() -> bool | None:
    """click's ``color`` argument: True (``--color always``), False (``never``,
    ``--no-color``, or ``$NO_COLOR`` set with ``auto``), None (auto: only on a terminal)."""
    choice = output_level().color
    if choice == "always":
        return True
    if choice == "never" or os.environ.get("NO_COLOR"):
        return False
    return None


def paint(text: str, kind: str) -> str:
    """``text`` styled for its ``kind`` (stripped again by click when colour is off)."""
    style = PALETTE.get(kind)
    return click.style(text, **style) if style else text


#: git's colours where git has one: ids yellow, added green, deleted red.
PALETTE: dict[str, dict[str, Any]] = {
    "id": {"fg": "yellow"},
    "added": {"fg": "green"},
    "deleted": {"fg": "red"},
    "modified": {"fg": "yellow"},
    "changes": {"fg": "yellow", "bold": True},
    "up-to-date": {"fg": "green"},
}


def warn(message: str) -> None:
    """A warning on stderr, never on stdout (stdout may carry JSON)."""
    click.echo(f"usr: warning: {message}", err=True)


def stderr_is_terminal() -> bool:
    return sys.stderr.isatty()
