"""File mode: sync one file (not a dataset) with its counterpart on a remote.

The remote file is named by ``--remote-path`` (relative: under the profile's ``base_dir``;
absolute: it must lie under ``base_dir`` or ``repo_root``), or mapped from the local path
through the profile's ``local_repo_root`` -> ``repo_root`` (a file at
``local_repo_root/a/b.csv`` is ``repo_root/a/b.csv`` there). The remote end serves files
only under those two roots (``usr plumbing serve --root BASE_DIR --repo-root REPO_ROOT``)
and refuses any path that could leave them.

There is no history in file mode: the audit compares the two files' sizes and blake3. A
pull or push moves the bytes with the session's ``file-get``/``file-put`` requests
(:mod:`usr.sync.files`): streamed piece by piece, each piece and the whole file checked by
blake3, written to a temp file beside the target and renamed over it only if the target
still holds what was compared. After the rename the landed file is hashed again before the
command reports success.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from usr.errors import InputError, NotFoundError, UsageError, VerifyError
from usr.layout import check_relpath
from usr.store import FileChange
from usr.sync import files
from usr.sync.audit import FILE_MODE, AuditRun, Comparison, Side
from usr.sync.auditfile import run_audited
from usr.sync.remote import bytes_moved


@dataclass(frozen=True)
class RemoteFile:
    """Where a file-mode target lives on the remote: a served root and a path below it."""

    root: str  # "base" (base_dir) | "repo" (repo_root)
    relpath: str
    shown: str  # the remote path as an operator would write it


def _relative(path: str, under: str | None) -> str | None:
    if not under:
        return None
    try:
        return PurePosixPath(path).relative_to(PurePosixPath(under)).as_posix()
    except ValueError:
        return None


def _checked(rel: str, shown: str) -> str:
    try:
        return check_relpath(rel)
    except InputError:
        raise InputError(
            f"remote path {shown!r} must name a file below the served root",
            "no '..', no empty parts, nothing inside .usr",
        ) from None


def remote_file_for(target: Any, profile: Any) -> RemoteFile:
    """The remote file of a file-mode target (``--remote-path`` or the repo_root mapping)."""
    repo_root = getattr(profile, "repo_root", None)
    if target.remote_path:
        given = target.remote_path
        if not given.startswith(("/", "~")):
            shown = str(PurePosixPath(profile.base_dir) / given)
            return RemoteFile("base", _checked(given, given), shown)
        for root, under in (("base", profile.base_dir), ("repo", repo_root)):
            rel = _relative(given, under)
            if rel not in (None, "", "."):
                return RemoteFile(root, _checked(rel, given), given)
        roots = " or repo_root " + repo_root if repo_root else ""
        raise InputError(
            f"--remote-path {given} is outside base_dir {profile.base_dir}{roots} of "
            f"remote {profile.name}",
            "pass a path relative to base_dir, or one under those roots",
        )
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
        rel = local.relative_to(base).as_posix()
    except ValueError:
        raise InputError(
            f"{local} is not under local_repo_root {base}",
            "pass --remote-path, or move the file under local_repo_root",
        ) from None
    shown = str(PurePosixPath(repo_root) / rel)
    return RemoteFile("repo", _checked(rel, shown), shown)


def remote_path_for(target: Any, profile: Any) -> str:
    """The remote path of a file-mode target, as shown to operators."""
    return remote_file_for(target, profile).shown


def _relation(local: dict[str, Any], remote: dict[str, Any]) -> str:
    if local["blake3"] == remote["blake3"]:
        return "equal"
    if remote["blake3"] is None:
        return "remote-missing"
    if local["blake3"] is None:
        return "local-missing"
    return "differs"


def _compare(
    target: Any, remote: str, rf: RemoteFile, local: dict, there: dict, run: AuditRun
) -> None:
    """Fill the audit from the two files' states (the file counts as the primary section,
    so the runbooks' ``.primary.changed`` answers "did the file differ")."""
    name = Path(target.path).name

    def listing(st: dict[str, Any]) -> list[FileChange]:
        if not st["exists"]:
            return []
        return [FileChange(name, "A", "primary", None, st["blake3"], None, st["size"])]

    changes = []
    if local["blake3"] != there["blake3"]:
        status = "M" if local["exists"] and there["exists"] else "D" if local["exists"] else "A"
        changes.append(
            FileChange(
                name,
                status,
                "primary",
                local["blake3"],
                there["blake3"],
                local["size"],
                there["size"],
            )
        )
    cmp = Comparison(
        dataset=str(target.path),
        remote=remote,
        local=Side(exists=local["exists"], files=listing(local)),
        remote_side=Side(exists=there["exists"], files=listing(there)),
        relation=_relation(local, there),
        changes=changes,
        events_relation="absent",
    )
    data = run.set_comparison(cmp)
    data["mode"] = "file"
    data["file"] = {
        "local_path": str(target.path),
        "remote_path": rf.shown,
        "remote_root": rf.root,
        "changed": bool(changes),
        "local": dict(local),
        "remote": dict(there),
    }


def _summary(run: AuditRun) -> str:
    return "\n".join(_file_lines(run.data or {}))


def _go(action: str, target: Any, remote: str, options: Any, audit_json_out: Path | None):
    from usr import remotes
    from usr.sync import client

    def body(run: AuditRun) -> str:
        profile = remotes.get(remote, options.remotes_config)
        rf = remote_file_for(target, profile)
        local_path = files.outside_datasets(Path(target.path), str(target.path))
        local = files.state(local_path, str(local_path))
        with client.open_session(profile, lock_timeout=options.lock_timeout) as session:
            try:
                there = session.file_stat(rf.root, rf.relpath)
                if not local["exists"] and not there["exists"]:
                    raise NotFoundError(
                        f"{local_path} does not exist here nor as {rf.shown} on {remote}"
                    )
                _compare(target, remote, rf, local, there, run)
                if action == "diff":
                    return "DIFF-ONLY"
                if local["blake3"] == there["blake3"]:
                    return "NO-OP"
                if action == "pull" and not there["exists"]:
                    raise NotFoundError(
                        f"{rf.shown} does not exist on {remote}; nothing to pull",
                        "push the file first, or check --remote-path",
                    )
                if action == "push" and not local["exists"]:
                    raise NotFoundError(f"{local_path} does not exist here; nothing to push")
                if options.dry_run:
                    return "DRY-RUN"
                if options.confirm is not None and not options.confirm(_summary(run)):
                    raise UsageError(f"{action} cancelled; nothing was changed")
                if action == "pull":
                    after = _pull(session, rf, local_path, local, there)
                else:
                    after = _push(session, remote, rf, local_path, local, there)
                (run.data or {})["file"]["after"] = after
                return "TRANSFERRED"
            finally:
                run.bytes_sent, run.bytes_received = bytes_moved(session)

    return run_audited(action, target, remote, options, audit_json_out, body, FILE_MODE)


def _pull(session: Any, rf: RemoteFile, dest: Path, local: dict, there: dict) -> dict:
    """Fetch the remote file over ``dest``, then hash what landed; returns its state."""
    session.file_get(rf.root, rf.relpath, dest, local["blake3"], there["blake3"])
    after = files.state(dest, str(dest))
    if after["blake3"] != there["blake3"]:
        raise VerifyError(f"{dest}: blake3 differs from {rf.shown} after the pull")
    return after


def _push(
    session: Any, remote: str, rf: RemoteFile, source: Path, local: dict, there: dict
) -> dict:
    """Send ``source`` over the remote file, then have the remote hash what landed."""
    session.file_put(rf.root, rf.relpath, source, local["blake3"], there["blake3"])
    after = session.file_stat(rf.root, rf.relpath)
    if after["blake3"] != local["blake3"]:
        raise VerifyError(f"{rf.shown} on {remote}: blake3 differs from {source} after the push")
    return after


def _state_text(st: dict[str, Any]) -> str:
    if not st.get("exists"):
        return "absent"
    return f"{st['size']} bytes, blake3 {st['blake3'][:16]}"


def _file_lines(data: dict[str, Any]) -> list[str]:
    f = data.get("file") or {}
    return [
        "Mode:        file",
        f"Local file:  {f.get('local_path')} ({_state_text(f.get('local') or {})})",
        f"Remote file: {data.get('remote')}:{f.get('remote_path')} "
        f"({_state_text(f.get('remote') or {})})",
        f"Relation:    {data.get('relation')}",
        f"File:        {'changed' if f.get('changed') else 'unchanged'}",
    ]


def render_text(doc: dict[str, Any]) -> str:
    """The human summary of a file-mode audit (the dataset sections do not apply)."""
    data = doc["data"]
    lines = []
    if data["action"] != "diff":
        lines.append(f"{data['action'].upper()} audit: {data['transfer_state']}")
    lines.extend(_file_lines(data))
    if data["action"] != "diff":
        moved = data.get("bytes_moved", {})
        lines.append(
            f"Moved:       {moved.get('total', 0)} bytes (sent {moved.get('sent', 0)}, "
            f"received {moved.get('received', 0)}) in {data.get('duration', 0):.2f}s"
        )
        lines.append("Verify:      blake3 of every piece, of the whole file, and after landing")
    else:
        lines.append(f"Status: {data.get('status', 'unknown')}")
    return "\n".join(lines)


def diff(target: Any, remote: str, options: Any, audit_json_out: Path | None) -> dict:
    return _go("diff", target, remote, options, audit_json_out)


def pull(target: Any, remote: str, options: Any, audit_json_out: Path | None) -> dict:
    return _go("pull", target, remote, options, audit_json_out)


def push(target: Any, remote: str, options: Any, audit_json_out: Path | None) -> dict:
    return _go("push", target, remote, options, audit_json_out)
