"""Placeholder; filled by its issue."""

COMMANDS: list = []
