"""``usr remotes ...``: manage remote profiles, check them, and warm up logins.

Profiles live in one TOML file (see :mod:`usr.remotes`). ``doctor`` walks every layer a
sync depends on — reach the host, trust its key, log in, find a compatible usr, a writable
base_dir, a working lock and free disk — one line each, so the first failing line names what
to fix.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from porcelain.options import (
    complete_remote,
    emit,
    format_option,
    remotes_config_option,
    warn_if_open,
)
from usr import remotes as profiles
from usr.errors import AuthError, InputError, TransportError, UsageError, UsrError

PRESETS: dict[str, dict[str, Any]] = {
    "bu-scc": {"host": "scc1.bu.edu", "port": 22, "batch_mode": True, "remote_usr": "usr"},
}


def _load(remotes_config: str | None) -> tuple[Any, dict[str, profiles.Profile]]:
    path = profiles.config_path(remotes_config)
    warn_if_open(path)
    return path, profiles.load(path)


def _get(name: str, remotes_config: str | None) -> profiles.Profile:
    path = profiles.config_path(remotes_config)
    warn_if_open(path)
    return profiles.get(name, remotes_config)


@click.group("remotes")
def remotes_group() -> None:
    """Remote profiles (remotes.toml): list, show, add, remove, doctor, status, warm-auth."""


@remotes_group.command("list")
@remotes_config_option
@format_option
def list_command(remotes_config: str | None, fmt: str) -> None:
    """One line per profile: NAME TAB TYPE TAB WHERE."""
    path, found = _load(remotes_config)
    rows = [f"{n}\t{p.type}\t{p.describe()}" for n, p in sorted(found.items())]
    data = {"config": str(path), "remotes": {n: p.to_toml() for n, p in sorted(found.items())}}
    emit(fmt, data, "\n".join(rows) if rows else None)
    if not rows and fmt == "text":
        click.echo(f"no remotes in {path} (add one with: usr remotes add NAME ...)", err=True)


@remotes_group.command("show")
@click.argument("name")
@remotes_config_option
@format_option
def show_command(name: str, remotes_config: str | None, fmt: str) -> None:
    """Every setting of one profile."""
    p = _get(name, remotes_config)
    table = p.to_toml()
    text = "\n".join([f"[remotes.{name}]"] + [f"{k} = {v!r}" for k, v in table.items()])
    emit(fmt, {"name": name, **table}, text)


@remotes_group.command("add")
@click.argument("name")
@click.option(
    "--type",
    "kind",
    type=click.Choice(["ssh", "local", "s3"]),
    default="ssh",
    show_default=True,
    help="ssh: a host reached over SSH; local: a directory on this machine; "
    "s3: a bucket of an S3 object store.",
)
@click.option("--host", default=None, help="SSH login host (required for --type ssh).")
@click.option("--user", default=None, help="SSH login user (default: ~/.ssh/config, else yours).")
@click.option("--port", type=int, default=None, help="SSH port (default 22).")
@click.option("--base-dir", default=None, help="Datasets root on that machine (ssh, local).")
@click.option("--batch-mode/--no-batch-mode", default=True, help="Forbid prompts (default).")
@click.option("--remote-usr", default="usr", help="Command that runs usr on the remote.")
@click.option("--ssh-key", default=None, help="Private key file.")
@click.option("--ssh-key-env", default=None, help="Env var holding the private key's path.")
@click.option("--known-hosts", default=None, help="known_hosts file (default ~/.ssh/...).")
@click.option("--endpoint", default=None, help="S3 endpoint URL (s3; default AWS).")
@click.option("--bucket", default=None, help="S3 bucket (required for --type s3).")
@click.option("--prefix", default=None, help="Key prefix the datasets live under (s3).")
@click.option("--region", default=None, help="S3 region (s3; default us-east-1).")
@click.option("--access-key-env", default=None, help="Env var holding the access key id (s3).")
@click.option("--secret-key-env", default=None, help="Env var holding the secret access key (s3).")
@click.option("--force", is_flag=True, help="Replace an existing profile of that name.")
@remotes_config_option
def add_command(
    name: str,
    kind: str,
    host: str | None,
    user: str | None,
    port: int | None,
    base_dir: str | None,
    batch_mode: bool,
    remote_usr: str,
    ssh_key: str | None,
    ssh_key_env: str | None,
    known_hosts: str | None,
    endpoint: str | None,
    bucket: str | None,
    prefix: str | None,
    region: str | None,
    access_key_env: str | None,
    secret_key_env: str | None,
    force: bool,
    remotes_config: str | None,
) -> None:
    """Add a profile (written with mode 0600). Credentials are never written: an s3
    profile reads them from the environment at use."""
    profiles.validate_name(name)
    if kind != "s3" and not base_dir:
        raise UsageError("--base-dir is required for --type ssh and --type local")
    profile = profiles.Profile(
        name=name,
        type=kind,
        host=host,
        user=user,
        port=port,
        base_dir=base_dir or "",
        batch_mode=batch_mode,
        remote_usr=remote_usr,
        ssh_key=ssh_key,
        ssh_key_env=ssh_key_env,
        known_hosts=known_hosts,
        endpoint=endpoint,
        bucket=bucket,
        prefix=prefix,
        region=region,
        access_key_env=access_key_env,
        secret_key_env=secret_key_env,
    )
    path = profiles.add(profile, remotes_config, replace=force)
    click.echo(f"added remote {name} ({profile.describe()}) to {path}", err=True)


@remotes_group.command("remove")
@click.argument("name")
@remotes_config_option
def remove_command(name: str, remotes_config: str | None) -> None:
    """Remove profile NAME from the remotes file (datasets are not touched)."""
    path = profiles.remove(name, remotes_config)
    click.echo(f"removed remote {name} from {path}", err=True)


# -- doctor ----------------------------------------------------------------------------------


class _Report:
    def __init__(self) -> None:
        self.checks: list[dict[str, Any]] = []
        self.first_error: UsrError | None = None

    def add(self, check: str, ok: bool, detail: str, hint: str | None = None) -> None:
        self.checks.append({"check": check, "ok": ok, "detail": detail, "hint": hint})

    def fail(self, check: str, exc: UsrError) -> None:
        self.add(check, False, exc.message, exc.hint)
        self.first_error = self.first_error or exc

    def skip(self, *checks: str) -> None:
        for check in checks:
            self.add(check, False, "not checked (an earlier check failed)")

    def text(self) -> str:
        lines = []
        for c in self.checks:
            mark = "pass" if c["ok"] else "FAIL"
            hint = f" -> {c['hint']}" if c["hint"] and not c["ok"] else ""
            lines.append(f"{mark}  {c['check']:<14} {c['detail']}{hint}")
        return "\n".join(lines)


_LATER = ("remote usr", "base_dir", "test lock", "free disk")


def _doctor_connect(profile: profiles.Profile, report: _Report) -> Any | None:
    """connect / host key / auth as three lines; returns an open session or None."""
    from usr import ssh

    where = f"{profile.host}:{profile.port or 22}"
    try:
        conn = ssh.connect(profile, interactive=False if profile.batch_mode else None)
    except AuthError as exc:
        report.add("connect", True, f"reached {where}")
        if "host key" in exc.message:
            report.fail("host key", exc)
            report.skip("auth", *_LATER)
        else:
            report.add("host key", True, "matches known_hosts")
            report.fail("auth", exc)
            report.skip(*_LATER)
        return None
    except (TransportError, InputError) as exc:  # InputError: a file the profile names
        report.fail("connect", exc)
        report.skip("host key", "auth", *_LATER)
        return None
    report.add("connect", True, f"reached {where}")
    report.add("host key", True, f"matches known_hosts ({ssh.host_fingerprint(profile)})")
    report.add("auth", True, f"logged in as {profile.user or 'default user'}")
    return ssh.session_on(conn, profile, f"remote {profile.name}", None, close_connection=True)


def _doctor_s3(profile: profiles.Profile, report: _Report) -> _Report:
    """credentials / bucket for an object-store remote (no usr runs there)."""
    from usr.sync.bucket import Bucket

    try:
        bucket = Bucket(profile, f"remote {profile.name}")
    except UsrError as exc:
        report.fail("credentials", exc)
        report.skip("bucket")
        return report
    report.add("credentials", True, "access key pair found in the environment")
    try:
        bucket.probe()
    except UsrError as exc:
        report.fail("bucket", exc)
        return report
    report.add("bucket", True, f"{bucket.label} answers with these credentials")
    try:
        honoured = bucket.conditional_writes()
    except UsrError as exc:
        report.fail("conditional writes", exc)
        return report
    if not honoured:
        report.fail("conditional writes", TransportError(
            f"remote {profile.name}: {bucket.label} ignores conditional writes "
            "(If-None-Match: * and If-Match are not enforced)",
            "use a store that enforces them (AWS S3, SeaweedFS, MinIO): without them two "
            "pushes can overwrite each other's ref",
        ))  # fmt: skip
        return report
    report.add("conditional writes", True, "If-None-Match and If-Match are enforced")
    return report


def doctor(profile: profiles.Profile) -> _Report:
    """Run every check; never raises for a failed check (it becomes a FAIL line)."""
    from usr.sync.client import spawn_local
    from usr.sync.peercheck import peer_text

    report = _Report()
    if profile.type == "s3":
        return _doctor_s3(profile, report)
    if profile.type == "local":
        report.add("connect", True, "local remote (no network)")
        session = spawn_local(profile.base_dir, profile.remote_usr, f"remote {profile.name}")
    else:
        session = _doctor_connect(profile, report)
        if session is None:
            return report
    with session:
        try:
            hello = session.hello()
        except UsrError as exc:
            report.fail("remote usr", exc)
            report.skip(*_LATER[1:])
            return report
        report.add(
            "remote usr",
            True,
            peer_text(f"usr {hello.get('usr_version')} speaks protocol {hello.get('protocol')}"),
        )
        # The remote's words reach the terminal: one line each, no control characters.
        info = {k: peer_text(v) if isinstance(v, str) else v for k, v in session.probe().items()}
    base = info.get("root")
    if not info.get("root_exists"):
        report.add("base_dir", False, f"{base} does not exist", "create it on the remote")
    elif not info.get("root_writable"):
        report.add("base_dir", False, f"{base} is not writable", "fix its permissions")
    else:
        report.add("base_dir", True, f"{base} exists and is writable")
    if info.get("lock_ok"):
        report.add("test lock", True, "fcntl lock taken and released on the remote")
    elif not info.get("root_exists"):
        report.add("test lock", False, "not checked (base_dir missing)")
    else:
        report.add(
            "test lock",
            False,
            f"cannot lock in {base}: {info.get('lock_error') or 'base_dir unusable'}",
            "the file system must support fcntl locks (not every NFS mount does)",
        )
    free = info.get("free_bytes")
    if free is None:
        report.add("free disk", False, "unknown (base_dir missing)")
    else:
        ok = free >= 1 << 30
        report.add(
            "free disk",
            ok,
            f"{free / (1 << 30):.1f} GiB free",
            None if ok else "free space on the remote before pushing",
        )
    return report


def remote_name(func: Any) -> Any:
    """The remote a command is about: ``NAME`` as an argument, as ``usr remotes show NAME``
    takes it, or ``--remote NAME`` (the spelling the runbooks use); either, once."""
    func = click.argument(
        "name_arg", metavar="NAME", required=False, shell_complete=complete_remote
    )(func)
    return click.option(
        "--remote", "name_opt", default=None, metavar="NAME", help="Profile name (same as NAME)."
    )(func)


def one_name(name_arg: str | None, name_opt: str | None) -> str:
    if name_arg and name_opt and name_arg != name_opt:
        raise UsageError(f"two remotes named: {name_arg} and --remote {name_opt}", "name one")
    name = name_arg or name_opt
    if not name:
        raise UsageError("which remote? name it: NAME or --remote NAME", "usr remotes list")
    return name


@remotes_group.command("doctor")
@remote_name
@remotes_config_option
@format_option
def doctor_command(
    name_arg: str | None, name_opt: str | None, remotes_config: str | None, fmt: str
) -> None:
    """Check a remote end to end; one line per check with pass/FAIL and a fix hint."""
    name = one_name(name_arg, name_opt)
    profile = _get(name, remotes_config)
    report = doctor(profile)
    ok = all(c["ok"] for c in report.checks)
    emit(fmt, {"remote": name, "ok": ok, "checks": report.checks}, report.text())
    if not ok:
        sys.exit(report.first_error.exit_code if report.first_error else 6)


@remotes_group.command("status")
@remote_name
@remotes_config_option
@format_option
def status_command(
    name_arg: str | None, name_opt: str | None, remotes_config: str | None, fmt: str
) -> None:
    """Is the remote reachable, how long the handshake took, is a warm-auth holder live."""
    name = one_name(name_arg, name_opt)
    from usr.sync import connholder
    from usr.sync.client import open_session

    profile = _get(name, remotes_config)
    holder = connholder.status(profile) if profile.type == "ssh" else None
    start = time.monotonic()
    data: dict[str, Any] = {"remote": name, "holder": bool(holder)}
    try:
        with open_session(profile) as session:
            data.update(reachable=True, usr_version=session.server.get("usr_version"))
    except UsrError as exc:
        data.update(reachable=False, error=exc.one_line())
    data["handshake_seconds"] = round(time.monotonic() - start, 3)
    if data["reachable"]:
        text = f"{name}: reachable, handshake {data['handshake_seconds']:.2f}s"
    else:
        text = f"{name}: unreachable ({data['error']})"
    if profile.type == "ssh":
        text += "; warm-auth holder " + ("live" if holder else "not running")
    emit(fmt, data, text)
    if not data["reachable"]:
        sys.exit(6)


@remotes_group.command("warm-auth")
@remote_name
@click.option("--stop", is_flag=True, help="Stop the holder instead of starting it.")
@remotes_config_option
def warm_auth_command(
    name_arg: str | None, name_opt: str | None, stop: bool, remotes_config: str | None
) -> None:
    """Log in once (answering MFA on the terminal) and keep the connection for later commands.

    A holder process keeps it on a per-user unix socket (mode 0600) until it has been idle
    for idle_timeout seconds (default 600). Commands work without it.
    """
    name = one_name(name_arg, name_opt)
    from usr.sync import connholder

    profile = _get(name, remotes_config)
    if profile.type != "ssh":
        raise UsageError(
            f"remote {name} is a local remote: there is no login to warm",
            "warm-auth is for ssh remotes; local ones need no login",
        )
    if stop:
        stopped = connholder.stop(profile)
        click.echo(f"{name}: holder {'stopped' if stopped else 'was not running'}", err=True)
        return
    path = connholder.start(profile)
    click.echo(
        f"{name}: logged in; connection held at {path} until idle for {profile.idle_timeout:g}s",
        err=True,
    )


SSH_CONFIG_SNIPPET = """\
Host {host}
    User {user}
    ControlMaster auto
    ControlPath ~/.ssh/cm-%r@%h:%p
    ControlPersist 10m
    ServerAliveInterval 30"""


@remotes_group.command("wizard")
@click.option(
    "--preset",
    type=click.Choice(sorted(PRESETS)),
    required=True,
    help="Cluster preset (login host, port, batch mode).",
)
@click.option("--name", required=True, help="Profile name to write.")
@click.option("--user", required=True, help="Your login user on the cluster.")
@click.option("--base-dir", required=True, help="Datasets root on the cluster.")
@click.option("--host", default=None, help="Override the preset's login host.")
@click.option("--force", is_flag=True, help="Replace an existing profile of that name.")
@remotes_config_option
def wizard_command(
    preset: str,
    name: str,
    user: str,
    base_dir: str,
    host: str | None,
    force: bool,
    remotes_config: str | None,
) -> None:
    """Write a profile from a cluster preset and print the matching ~/.ssh/config snippet."""
    settings = dict(PRESETS[preset])
    if host:
        settings["host"] = host
    profile = profiles.Profile(name=name, type="ssh", user=user, base_dir=base_dir, **settings)
    path = profiles.add(profile, remotes_config, replace=force)
    click.echo(f"added remote {name} ({profile.describe()}) to {path}", err=True)
    click.echo("# add to ~/.ssh/config so plain ssh shares the login:", err=True)
    click.echo(SSH_CONFIG_SNIPPET.format(host=settings["host"], user=user))
    click.echo(f"# then check it: usr remotes doctor --remote {name}", err=True)


COMMANDS = [remotes_group]
