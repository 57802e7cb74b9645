"""Plumbing: exact, stable, scriptable commands over the store (``usr plumbing ...``).

Output here is a contract: stable columns, ``-z`` for NUL-separated paths, ``--format
json``, no colour, no prose. Each module holds one family and exposes ``COMMANDS``.
"""

from __future__ import annotations

import click


@click.group()
def plumbing() -> None:
    """Low-level commands with stable, scriptable output."""


def _register() -> None:
    from plumbing import objects, records, refs, transport, trees, verify

    for module in (objects, refs, trees, records, transport, verify):
        for command in module.COMMANDS:
            plumbing.add_command(command)


_register()
