"""Remote profiles: the ``remotes.toml`` file that names where each remote lives.

Looked up from ``--remotes-config PATH``, else ``$USR_REMOTES_PATH``, else
``~/.config/usr/remotes.toml`` — never an example file, so a typo in a path can not silently
point a push at the wrong cluster. The file may hold host names, user names and key paths, so
it is written 0600 and a warning is given when someone else can read it.
"""

from __future__ import annotations

import os
import shlex
import stat
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import tomli_w

from usr.atomic import write_bytes
from usr.errors import InputError, NotFoundError

REMOTES_ENV = "USR_REMOTES_PATH"
DEFAULT_PATH = "~/.config/usr/remotes.toml"
TYPES = ("ssh", "local", "s3")
#: Keys only an ``s3`` profile may set, and those it may not.
S3_KEYS = ("endpoint", "bucket", "prefix", "region", "access_key_env", "secret_key_env")
NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")

#: Known keys of a profile, with their TOML types. Anything else is refused by name.
_KEYS: dict[str, type | tuple[type, ...]] = {
    "type": str,
    "host": str,
    "user": str,
    "port": int,
    "base_dir": str,
    "batch_mode": bool,
    "remote_usr": str,
    "ssh_key": str,
    "ssh_key_env": str,
    "known_hosts": str,
    "ssh_config": str,
    "connect_timeout": (int, float),
    "idle_timeout": (int, float),
    "repo_root": str,
    "local_repo_root": str,
    "endpoint": str,
    "bucket": str,
    "prefix": str,
    "region": str,
    "access_key_env": str,
    "secret_key_env": str,
}

#: How a wrong-typed value is explained: what the key needs, and what writing it looks like.
_KIND_WORDS: dict[type | tuple[type, ...], tuple[str, str]] = {
    str: ("a string", '"..." in quotes'),
    int: ("an integer", "22 without quotes"),
    bool: ("true or false", "true without quotes"),
}


@dataclass
class Profile:
    """One ``[remotes.NAME]`` table. ``remote_usr`` may be several words (``uv run usr``)."""

    name: str
    type: str = "ssh"
    host: str | None = None
    user: str | None = None
    port: int | None = None
    base_dir: str = ""
    batch_mode: bool = True
    remote_usr: str = "usr"
    ssh_key: str | None = None
    ssh_key_env: str | None = None
    known_hosts: str | None = None
    ssh_config: str | None = None
    connect_timeout: float = 20.0
    idle_timeout: float = 600.0
    repo_root: str | None = None
    local_repo_root: str | None = None
    #: ``s3`` only: the S3 endpoint URL, bucket, key prefix, region, and the names of the
    #: environment variables holding the credentials (never the credentials themselves).
    endpoint: str | None = None
    bucket: str | None = None
    prefix: str | None = None
    region: str | None = None
    access_key_env: str | None = None
    secret_key_env: str | None = None

    def to_toml(self) -> dict[str, Any]:
        """The table as written: defaults that were never set are left out."""
        out: dict[str, Any] = {}
        defaults = Profile(name=self.name)
        for key, value in asdict(self).items():
            if key == "name" or value is None or (key == "base_dir" and self.type == "s3"):
                continue
            if key != "type" and value == getattr(defaults, key) and key != "base_dir":
                continue
            out[key] = value
        return out

    def describe(self) -> str:
        if self.type == "local":
            return f"local {self.base_dir}"
        if self.type == "s3":
            where = "/".join(x for x in (self.bucket, (self.prefix or "").strip("/")) if x)
            return f"s3 {self.endpoint or 'aws'} {where}"
        who = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        return f"ssh {who}{self.host}{port}:{self.base_dir}"


def config_path(option: str | os.PathLike[str] | None = None) -> Path:
    """Where profiles are read from and written to (see the module docstring)."""
    chosen = option or os.environ.get(REMOTES_ENV) or DEFAULT_PATH
    return Path(chosen).expanduser()


def is_too_open(path: Path) -> bool:
    """True when group or others may read the file (it names hosts, users and keys)."""
    try:
        return bool(path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO))
    except OSError:
        return False


def validate_name(name: str) -> str:
    if not name or not set(name) <= NAME_CHARS or name[0] in ".-":
        raise InputError(
            f"bad remote name {name!r}", "use letters, digits, '_', '.', '-', e.g. bu-scc"
        )
    return name


def _profile_from_table(name: str, table: Any, path: Path) -> Profile:
    where = f"{path}: remotes.{name}"
    if not isinstance(table, dict):
        raise InputError(f"{where} must be a table", "write [remotes.NAME] with key = value")
    validate_name(name)
    for key, value in table.items():
        if key not in _KEYS:
            raise InputError(f"{where}.{key}: unknown key", f"known: {', '.join(_KEYS)}")
        want = _KEYS[key]
        if not isinstance(value, want) or (isinstance(value, bool) and want is not bool):
            kind, example = _KIND_WORDS.get(want, ("a number", "20"))
            raise InputError(
                f"{where}.{key}: must be {kind}, got {value!r}", f"write {key} = {example}"
            )
    kind = table.get("type", "ssh")
    if kind not in TYPES:
        raise InputError(f"{where}.type: must be 'ssh', 'local' or 's3', got {kind!r}")
    if kind == "s3":
        _check_s3_table(table, where)
    elif not table.get("base_dir"):
        raise InputError(f"{where}.base_dir: missing", "the datasets root on that machine")
    if kind == "ssh" and not table.get("host"):
        raise InputError(f"{where}.host: missing", "an ssh remote needs a host")
    port = table.get("port")
    if port is not None and not 0 < port < 65536:
        raise InputError(f"{where}.port: must be 1..65535, got {port}")
    for key, value in table.items():
        if isinstance(value, str) and "\x00" in value:
            raise InputError(f"{where}.{key}: contains a NUL character")
    if not str(table.get("remote_usr", "usr")).strip():
        raise InputError(f"{where}.remote_usr: empty")
    try:
        shlex.split(table.get("remote_usr", "usr"))
    except ValueError as exc:  # the command is split into words the same way when used
        raise InputError(f"{where}.remote_usr: {exc}", "quote it as a shell would") from None
    return Profile(name=name, **table)


def _check_s3_table(table: dict[str, Any], where: str) -> None:
    """An ``s3`` profile names a bucket; it has no base_dir, host or SSH keys."""
    if not table.get("bucket"):
        raise InputError(f"{where}.bucket: missing", "an s3 remote needs a bucket")
    for key in ("host", "user", "port", "ssh_key", "ssh_key_env", "known_hosts", "ssh_config"):
        if key in table:
            raise InputError(f"{where}.{key}: not used by an s3 remote", "remove it")
    endpoint = table.get("endpoint")
    if endpoint is not None and not endpoint.startswith(("http://", "https://")):
        raise InputError(
            f"{where}.endpoint: must be an http:// or https:// URL, got {endpoint!r}",
            "e.g. https://s3.us-east-1.amazonaws.com",
        )
    prefix = table.get("prefix", "")
    if any(part in (".", "..") for part in prefix.strip("/").split("/") if part):
        raise InputError(f"{where}.prefix: must not contain '.' or '..' segments")


def load(path: Path) -> dict[str, Profile]:
    """All profiles in ``path`` (empty if the file does not exist), validated."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise InputError(f"cannot read remotes config {path}: {exc.strerror}") from None
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid TOML: {exc}", "fix the file or remove it") from None
    for key in doc:
        if key != "remotes":
            raise InputError(f"{path}: {key}: unknown top-level key", "only [remotes.NAME]")
    remotes = doc.get("remotes", {})
    if not isinstance(remotes, dict):
        raise InputError(f"{path}: remotes must be a table of [remotes.NAME]")
    return {name: _profile_from_table(name, table, path) for name, table in remotes.items()}


def save(path: Path, profiles: dict[str, Profile]) -> None:
    """Write all profiles, atomically, mode 0600."""
    doc = {"remotes": {name: p.to_toml() for name, p in sorted(profiles.items())}}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, tomli_w.dumps(doc).encode("utf-8"), mode=0o600)


def get(name: str, option: str | os.PathLike[str] | None = None) -> Profile:
    """The profile called ``name``; :class:`NotFoundError` names the file searched."""
    path = config_path(option)
    profiles = load(path)
    if not profiles and not path.exists():
        raise NotFoundError(
            f"unknown remote {name!r}: there is no remotes config at {path}",
            f"add the profile with: usr remotes add {name} --type ssh --host H --user U "
            "--base-dir D, or point --remotes-config / $USR_REMOTES_PATH at your file",
        )
    if name not in profiles:
        known = ", ".join(sorted(profiles)) or "none"
        raise NotFoundError(
            f"unknown remote {name!r} in {path} (known: {known})",
            f"add it with: usr remotes add {name} --type ssh --host H --user U --base-dir D",
        )
    return profiles[name]


def add(profile: Profile, option: str | os.PathLike[str] | None = None, replace=False) -> Path:
    """Add (or with ``replace`` overwrite) one profile; validates it like a loaded one."""
    path = config_path(option)
    profiles = load(path)
    if profile.name in profiles and not replace:
        raise InputError(
            f"remote {profile.name!r} already exists in {path}", "remove it first, or use --force"
        )
    table = profile.to_toml()
    profiles[profile.name] = _profile_from_table(profile.name, table, path)
    save(path, profiles)
    return path


def remove(name: str, option: str | os.PathLike[str] | None = None) -> Path:
    path = config_path(option)
    profiles = load(path)
    if name not in profiles:
        raise NotFoundError(f"unknown remote {name!r} in {path}", "usr remotes list shows them")
    del profiles[name]
    save(path, profiles)
    return path
