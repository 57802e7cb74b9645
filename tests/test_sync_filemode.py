"""File mode: one plain file synced with its counterpart, over sshd (``bu-scc``) and a
``local`` remote, through the real CLI and the real ``file-*`` protocol requests.

What must hold: the remote file is found by ``--remote-path`` or the
``local_repo_root`` -> ``repo_root`` mapping; the server never reaches outside its roots;
bytes are checked by blake3 piece by piece, whole, and again after landing; the receiver's
file is replaced atomically and only if it still holds what was compared; a transfer cut
midway leaves the old file and completes on rerun.
"""

from __future__ import annotations

import io
import json
import os
import random
import sys
from pathlib import Path

import pytest
import tomli_w

from tests.conftest import run_usr
from usr.errors import ConflictError, InputError, NotFoundError, UsageError, VerifyError
from usr.ledger import file_digest
from usr.remotes import Profile
from usr.sync import files
from usr.sync import protocol as p
from usr.sync.client import open_session
from usr.sync.engine import SyncOptions, resolve_target
from usr.sync.filemode import remote_file_for

BIG = 2 * files.PIECE + 12345  # three pieces on the wire


def _bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


# --------------------------------------------------------------------------- which file


def test_mapping_and_remote_path_name_a_root_and_a_relative_path(tmp_path):
    f = tmp_path / "repo" / "outputs" / "table.csv"
    f.parent.mkdir(parents=True)
    f.write_text("a,b\n")
    target = resolve_target(tmp_path / "datasets", str(f), SyncOptions())
    assert target.kind == "file"
    profile = Profile(
        name="bu-scc",
        base_dir="/project/alice/usr/datasets",
        repo_root="/project/alice/repo",
        local_repo_root=str(tmp_path / "repo"),
    )
    rf = remote_file_for(target, profile)
    assert (rf.root, rf.relpath, rf.shown) == (
        "repo",
        "outputs/table.csv",
        "/project/alice/repo/outputs/table.csv",
    )

    def named(remote_path: str):
        t = resolve_target(tmp_path, str(f), SyncOptions(remote_path=remote_path))
        return remote_file_for(t, profile)

    assert (named("a/b.csv").root, named("a/b.csv").relpath) == ("base", "a/b.csv")
    assert named("/project/alice/usr/datasets/x/y.txt").relpath == "x/y.txt"
    assert named("/project/alice/repo/z.txt").root == "repo"
    for bad, error in [
        ("/elsewhere/x.txt", "outside base_dir"),
        ("../x.txt", "below the served root"),
        ("a/../../x.txt", "below the served root"),
        ("ds/.usr/HEAD", "below the served root"),
        ("/project/alice/repo", "outside base_dir"),
    ]:
        with pytest.raises(InputError, match=error):
            named(bad)
    with pytest.raises(UsageError, match="repo_root and local_repo_root"):
        remote_file_for(target, Profile(name="bu-scc", base_dir="/b"))
    outside = Profile(name="x", base_dir="/b", repo_root="/r", local_repo_root=str(tmp_path / "o"))
    with pytest.raises(InputError, match="not under local_repo_root"):
        remote_file_for(target, outside)


def test_dataset_ids_and_directories_are_not_file_mode(tmp_path):
    root = tmp_path / "datasets"
    (root / "densegen" / "my_dataset").mkdir(parents=True)
    (root / "registry.toml").write_text("")
    t = resolve_target(root, "densegen/my_dataset", SyncOptions())
    assert (t.kind, t.dataset) == ("dataset", "densegen/my_dataset")
    d = resolve_target(tmp_path / "elsewhere", str(root / "densegen" / "my_dataset"))
    assert (d.kind, d.dataset, d.root) == ("dataset", "densegen/my_dataset", root)
    assert Path(d.path) == root / "densegen" / "my_dataset"


# --------------------------------------------------------------------------- end to end


@pytest.fixture(params=["local", "ssh"])
def fm(request, tmp_path):
    """Laptop repo, cluster base_dir and repo_root, and a ``bu-scc`` profile mapping them."""
    laptop, base, repo = tmp_path / "laptop", tmp_path / "base", tmp_path / "repo"
    for d in (laptop, base, repo):
        d.mkdir()
    config = tmp_path / "remotes.toml"
    mapping = {"repo_root": str(repo), "local_repo_root": str(laptop)}
    if request.param == "ssh":
        request.getfixturevalue("sshd").write_remotes(config, base, **mapping)
    else:
        table = {"type": "local", "base_dir": str(base), **mapping}
        config.write_text(tomli_w.dumps({"remotes": {"bu-scc": table}}))
        config.chmod(0o600)

    def cli(*args: str):
        return run_usr(*args, env={"USR_REMOTES_PATH": str(config)})

    cli.laptop, cli.base, cli.repo = laptop, base, repo  # type: ignore[attr-defined]
    cli.kind = request.param  # type: ignore[attr-defined]
    return cli


def test_push_then_pull_by_mapping_verified_and_audited(fm, tmp_path):
    local = fm.laptop / "analysis" / "summary.csv"
    local.parent.mkdir()
    local.write_bytes(_bytes(BIG, 1))
    remote = fm.repo / "analysis" / "summary.csv"

    transport_independent = fm.kind == "local"  # checked once, on the cheaper remote
    if transport_independent:
        r = fm("diff", str(local), "bu-scc")
        assert r.returncode == 0, r.stderr
        assert "Relation:    remote-missing" in r.stdout and r.stdout.endswith("Status: CHANGES\n")
        assert not remote.exists()  # diff moves nothing

    audit = tmp_path / "push.json"
    r = fm("push", str(local), "bu-scc", "-y", "--audit-json-out", str(audit))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("PUSH audit: TRANSFERRED")
    assert remote.read_bytes() == local.read_bytes()
    data = json.loads(audit.read_text())["data"]
    assert data["mode"] == "file" and data["transfer_state"] == "TRANSFERRED"
    assert data["file"]["remote_path"] == str(remote) and data["file"]["remote_root"] == "repo"
    assert data["file"]["after"]["blake3"] == file_digest(local)[0]
    assert data["primary"]["changed"] is True and data["relation"] == "remote-missing"
    assert data["bytes_moved"]["sent"] > BIG and data["bytes_moved"]["received"] < 4096
    assert not [n for n in os.listdir(remote.parent) if n != "summary.csv"]  # no temp left

    r = fm("push", str(local), "bu-scc")  # nothing to overwrite: no -y needed
    assert r.returncode == 0 and r.stdout.startswith("PUSH audit: NO-OP"), r.stderr

    # The cluster rewrites the file (same length, other bytes; mode kept on pull).
    remote.write_bytes(_bytes(BIG, 2))
    local.chmod(0o640)
    if transport_independent:
        r = fm("diff", str(local), "bu-scc", "--format", "json")
        doc = json.loads(r.stdout)
        assert doc["data"]["relation"] == "differs" and doc["changes"]["primary"] is True
        r = fm("pull", str(local), "bu-scc")  # would overwrite, no terminal, no -y: refused
        assert r.returncode == 2 and local.read_bytes() == _bytes(BIG, 1)
    r = fm("pull", str(local), "bu-scc", "-y")
    assert r.returncode == 0 and r.stdout.startswith("PULL audit: TRANSFERRED"), r.stderr
    assert local.read_bytes() == remote.read_bytes()
    assert local.stat().st_mode & 0o777 == 0o640


def test_remote_path_bootstraps_a_file_under_base_dir(fm):
    (fm.base / "configs").mkdir()
    (fm.base / "configs" / "run.toml").write_text("rows = 10\n")
    dest = fm.laptop / "run.toml"
    args = ("--remote-path", "configs/run.toml")
    r = fm("pull", str(dest), "bu-scc", "-y", *args)
    assert r.returncode == 0, r.stderr
    assert dest.read_text() == "rows = 10\n"
    dest.write_text("rows = 20\n")
    r = fm("push", str(dest), "bu-scc", "-y", *args, "--dry-run")
    assert r.stdout.startswith("PUSH audit: DRY-RUN")
    assert (fm.base / "configs" / "run.toml").read_text() == "rows = 10\n"
    r = fm("push", str(dest), "bu-scc", "-y", "--remote-path", "../escape.toml")
    assert r.returncode == 3 and r.stderr.startswith("usr: error: remote path")
    assert not (fm.base.parent / "escape.toml").exists()


# --------------------------------------------------------------------------- the server


@pytest.fixture
def session(tmp_path):
    base, repo = tmp_path / "base", tmp_path / "repo"
    base.mkdir()
    repo.mkdir()
    profile = Profile(name="lab", type="local", base_dir=str(base), repo_root=str(repo))
    with open_session(profile) as s:
        s.base, s.repo = base, repo  # type: ignore[attr-defined]
        yield s


def test_server_refuses_paths_leaving_its_roots_and_stays_in_step(session, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("keep out")
    (session.base / "link").symlink_to(tmp_path)
    (session.base / "ds" / ".usr").mkdir(parents=True)
    (session.base / "ds" / ".usr" / "HEAD").write_text("ref: refs/heads/main\n")
    source = tmp_path / "new.txt"
    source.write_text("hostile")
    digest = file_digest(source)[0]
    for bad in ["../secret.txt", "/etc/passwd", "link/secret.txt", "ds/.usr/HEAD", "", "a//b"]:
        with pytest.raises(InputError):
            session.file_stat("base", bad)
        with pytest.raises(InputError):  # the stream is drained: the session goes on
            session.file_put("base", bad, source, digest, None)
    (session.base / "link2").symlink_to(secret)
    with pytest.raises(InputError, match="symlink"):
        session.file_stat("base", "link2")
    with pytest.raises(InputError, match="not served"):
        session.file_stat("elsewhere", "x")
    assert secret.read_text() == "keep out"
    assert (session.base / "ds" / ".usr" / "HEAD").read_text() == "ref: refs/heads/main\n"
    with pytest.raises(NotFoundError):
        session.file_get("base", "absent.txt", tmp_path / "got.txt", None, digest)
    assert session.file_stat("repo", "new.txt") == {"exists": False, "size": None, "blake3": None}
    session.file_put("repo", "sub/new.txt", source, digest, None)
    assert (session.repo / "sub" / "new.txt").read_text() == "hostile"


def test_put_replaces_only_what_was_compared(session, tmp_path):
    target = session.base / "notes.txt"
    target.write_text("theirs, written after the comparison")
    source = tmp_path / "mine.txt"
    source.write_bytes(_bytes(BIG, 3))
    mine = file_digest(source)[0]
    with pytest.raises(ConflictError, match="changed while the transfer ran"):
        session.file_put("base", "notes.txt", source, mine, None)  # compared: absent
    with pytest.raises(VerifyError):  # the bytes are not the ones announced
        session.file_put("base", "notes.txt", source, "0" * 64, file_digest(target)[0])
    assert target.read_text() == "theirs, written after the comparison"
    assert os.listdir(session.base) == ["notes.txt"]  # no temp files left behind
    got = session.file_put("base", "notes.txt", source, mine, file_digest(target)[0])
    assert got == {"size": BIG, "blake3": mine} and target.read_bytes() == source.read_bytes()


def test_a_corrupt_piece_or_short_file_is_refused_and_nothing_replaced(tmp_path):
    """The receiving end of a recorded stream: each piece and the whole are checked."""
    source, dest = tmp_path / "src.bin", tmp_path / "dest.bin"
    source.write_bytes(_bytes(BIG, 4))
    dest.write_text("old")
    old = file_digest(dest)[0]
    want = file_digest(source)[0]

    def stream(tamper: str) -> p.FrameIO:
        wire = io.BytesIO()
        out = p.FrameIO(p.FileChannel(io.BytesIO(), wire))
        if tamper == "piece":
            out.send_chunk("ab" * 32, b"not the bytes named")
        files.send(out, source, "src")
        if tamper == "end":
            out._out = out._out[:-2]  # drop the real file-end
            out.send_message(files.END, size=BIG, blake3="0" * 64)
        out.flush()
        return p.FrameIO(p.FileChannel(io.BytesIO(wire.getvalue()), io.BytesIO()), "peer")

    frames = stream("none")
    kinds = []
    while (frame := frames.read_frame(eof_ok=True)) is not None:
        kinds.append((frame[0], len(frame[1]) - 32))
    assert [k for k, _ in kinds] == [p.CHUNK] * 3 + [p.JSON]  # streamed, one piece a frame
    assert max(n for _, n in kinds[:3]) == files.PIECE
    for tamper in ("piece", "end"):
        with pytest.raises(VerifyError):
            files.receive(stream(tamper), dest, "peer", old, want)
        assert dest.read_text() == "old" and sorted(os.listdir(tmp_path)) == ["dest.bin", "src.bin"]
    assert files.receive(stream("none"), dest, "peer", old, want)["blake3"] == want


def test_push_cut_mid_file_keeps_the_old_file_and_rerun_completes(tmp_path):
    """The receiving server is killed after its second piece (``file.received-piece:2``)."""
    laptop, base = tmp_path / "laptop", tmp_path / "base"
    laptop.mkdir()
    base.mkdir()
    (base / "big.bin").write_bytes(b"old contents")
    local = laptop / "big.bin"
    local.write_bytes(_bytes(BIG, 5))
    killer = f"env USR_FAULT_POINT={files.FAULT_RECEIVED_PIECE}:2 {sys.executable} -m usr"
    config = tmp_path / "remotes.toml"
    tables = {
        "cut": {"type": "local", "base_dir": str(base), "remote_usr": killer},
        "bu-scc": {"type": "local", "base_dir": str(base)},
    }
    config.write_text(tomli_w.dumps({"remotes": tables}))
    config.chmod(0o600)
    env = {"USR_REMOTES_PATH": str(config)}
    r = run_usr("push", str(local), "cut", "-y", "--remote-path", "big.bin", env=env)
    assert r.returncode == 6, r.stderr  # transport error: the receiver died
    assert (base / "big.bin").read_bytes() == b"old contents"
    r = run_usr("push", str(local), "bu-scc", "-y", "--remote-path", "big.bin", env=env)
    assert r.returncode == 0, r.stderr
    assert (base / "big.bin").read_bytes() == local.read_bytes()


def test_dataset_flags_and_symlinks_are_refused_in_file_mode(tmp_path):
    f = tmp_path / "x.txt"
    f.write_text("x")
    link = tmp_path / "link.txt"
    link.symlink_to(f)
    config = tmp_path / "remotes.toml"
    table = {"type": "local", "base_dir": str(tmp_path)}
    config.write_text(tomli_w.dumps({"remotes": {"bu-scc": table}}))
    config.chmod(0o600)
    env = {"USR_REMOTES_PATH": str(config)}
    r = run_usr(
        "push", str(f), "bu-scc", "-y", "--remote-path", "y.txt", "--verify", "size", env=env
    )
    assert r.returncode == 2 and "--verify size does not apply to file mode" in r.stderr
    r = run_usr("push", str(link), "bu-scc", "-y", "--remote-path", "y.txt", env=env)
    assert r.returncode == 3 and "is a symlink" in r.stderr
    assert not (tmp_path / "y.txt").exists()
