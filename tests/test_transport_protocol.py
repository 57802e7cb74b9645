"""The serve endpoint and the client against bad peers: garbage, truncated and oversized
frames, ids escaping the root, objects and chunks whose bytes do not match their ids, an
incompatible protocol, and a push cut midway that a rerun finishes moving only what is
missing. Real ``usr plumbing serve`` subprocesses throughout.
The datasets here are random bytes (chunking is what is tested), so pushes skip the gate
(``validate=False``; docs/cli.md "The gate").
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.conftest import usr_env
from usr.errors import InputError, TransportError, VerifyError
from usr.store import Store
from usr.store.chunks import chunk_id
from usr.store.objects import git_object_id
from usr.sync import protocol as p
from usr.sync.client import spawn_local


def _frame(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">cI", kind, len(payload)) + payload


def _msg(t: str, **fields) -> bytes:
    return _frame(b"J", json.dumps({"t": t, **fields}).encode())


def _hello() -> bytes:
    return _msg("hello", usr_version="test", protocol=p.PROTOCOL_VERSION)


def _serve(root: Path, data: bytes, process: bool = False) -> tuple[int, list[dict], str]:
    """Feed raw bytes to the serve endpoint; return its status, the messages it answered
    with, and its stderr. ``process``: a real ``usr plumbing serve`` subprocess; otherwise
    the same Server loop in this process over in-memory pipes (the subprocess start-up
    costs a second each, and the bytes on the wire are identical)."""
    if process:
        proc = subprocess.run(
            [sys.executable, "-m", "usr", "plumbing", "serve", "--root", str(root)],
            input=data,
            capture_output=True,
            env=usr_env(),
            timeout=60,
        )
        status, out, err = proc.returncode, proc.stdout, proc.stderr.decode()
    else:
        from usr.sync.server import Server

        wire_out = io.BytesIO()
        fio = p.FrameIO(p.FileChannel(io.BytesIO(data), wire_out), peer="client")
        with contextlib.redirect_stderr(io.StringIO()) as errbuf:
            status = Server(root.absolute(), fio).run()
        out, err = wire_out.getvalue(), errbuf.getvalue()
    assert out.startswith(p.MAGIC)
    out = out[len(p.MAGIC) :]
    msgs = []
    while out:
        kind, length = struct.unpack(">cI", out[:5])
        if kind == b"J":
            msgs.append(json.loads(out[5 : 5 + length]))
        out = out[5 + length :]
    return status, msgs, err


def _snapshot(root: Path) -> list[str]:
    return sorted(str(x.relative_to(root)) for x in root.rglob("*"))


@pytest.mark.parametrize(
    "garbage, words",
    [
        (b"Z\x00\x00\x00\x01x", "unknown kind"),
        (struct.pack(">cI", b"J", p.MAX_FRAME + 1), "exceeds"),
        (struct.pack(">cI", b"J", 100) + b'{"t": "he', "closed mid-frame"),
        (_frame(b"J", b"\xff\xfenot json"), "unparseable"),
        (_frame(b"J", b"[1, 2]"), "without a type"),
        (b"\x00\x01", "closed mid-frame header"),
    ],
)
def test_serve_refuses_bad_frames(root, garbage, words):
    before = _snapshot(root)
    status, msgs, err = _serve(root, _hello() + garbage, process=words == "unknown kind")
    assert status != 0
    assert msgs[0]["t"] == "hello"
    assert msgs[-1]["t"] == "error" and msgs[-1]["kind"] == "transport"
    assert words in msgs[-1]["message"]
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert _snapshot(root) == before


def test_serve_refuses_incompatible_protocol(root):
    status, msgs, _ = _serve(root, _msg("hello", usr_version="9", protocol=99))
    assert status != 0
    assert msgs[-1]["t"] == "error" and "incompatible protocol" in msgs[-1]["message"]


@pytest.mark.parametrize("ds", ["../outside", "/etc", "a/b/c", "..", "a/../../x", ""])
def test_serve_refuses_ids_escaping_root(root, ds):
    status, msgs, _ = _serve(root, _hello() + _msg("have", ds=ds, oids=[], cids=[], create=True))
    assert msgs[-1]["t"] == "error" and msgs[-1]["kind"] == "input"
    assert _snapshot(root) == []
    assert not (root.parent / "outside").exists()


def test_serve_refuses_symlink_out_of_root(root, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (root / "evil").symlink_to(outside)
    _, msgs, _ = _serve(root, _hello() + _msg("have", ds="evil", oids=[], cids=[], create=True))
    assert msgs[-1]["t"] == "error" and "outside" in msgs[-1]["message"]
    assert list(outside.iterdir()) == []


def test_client_refuses_bad_id_before_sending(root):
    with spawn_local(root) as remote:
        remote.hello()
        with pytest.raises(InputError):
            remote.heads("../x")


def test_pushed_object_with_wrong_bytes_is_refused(root):
    data = b"honest bytes\n"
    oid = git_object_id("blob", data)
    bad = _frame(b"O", bytes([3]) + bytes.fromhex(oid) + b"tampered bytes\n")
    stream = _hello() + _msg("pack", ds="ds", create=True) + bad + _msg("end")
    stream += _msg("update", ds="ds", new=oid, old=None)
    _, msgs, _ = _serve(root, stream)
    errors = [m for m in msgs if m["t"] == "error"]
    assert errors[0]["kind"] == "verify" and oid in errors[0]["message"]
    assert "refusing to move the ref" in errors[1]["message"]
    assert not Store.open(root / "ds").has_object(oid)


def test_pushed_chunk_with_wrong_bytes_is_refused(root):
    cid = chunk_id(b"x" * 1000)
    bad = _frame(b"K", bytes.fromhex(cid) + b"y" * 1000)
    _, msgs, _ = _serve(root, _hello() + _msg("pack", ds="ds", create=True) + bad + _msg("end"))
    assert msgs[-1]["t"] == "error" and msgs[-1]["kind"] == "verify"
    assert not Store.open(root / "ds").chunks.has(cid)


def test_pushed_tree_with_escaping_path_is_refused(root):
    blob = git_object_id("blob", b"x")
    tree = b"100644 ..\x00" + bytes.fromhex(blob)
    oid = git_object_id("tree", tree)
    frame = _frame(b"O", bytes([2]) + bytes.fromhex(oid) + tree)
    _, msgs, _ = _serve(root, _hello() + _msg("pack", ds="ds", create=True) + frame + _msg("end"))
    assert msgs[-1]["t"] == "error" and msgs[-1]["kind"] == "verify"
    assert not Store.open(root / "ds").has_object(oid)


# -- a hostile server, for the client side ----------------------------------------------------

FAKE_SERVER = r"""
import json, struct, sys
mode = sys.argv[1]
out = sys.stdout.buffer
def frame(kind, payload):
    out.write(struct.pack(">cI", kind, len(payload)) + payload); out.flush()
def msg(t, **f):
    frame(b"J", json.dumps({"t": t, **f}).encode())
def read():
    kind, n = struct.unpack(">cI", sys.stdin.buffer.read(5))
    return json.loads(sys.stdin.buffer.read(n))
if mode == "banner":
    out.write(b"Welcome to the cluster! Quota: 90% used\n"); out.flush(); sys.exit(0)
out.write(b"USRP\x00\x01\r\n"); out.flush()
read()
if mode == "proto":
    msg("hello", usr_version="9.9", protocol=99); sys.exit(0)
if mode == "doctor":  # a remote whose words carry newlines and terminal escapes
    msg("hello", usr_version="9\x1b[2J\nFAKE pass", protocol=1, root="/", root_exists=True)
    read()
    msg("probe", root="/d\nPASS  base_dir", root_exists=True, root_writable=False,
        lock_ok=False, lock_error="no\x1b]0;owned\x07", free_bytes=1)
    read(); sys.exit(0)
msg("hello", usr_version="x", protocol=1, root="/", root_exists=True)
want = read()  # first the request, so the client never meets a closed pipe when writing it
if mode == "oversized":
    out.write(struct.pack(">cI", b"J", 1 << 31)); out.flush(); sys.exit(0)
if mode == "truncated":
    out.write(struct.pack(">cI", b"J", 50) + b'{"t": "heads"'); out.flush(); sys.exit(0)
if mode == "silent":  # half a frame, then nothing, the pipe kept open until the client goes
    out.write(struct.pack(">cI", b"J", 50) + b'{"t": '); out.flush()
    sys.stdin.buffer.read(); sys.exit(0)
oid = sys.argv[2]
msg("objects", oids=[oid], types=["blob"], sizes={})
read()
frame(b"O", bytes([3]) + bytes.fromhex(oid) + b"not the bytes of that id")
msg("done", sent=1)
read()
"""


@pytest.fixture
def fake_server(tmp_path):
    script = tmp_path / "fake_server.py"
    script.write_text(FAKE_SERVER)

    def start(mode: str, *args: str, idle_timeout: float | None = None):
        argv = f"{sys.executable} {script} {mode} {' '.join(args)}"
        return spawn_local(tmp_path, remote_usr=argv, name="remote fake", idle_timeout=idle_timeout)

    return start


def test_client_refuses_incompatible_protocol(fake_server):
    with pytest.raises(TransportError) as err, fake_server("proto") as remote:
        remote.hello()
    assert "protocol" in err.value.one_line()


@pytest.mark.parametrize("mode, words", [("oversized", "exceeds"), ("truncated", "closed")])
def test_client_refuses_bad_frames(fake_server, mode, words):
    with fake_server(mode) as remote:
        remote.hello()
        with pytest.raises(TransportError) as err:
            remote.heads("ds")
    assert words in err.value.one_line()


def test_doctor_prints_a_remotes_words_on_one_clean_line_each(fake_server):
    """``remotes doctor`` shows fields of the remote's replies: no control character of the
    peer reaches the terminal, and a newline cannot forge a PASS line."""
    from porcelain.remotes import doctor
    from usr.remotes import Profile

    remote = fake_server("doctor")
    argv = remote.process.args[:3]  # the fake server's command line, as a remote_usr
    remote.close()
    profile = Profile(name="fake", type="local", base_dir="/", remote_usr=" ".join(argv))
    text = doctor(profile).text()
    assert "\x1b" not in text and "\x07" not in text
    assert not any(line.startswith(("FAKE", "PASS  base_dir")) for line in text.splitlines())
    # connect, remote usr, base_dir, test lock, free disk: one line each, nothing forged
    assert len(text.splitlines()) == 5


def test_client_gives_up_on_a_server_that_goes_silent(fake_server):
    """A local server that stops mid-frame without closing: a transport error once the
    profile's idle_timeout passes, not a hang (SSH channels have the same bound)."""
    with fake_server("silent", idle_timeout=0.5) as remote:
        remote.hello()
        with pytest.raises(TransportError) as err:
            remote.heads("ds")
    assert "sent nothing for 0.5s" in err.value.one_line()


def test_client_refuses_object_not_matching_its_id(fake_server, tmp_path):
    store = Store.open(_mkdir(tmp_path / "local"))
    real = git_object_id("commit", b"tree 0\n")
    with fake_server("badobject", real) as remote:
        remote.hello()
        with pytest.raises(VerifyError):
            remote.fetch("ds", store, [real], haves=[])
    assert not store.has_object(real)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


# -- a push cut midway, then rerun -------------------------------------------------------------


class _CutAfter:
    """Byte channel wrapper that kills the server once ``limit`` bytes have been written."""

    def __init__(self, inner, proc, limit: int) -> None:
        self.inner, self.proc, self.limit, self.sent = inner, proc, limit, 0

    def read(self, n: int) -> bytes:
        return self.inner.read(n)

    def write(self, data: bytes) -> None:
        if self.sent + len(data) > self.limit:
            self.proc.kill()
            self.proc.wait()
        self.inner.write(data)
        self.sent += len(data)

    def flush(self) -> None:
        self.inner.flush()


def test_interrupted_push_resumes_moving_only_missing_chunks(tmp_path, monkeypatch):
    monkeypatch.setenv("USR_INLINE_LIMIT", "4096")
    local = _mkdir(tmp_path / "local" / "ds")
    (local / "records.parquet").write_bytes(os.urandom(12 * 1024 * 1024))
    (local / "meta.md").write_text("# m\n")
    store = Store.open(local)
    head = store.record("snapshot").commit
    all_chunks = store.chunk_ids([e for _, e, _ in store.ls_tree(head)])
    assert len(all_chunks) > 100
    base = _mkdir(tmp_path / "remote")

    remote = spawn_local(base)
    remote.hello()
    remote.fio.channel = _CutAfter(remote.fio.channel, remote.process, 9 * 1024 * 1024)
    with pytest.raises(TransportError), remote:
        remote.push("ds", store, head, None, validate=False)
    landed = Store.open(base / "ds")
    assert landed.head() is None  # the ref never moved
    missing = landed.chunks.missing(all_chunks)
    assert 0 < len(missing) < len(all_chunks)

    with spawn_local(base) as remote:
        remote.hello()
        stats = remote.push("ds", store, head, None, validate=False)
        assert remote.heads("ds")["head"] == head
    assert stats.chunks == len(missing)
    pushed = (base / "ds" / "records.parquet").read_bytes()
    assert pushed == (local / "records.parquet").read_bytes()


# -- plumbing over a local remote ----------------------------------------------------------------


def test_plumbing_ls_remote_send_pack_fetch_pack(usr, tmp_path):
    base = _mkdir(tmp_path / "remote")
    cfg = tmp_path / "remotes.toml"
    cfg.write_text(f'[remotes.lab]\ntype = "local"\nbase_dir = "{base}"\n')
    cfg.chmod(0o600)
    here = _mkdir(tmp_path / "here")
    store = Store.open(_mkdir(here / "ds"))
    (here / "ds" / "meta.md").write_text("# x\n")
    head = store.record("snapshot").commit
    common = ["--remotes-config", str(cfg)]
    r = usr("--root", str(here), "plumbing", "send-pack", "lab", "ds", *common)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"-\t{head}"
    assert (base / "ds" / "meta.md").read_text() == "# x\n"
    r = usr("plumbing", "ls-remote", "lab", "ds", *common)
    assert r.stdout.strip() == f"{head}\trefs/heads/main"
    there = _mkdir(tmp_path / "there")
    r = usr(
        "--root", str(there), "plumbing", "fetch-pack", "lab", "ds", "--format", "json", *common
    )
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)["data"]
    assert data["head"] == head and data["ref"] == "refs/remotes/lab/main"
    fetched = Store.open(there / "ds")
    assert fetched.head("refs/remotes/lab/main") == head and fetched.head() is None
    assert not (there / "ds" / "meta.md").exists()


def test_remote_lock_timeout_names_holder(tmp_path):
    from usr.errors import LockTimeout
    from usr.locks import dataset_lock

    base = _mkdir(tmp_path / "remote")
    ds = _mkdir(base / "ds")
    (ds / "meta.md").write_text("x\n")
    Store.open(ds).record("snapshot")
    with dataset_lock(ds, what="batch writer"), spawn_local(base, lock_timeout=0.2) as remote:
        remote.hello()
        with pytest.raises(LockTimeout) as err:
            remote.record("ds", "record before push")
    assert "batch writer" in err.value.one_line() and "pid" in err.value.one_line()


def test_push_refused_when_remote_moved(tmp_path):
    from usr.errors import ConflictError

    base = _mkdir(tmp_path / "remote")
    a = Store.open(_mkdir(tmp_path / "a" / "ds"))
    (a.path / "meta.md").write_text("from a\n")
    head_a = a.record("snapshot").commit
    b = Store.open(_mkdir(tmp_path / "b" / "ds"))
    (b.path / "meta.md").write_text("from b\n")
    head_b = b.record("snapshot").commit
    with spawn_local(base) as remote:
        remote.hello()
        remote.push("ds", a, head_a, None)
        with pytest.raises(ConflictError) as err:
            remote.push("ds", b, head_b, None)
        assert "remote moved" in err.value.one_line()
        assert remote.heads("ds")["head"] == head_a
    assert (base / "ds" / "meta.md").read_text() == "from a\n"


def test_a_short_write_to_a_raw_pipe_is_completed_not_dropped() -> None:
    """A raw pipe's ``write`` may take only part of the bytes and say how many (a write
    interrupted by a signal or a ptrace stop: a pull under a sampling profiler lost bytes
    mid-frame so; here a non-blocking pipe that is full, which does the same every time).
    The frame writer writes the rest, and the reader gets every frame whole."""
    r, w = os.pipe()
    os.set_blocking(w, False)
    rfile, wfile = os.fdopen(r, "rb", buffering=0), os.fdopen(w, "wb", buffering=0)
    payloads = [os.urandom(300_000) for _ in range(8)]  # past the (widened) pipe buffer
    got: list[tuple[bytes, bytes] | None] = []
    failed: list[BaseException] = []

    def read_all() -> None:
        reader = p.FrameIO(p.FileChannel(rfile, io.BytesIO()), peer="test")
        try:
            while (frame := reader.read_frame(eof_ok=True)) is not None:
                got.append(frame)
        except BaseException as exc:  # noqa: BLE001 - reported by the test's thread
            failed.append(exc)

    thread = threading.Thread(target=read_all)
    thread.start()
    writer = p.FrameIO(p.FileChannel(io.BytesIO(), wfile), peer="test")
    for i, data in enumerate(payloads):
        writer.send_object("blob", f"{i:040x}", data)
    writer.flush()
    wfile.close()
    thread.join()
    assert not failed, failed
    assert [payload[21:] for _kind, payload in got] == payloads  # type byte, raw id, bytes
