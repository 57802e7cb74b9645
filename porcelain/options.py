"""Options and output helpers shared by every command, defined once.

A command declares ``@format_option`` rather than its own ``--format``; read commands print
through :func:`emit`, so ``--format json`` always means ``{"usr_output_version": 1, "data":
...}`` on stdout and nothing else there.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from usr import OUTPUT_VERSION
from usr.errors import UsageError
from usr.layout import resolve_root


@dataclass
class Settings:
    """What the root group parsed; reached in commands through ``@pass_settings``."""

    root_option: str | None = None
    debug: bool = False

    @property
    def root(self) -> Path:
        return resolve_root(self.root_option)


pass_settings = click.make_pass_decorator(Settings, ensure=True)

format_option = click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help='text for people; json prints {"usr_output_version": 1, "data": ...} and nothing else.',
)

yes_option = click.option(
    "-y",
    "--yes",
    is_flag=True,
    help="Do not prompt; needed to overwrite when stdin is not a terminal.",
)

dataset_argument = click.argument("dataset", metavar="DATASET")

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


def emit(fmt: str, data: Any, text: str | None = None) -> None:
    """Print ``data`` as the JSON envelope, or ``text`` for people."""
    if fmt == "json":
        click.echo(json.dumps(envelope(data), indent=2, sort_keys=True, default=str))
    elif text is not None:
        click.echo(text)


def warn(message: str) -> None:
    """A warning on stderr, never on stdout (stdout may carry JSON)."""
    click.echo(f"usr: warning: {message}", err=True)


def stderr_is_terminal() -> bool:
    return sys.stderr.isatty()
