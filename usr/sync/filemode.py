"""File mode: sync one file (not a dataset) with its counterpart on a remote.

The remote file is named by ``--remote-path``, or mapped from the local path through the
profile's ``local_repo_root`` -> ``repo_root`` (a file at ``local_repo_root/a/b.csv`` is
``repo_root/a/b.csv`` there). There is no history in file mode: the audit compares the two
files' sizes and blake3, a transfer writes the receiver's copy atomically and is verified
by blake3 before the command reports success.

The bytes move through the remote session's file requests (``file_stat``, ``file_get``,
``file_put``); the server confines them to its served root.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

import blake3

from usr import atomic
from usr.errors import InputError, NotFoundError, UsageError, UsrError, VerifyError
from usr.store import FileChange
from usr.sync.audit import AuditRun, Comparison, Side


def remote_path_for(target: Any, profile: Any) -> str:
    """The remote path of a file-mode target (``--remote-path`` or the repo_root mapping)."""
    if target.remote_path:
        return target.remote_path
    repo_root = getattr(profile, "repo_root", None)
    local_root = getattr(profile, "local_repo_root", None)
    if not repo_root or not local_root:
        raise UsageError(
            f"file mode needs --remote-path, or repo_root and local_repo_root in remote "
            f"profile {profile.name!r}",
            "add both keys to the profile, or pass --remote-path",
        )
    local = Path(target.path).absolute()
    base = Path(local_root).expanduser().absolute()
    try:
        rel = local.relative_to(base)
    except ValueError:
        raise InputError(
            f"{local} is not under local_repo_root {base}",
            "pass --remote-path, or move the file under local_repo_root",
        ) from None
    return str(PurePosixPath(repo_root) / rel.as_posix())


def file_digest(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def _local_state(path: Path) -> tuple[bytes | None, str | None]:
    if not path.is_file():
        return None, None
    data = path.read_bytes()
    return data, file_digest(data)


def _require(session: Any, name: str) -> Any:
    fn = getattr(session, name, None)
    if fn is None:
        raise UsrError(
            f"file mode needs the transport's {name} request, which this usr's protocol "
            "does not offer yet",
            "sync the file's dataset instead, or copy the file by other means",
        )
    return fn


def _compare(target: Any, remote: str, rpath: str, session: Any, run: AuditRun) -> dict:
    data, local_digest = _local_state(Path(target.path))
    stat = _require(session, "file_stat")(rpath)
    remote_digest = stat.get("blake3") if stat.get("exists") else None
    remote_size = stat.get("size") if stat.get("exists") else None
    name = Path(target.path).name
    changes = []
    if local_digest != remote_digest:
        status = "M" if local_digest and remote_digest else "D" if local_digest else "A"
        changes.append(
            FileChange(
                name,
                status,
                "primary",
                local_digest,
                remote_digest,
                len(data) if data is not None else None,
                remote_size,
            )
        )
    local_files = (
        [FileChange(name, "A", "primary", None, local_digest, None, len(data))] if data else []
    )
    remote_files = (
        [FileChange(name, "A", "primary", None, remote_digest, None, remote_size)]
        if remote_digest
        else []
    )
    relation = (
        "equal"
        if local_digest == remote_digest
        else "remote-missing"
        if remote_digest is None
        else "local-missing"
        if local_digest is None
        else "diverged"
    )
    cmp = Comparison(
        dataset=str(target.path),
        remote=remote,
        local=Side(exists=data is not None, files=local_files),
        remote_side=Side(exists=remote_digest is not None, files=remote_files),
        relation=relation,
        changes=changes,
        events_relation="absent",
    )
    out = run.set_comparison(cmp)
    out["mode"] = "file"
    out["remote_path"] = rpath
    return {"local": data, "local_digest": local_digest, "remote_digest": remote_digest}


def _go(action: str, target: Any, remote: str, options: Any, audit_json_out: Path | None):
    from usr import remotes
    from usr.sync import client
    from usr.sync.engine import _confirm, _remote_bytes, _run

    def body(run: AuditRun) -> str:
        profile = remotes.get(remote, options.remotes_config)
        rpath = remote_path_for(target, profile)
        with client.RemoteSession.open(profile) as session:
            try:
                state = _compare(target, remote, rpath, session, run)
                if state["local_digest"] == state["remote_digest"]:
                    return "DIFF-ONLY" if action == "diff" else "NO-OP"
                if action == "diff":
                    return "DIFF-ONLY"
                if options.dry_run:
                    return "DRY-RUN"
                _confirm(options, action, run.data or {})
                if action == "pull":
                    if state["remote_digest"] is None:
                        raise NotFoundError(f"{rpath} does not exist on {remote}")
                    body_bytes = _require(session, "file_get")(rpath)
                    if file_digest(body_bytes) != state["remote_digest"]:
                        raise VerifyError(f"{rpath}: received bytes do not match their blake3")
                    atomic.write_bytes(Path(target.path), body_bytes)
                    if file_digest(Path(target.path).read_bytes()) != state["remote_digest"]:
                        raise VerifyError(f"{target.path}: blake3 differs after writing")
                else:
                    if state["local"] is None:
                        raise NotFoundError(f"{target.path} does not exist locally")
                    _require(session, "file_put")(rpath, state["local"])
                    after = _require(session, "file_stat")(rpath)
                    if after.get("blake3") != state["local_digest"]:
                        raise VerifyError(f"{rpath} on {remote}: blake3 differs after push")
                return "TRANSFERRED"
            finally:
                run.bytes_sent, run.bytes_received = _remote_bytes(session)

    return _run(action, target, remote, options, audit_json_out, body)


def diff(target: Any, remote: str, options: Any, audit_json_out: Path | None) -> dict:
    return _go("diff", target, remote, options, audit_json_out)


def pull(target: Any, remote: str, options: Any, audit_json_out: Path | None) -> dict:
    return _go("pull", target, remote, options, audit_json_out)


def push(target: Any, remote: str, options: Any, audit_json_out: Path | None) -> dict:
    return _go("push", target, remote, options, audit_json_out)
