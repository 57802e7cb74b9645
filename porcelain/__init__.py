"""Operator commands. The root click group lives in ``porcelain.cli`` and mounts ``plumbing``."""
