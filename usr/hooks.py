"""Hooks: executables a dataset (or a whole datasets root) runs to refuse an operation.

Lookup, first match wins:

1. ``<dataset>/.usr/hooks/<name>`` — this dataset on this machine only (``.usr/`` is never
   transferred, exactly like ``.git/hooks``);
2. ``<root>/.usr-hooks/<name>`` — every dataset under the datasets root, so one install
   covers them all. ``.usr-hooks`` can never be a dataset id (ids start with a letter or
   digit), so it cannot collide with a dataset.

Hooks: ``pre-snapshot``, ``pre-push`` (may refuse), ``post-push``, ``post-pull`` (advisory).
The stdin/argument/environment contract is in docs/hooks.md; this module is the one place
that builds it, so every caller (push, pull, snapshot) gives hooks the same view.

A hook that exists but is not executable is an error, not silently skipped: an operator who
installed a guard must not lose it to a lost ``chmod +x``. A hook that runs past
``$USR_HOOK_TIMEOUT`` seconds (default 60) is killed with its whole process group, so a hung
``ssh`` or ``usr`` child cannot keep the push alive.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from usr.errors import HookRefused
from usr.layout import REGISTRY_FILE, STORE_DIR

HOOK_NAMES = ("pre-snapshot", "pre-push", "post-push", "post-pull")
#: Hooks whose non-zero exit refuses the operation; the others only warn.
REFUSING_HOOKS = frozenset({"pre-snapshot", "pre-push"})
DATASET_HOOKS_DIR = "hooks"  # under <dataset>/.usr/
ROOT_HOOKS_DIR = ".usr-hooks"  # under <root>/
TIMEOUT_ENV = "USR_HOOK_TIMEOUT"
DEFAULT_TIMEOUT = 60.0
ZERO_ID = "0" * 40
MAIN_REF = "refs/heads/main"
#: How much of a hook's stderr the one-line error quotes.
_ERROR_TAIL = 300


@dataclass(frozen=True)
class HookOutcome:
    """What happened to one hook: ``passed``, ``failed`` (advisory hooks only), ``absent``
    (none installed) or ``skipped`` (``--no-verify``). ``path`` is the hook that ran."""

    name: str
    status: str
    path: str | None = None
    exit_code: int | None = None
    stderr: str = ""

    def to_json(self) -> dict[str, object]:
        """The audit-JSON form (``data.hooks[name]``)."""
        out: dict[str, object] = {"status": self.status}
        if self.path is not None:
            out["path"] = self.path
        if self.exit_code is not None:
            out["exit_code"] = self.exit_code
        return out


@dataclass(frozen=True)
class RefUpdate:
    """One stdin line of a push/pull hook: git's ``<local ref> <local id> <remote ref>
    <remote id>``; a missing side is the all-zero id."""

    local_id: str | None
    remote_id: str | None
    local_ref: str = MAIN_REF
    remote_ref: str = MAIN_REF

    def line(self) -> str:
        return (
            f"{self.local_ref} {self.local_id or ZERO_ID} "
            f"{self.remote_ref} {self.remote_id or ZERO_ID}\n"
        )


@dataclass(frozen=True)
class HookContext:
    """Where a hook runs: the dataset directory, its root and id (for the environment)."""

    dataset_dir: Path
    root: Path
    dataset_id: str
    extra_env: Mapping[str, str] = field(default_factory=dict)


def find_root(dataset_dir: Path) -> Path:
    """The datasets root above ``dataset_dir``: the nearest ancestor holding
    ``registry.toml`` or ``.usr-hooks/``, else the parent directory.

    Used when a caller (the store's record path) knows only the dataset directory.
    """
    dataset_dir = Path(dataset_dir).absolute()
    for parent in dataset_dir.parents:
        if (parent / REGISTRY_FILE).is_file() or (parent / ROOT_HOOKS_DIR).is_dir():
            return parent
    return dataset_dir.parent


def context_for(
    dataset_dir: Path, root: Path | None = None, dataset_id: str | None = None
) -> HookContext:
    """Build a :class:`HookContext`, deriving root and id from the directory when not given."""
    dataset_dir = Path(dataset_dir).absolute()
    root = Path(root).absolute() if root is not None else find_root(dataset_dir)
    if dataset_id is None:
        try:
            dataset_id = dataset_dir.relative_to(root).as_posix()
        except ValueError:
            dataset_id = dataset_dir.name
    return HookContext(dataset_dir=dataset_dir, root=root, dataset_id=dataset_id)


def dataset_hooks_dir(dataset_dir: Path) -> Path:
    return Path(dataset_dir) / STORE_DIR / DATASET_HOOKS_DIR


def root_hooks_dir(root: Path) -> Path:
    return Path(root) / ROOT_HOOKS_DIR


def find_hook(name: str, dataset_dir: Path | None, root: Path | None) -> Path | None:
    """The hook file that applies, dataset-level first, or None. Existence only: a present
    but non-executable file is returned so that running it can refuse clearly."""
    if name not in HOOK_NAMES:
        raise ValueError(f"unknown hook {name!r}")
    candidates = []
    if dataset_dir is not None:
        candidates.append(dataset_hooks_dir(dataset_dir) / name)
    if root is not None:
        candidates.append(root_hooks_dir(root) / name)
    for path in candidates:
        if path.is_file():
            return path
    return None


def hook_timeout() -> float:
    """``$USR_HOOK_TIMEOUT`` seconds (default 60); a bad value is refused, not ignored."""
    raw = os.environ.get(TIMEOUT_ENV)
    if raw in (None, ""):
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise HookRefused(f"bad {TIMEOUT_ENV}={raw!r}", "set it to a positive number of seconds")
    return value


def _tee(src: IO[bytes], sink: IO[bytes] | None, buf: bytearray) -> None:
    """Copy a hook's output to our stderr as it arrives and keep it for the error message."""
    for chunk in iter(lambda: src.read1(65536), b""):
        buf.extend(chunk)
        if sink is not None:
            with contextlib.suppress(OSError, ValueError):
                sink.write(chunk)
                sink.flush()


def _stderr_sink() -> IO[bytes] | None:
    return getattr(sys.stderr, "buffer", None)


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return "no message on stderr"
    last = lines[-1]
    return last if len(last) <= _ERROR_TAIL else last[: _ERROR_TAIL - 3] + "..."


def _base_env(ctx: HookContext, name: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "USR_HOOK": name,
            "USR_DATASET": ctx.dataset_id,
            "USR_DATASET_DIR": str(ctx.dataset_dir),
            "USR_ROOT": str(ctx.root),
            # The interpreter running this usr, so a hook can call the same usr
            # (``"$USR_PYTHON" -m usr``) even where no ``usr`` is on PATH.
            "USR_PYTHON": sys.executable,
        }
    )
    env.update(ctx.extra_env)
    return env


def run_hook(
    name: str,
    ctx: HookContext,
    args: Sequence[str] = (),
    stdin: str = "",
    env: Mapping[str, str] | None = None,
) -> HookOutcome:
    """Run hook ``name`` if one is installed; return its outcome.

    Refusing hooks (``pre-*``) raise :class:`HookRefused` on a non-zero exit, with the last
    stderr line in the one-line error; their full output has already gone to our stderr as
    it ran (hook stdout goes to stderr too, as in git, so ``--format json`` stays clean).
    Advisory hooks (``post-*``) return ``failed`` instead. A non-executable hook and a
    timeout raise :class:`HookRefused` for every hook.
    """
    path = find_hook(name, ctx.dataset_dir, ctx.root)
    if path is None:
        return HookOutcome(name, "absent")
    if not os.access(path, os.X_OK):
        raise HookRefused(
            f"{name} hook {path} is not executable",
            f"chmod +x {path} to run it, or remove it",
        )
    timeout = hook_timeout()
    full_env = _base_env(ctx, name)
    full_env.update(env or {})
    try:
        proc = subprocess.Popen(
            [str(path), *args],
            cwd=ctx.dataset_dir if ctx.dataset_dir.is_dir() else None,
            env=full_env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group, so a timeout kills it all
        )
    except OSError as exc:
        raise HookRefused(
            f"{name} hook {path} could not be started: {exc.strerror or exc}",
            "check its #! line and permissions",
        ) from None
    out_buf, err_buf = bytearray(), bytearray()
    sink = _stderr_sink()
    readers = [
        threading.Thread(target=_tee, args=(proc.stdout, sink, out_buf), daemon=True),
        threading.Thread(target=_tee, args=(proc.stderr, sink, err_buf), daemon=True),
    ]
    for t in readers:
        t.start()
    with contextlib.suppress(BrokenPipeError, OSError):
        assert proc.stdin is not None
        proc.stdin.write(stdin.encode())
    with contextlib.suppress(BrokenPipeError, OSError):
        proc.stdin.close()
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        for t in readers:
            t.join(timeout=2)
        _close_pipes(proc, readers)
        raise HookRefused(
            f"{name} hook {path} did not finish within {timeout:g}s; its process group was killed",
            f"fix the hook, or raise {TIMEOUT_ENV}",
        ) from None
    for t in readers:
        # Output of a grandchild that escaped the group may keep a pipe open; do not wait
        # for it forever.
        t.join(timeout=5)
    _close_pipes(proc, readers)
    stderr_text = bytes(err_buf).decode("utf-8", "replace")
    if code == 0:
        return HookOutcome(name, "passed", str(path), 0, stderr_text)
    if name in REFUSING_HOOKS:
        shown = stderr_text if stderr_text.strip() else bytes(out_buf).decode("utf-8", "replace")
        raise HookRefused(
            f"{name} hook refused (exit {code}): {_last_line(shown)}",
            f"see its output above; {path}",
        )
    return HookOutcome(name, "failed", str(path), code, stderr_text)


def _close_pipes(proc: subprocess.Popen[bytes], readers: list[threading.Thread]) -> None:
    """Close the output pipes whose reader finished (one still reading keeps its pipe)."""
    for pipe, reader in zip((proc.stdout, proc.stderr), readers, strict=True):
        if pipe is not None and not reader.is_alive():
            with contextlib.suppress(OSError):
                pipe.close()


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def _audited(
    audit: dict[str, Any] | None, name: str, run: Callable[[], HookOutcome]
) -> HookOutcome:
    """Run ``run`` and note its outcome in ``audit["hooks"][name]`` (the audit JSON's
    ``data``), including ``refused`` when the hook stops the operation."""
    try:
        outcome = run()
    except HookRefused as exc:
        if audit is not None:
            audit.setdefault("hooks", {})[name] = {"status": "refused", "error": exc.one_line()}
        raise
    if audit is not None:
        audit.setdefault("hooks", {})[name] = outcome.to_json()
    return outcome


def verify_env(
    verify: str = "hash",
    verify_sidecars: bool = True,
    verify_derived_hashes: bool = True,
    primary_only: bool = False,
    skip_snapshots: bool = False,
    dry_run: bool = False,
) -> dict[str, str]:
    """The verify settings of a push or pull, as hook environment variables."""
    return {
        "USR_VERIFY": verify,
        "USR_VERIFY_SIDECARS": "1" if verify_sidecars else "0",
        "USR_VERIFY_DERIVED_HASHES": "1" if verify_derived_hashes else "0",
        "USR_PRIMARY_ONLY": "1" if primary_only else "0",
        "USR_SKIP_SNAPSHOTS": "1" if skip_snapshots else "0",
        "USR_DRY_RUN": "1" if dry_run else "0",
    }


def verify_env_from(options: Any) -> dict[str, str]:
    """:func:`verify_env` of anything with the sync flags as attributes (``SyncOptions``)."""
    return verify_env(
        verify=str(getattr(options, "verify", "hash")),
        verify_sidecars=bool(getattr(options, "verify_sidecars", True)),
        verify_derived_hashes=bool(getattr(options, "verify_derived_hashes", True)),
        primary_only=bool(getattr(options, "primary_only", False)),
        skip_snapshots=bool(getattr(options, "skip_snapshots", False)),
        dry_run=bool(getattr(options, "dry_run", False)),
    )


def remote_target(remote: str, remotes_config: str | os.PathLike[str] | None = None) -> str:
    """Where a remote points, as a hook's second argument: ``[user@]host:base_dir``
    (``ssh://[user@]host:port/base_dir`` with a port) for SSH, the base directory for a
    ``local`` remote; the remote name when its profile cannot be read."""
    from usr import remotes
    from usr.errors import UsrError

    try:
        profile = remotes.get(remote, remotes_config)
    except UsrError:
        return remote
    if profile.type == "local":
        return str(profile.base_dir)
    if profile.type == "s3":
        return f"s3://{profile.bucket}/{(profile.prefix or '').strip('/')}".rstrip("/")
    who = f"{profile.user}@" if profile.user else ""
    if profile.port:
        return f"ssh://{who}{profile.host}:{profile.port}/{str(profile.base_dir).lstrip('/')}"
    return f"{who}{profile.host}:{profile.base_dir}"


def run_pre_push(
    ctx: HookContext,
    remote: str,
    target: str,
    local_id: str | None,
    remote_id: str | None,
    verify: Mapping[str, str] | None = None,
    no_verify: bool = False,
    audit: dict[str, Any] | None = None,
) -> HookOutcome:
    """Run ``pre-push`` before anything is sent. Raises :class:`HookRefused` to stop the push.

    ``target`` says where the push goes (``user@host:base_dir`` or a local path);
    ``verify`` is :func:`verify_env` of the push. ``no_verify`` (``usr push --no-verify``)
    skips the hook and returns ``skipped``. With ``audit`` (the audit JSON's ``data``), the
    outcome lands in ``audit["hooks"]["pre-push"]``: passed, absent, skipped or refused.
    """
    if no_verify:
        return _audited(audit, "pre-push", lambda: HookOutcome("pre-push", "skipped"))
    env = {"USR_REMOTE": remote, "USR_TARGET": target, **(verify or {})}
    return _audited(
        audit,
        "pre-push",
        lambda: run_hook(
            "pre-push",
            ctx,
            args=[remote, target],
            stdin=RefUpdate(local_id, remote_id).line(),
            env=env,
        ),
    )


def run_post_push(
    ctx: HookContext,
    remote: str,
    target: str,
    local_id: str | None,
    remote_id_before: str | None,
    verify: Mapping[str, str] | None = None,
    no_verify: bool = False,
    audit: dict[str, Any] | None = None,
) -> HookOutcome:
    """Run ``post-push`` after the remote ref moved. Advisory: a failure is returned (the
    caller warns), never raised, because the push already happened."""
    if no_verify:
        return _audited(audit, "post-push", lambda: HookOutcome("post-push", "skipped"))
    env = {"USR_REMOTE": remote, "USR_TARGET": target, **(verify or {})}
    return _audited(
        audit,
        "post-push",
        lambda: run_hook(
            "post-push",
            ctx,
            args=[remote, target],
            stdin=RefUpdate(local_id, remote_id_before).line(),
            env=env,
        ),
    )


def run_post_pull(
    ctx: HookContext,
    remote: str,
    target: str,
    local_id_before: str | None,
    local_id_after: str | None,
    verify: Mapping[str, str] | None = None,
    no_verify: bool = False,
    audit: dict[str, Any] | None = None,
) -> HookOutcome:
    """Run ``post-pull`` after pulled files were promoted. Advisory, like ``post-push``.

    stdin is ``refs/heads/main <new local id> refs/remotes/<remote>/main <remote id>``
    (after a pull both are the same state); the previous local head is in
    ``$USR_PREVIOUS_HEAD``.
    """
    if no_verify:
        return _audited(audit, "post-pull", lambda: HookOutcome("post-pull", "skipped"))
    env = {
        "USR_REMOTE": remote,
        "USR_TARGET": target,
        "USR_PREVIOUS_HEAD": local_id_before or ZERO_ID,
        **(verify or {}),
    }
    update = RefUpdate(local_id_after, local_id_after, remote_ref=f"refs/remotes/{remote}/main")
    return _audited(
        audit,
        "post-pull",
        lambda: run_hook("post-pull", ctx, args=[remote, target], stdin=update.line(), env=env),
    )


def run_pre_snapshot(
    dataset_dir: Path,
    action: str,
    head: str | None = None,
    root: Path | None = None,
    dataset_id: str | None = None,
    no_verify: bool = False,
) -> HookOutcome:
    """Run ``pre-snapshot`` before a state is recorded; raises :class:`HookRefused` to stop it.

    The store calls it under the dataset lock, once it knows the working files differ from
    HEAD, so the hook sees exactly the files about to be recorded and no other recorder can
    interleave. The hook may read the dataset (``usr plumbing verify-sidecars DS`` checks
    the working files) but must not record states itself: it would wait for the lock.
    Argument: the action (``snapshot``, ``import``, ``record before push bu-scc``...);
    ``$USR_HEAD`` is the head before recording (forty zeros for the first state).
    """
    if no_verify:
        return HookOutcome("pre-snapshot", "skipped")
    ctx = context_for(dataset_dir, root, dataset_id)
    env = {"USR_HEAD": head or ZERO_ID}
    return run_hook("pre-snapshot", ctx, args=[action], stdin="", env=env)
