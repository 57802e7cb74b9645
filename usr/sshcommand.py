"""The command lines of an SSH remote: what runs there, and the system ssh that runs it.

Owns :func:`remote_command` (``<remote_usr> plumbing serve --root <base_dir>``, every
word quoted, used by both transports) and :func:`openssh_argv` (the ``ssh`` command line
of the ``transport = "openssh"`` profile option). Imports nothing heavier than the
standard library: choosing the OpenSSH client spares a command the 0.3 s of importing
asyncssh.
"""

from __future__ import annotations

import os
import shlex
from typing import Any


def _word(word: str) -> str:
    if word.startswith("~/"):
        return "~/" + shlex.quote(word[2:])
    return shlex.quote(word)


def remote_command(profile: Any) -> str:
    """``<remote_usr> plumbing serve --root <base_dir> [--repo-root <repo_root>]``, every
    word quoted (a leading ``~/`` is left for the remote shell to expand)."""
    words = shlex.split(profile.remote_usr) or ["usr"]
    parts = [_word(w) for w in words] + ["plumbing", "serve", "--root", _word(profile.base_dir)]
    if getattr(profile, "repo_root", None):
        parts += ["--repo-root", _word(profile.repo_root)]
    return " ".join(parts)


def key_path(profile: Any) -> str | None:
    """The profile's key file: ``$<ssh_key_env>`` if set there, else ``ssh_key``."""
    if profile.ssh_key_env and os.environ.get(profile.ssh_key_env):
        return os.path.expanduser(os.environ[profile.ssh_key_env])
    return os.path.expanduser(profile.ssh_key) if profile.ssh_key else None


def openssh_argv(profile: Any) -> list[str]:
    """``ssh`` with the profile's settings, then the remote command.

    Host keys are checked strictly against the profile's ``known_hosts`` (else the user's):
    nothing is accepted on first sight. ``batch_mode`` forbids every prompt; otherwise
    ssh asks on the terminal (MFA included). The operator's ~/.ssh/config (or the
    profile's ``ssh_config``) applies: ProxyJump, ControlMaster sockets, IdentityFile.
    """
    argv = ["ssh", "-T", "-o", "StrictHostKeyChecking=yes"]
    if profile.ssh_config:
        argv += ["-F", os.path.expanduser(profile.ssh_config)]
    if profile.known_hosts:
        argv += ["-o", f"UserKnownHostsFile={os.path.expanduser(profile.known_hosts)}"]
    key = key_path(profile)
    if key:
        argv += ["-i", key, "-o", "IdentitiesOnly=yes"]
    if profile.batch_mode:
        argv += ["-o", "BatchMode=yes"]
    argv += ["-o", f"ConnectTimeout={max(1, int(profile.connect_timeout))}"]
    if profile.port:
        argv += ["-p", str(profile.port)]
    if profile.user:
        argv += ["-l", profile.user]
    return [*argv, "--", profile.host, remote_command(profile)]
