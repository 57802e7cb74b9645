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

remotes_config_option = click.option(
    "--remotes-config",
    type=click.Path(dir_okay=False),
    default=None,
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
