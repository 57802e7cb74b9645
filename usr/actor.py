"""Who did it: the actor string recorded as commit author and in ``.events.log``.

An actor names the tool and version, the user and the host, so a log line or a commit
read on the laptop says which cluster job (or which person) wrote it:
``usr/0.1.0 alice@scc1``. ``$USR_ACTOR`` overrides the user part (batch jobs, tests).
"""

from __future__ import annotations

import getpass
import os
import socket
from dataclasses import dataclass

from usr import __version__

TOOL = "usr"


@dataclass(frozen=True)
class Actor:
    """The tool, its version, the user and the host behind a recorded change."""

    tool: str
    version: str
    user: str
    host: str

    def as_string(self) -> str:
        """``tool/version user@host`` — the form used in commits and events."""
        return f"{self.tool}/{self.version} {self.user}@{self.host}"

    def as_dict(self) -> dict[str, str]:
        return {"tool": self.tool, "version": self.version, "user": self.user, "host": self.host}

    @property
    def email(self) -> str:
        """``user@host``: git signatures need an email-shaped field."""
        return f"{self.user}@{self.host}"


def _user() -> str:
    if os.environ.get("USR_ACTOR"):
        return os.environ["USR_ACTOR"]
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid{os.getuid()}"


def current_actor(tool: str = TOOL, version: str = __version__) -> Actor:
    """The actor of this process (user from ``$USR_ACTOR`` or the login name)."""
    host = socket.gethostname().split(".")[0] or "localhost"
    return Actor(tool=tool, version=version, user=_user(), host=host)


def parse_actor(text: str) -> Actor | None:
    """Inverse of :meth:`Actor.as_string`; None if ``text`` is not in that form."""
    head, _, who = text.partition(" ")
    tool, _, version = head.partition("/")
    user, _, host = who.rpartition("@")
    if not (tool and version and user and host):
        return None
    return Actor(tool=tool, version=version, user=user, host=host)
