"""Concurrent writers on one dataset: exactly one push wins, batch writers are never torn
or lost, and local commands serialise (docs/reliability.md, "Concurrency").

Every overlap here is exact, not likely: one process is held at a named point with
``USR_PAUSE_POINT=name:FIFO`` (usr/faults.py) while the other runs, then released. The
remote end is the real OpenSSH fixture (profile ``bu-scc``); the paused remote process gets
its pause point through ``remote_usr`` (``env USR_PAUSE_POINT=... usr``), as an operator's
profile would pass any environment. The contending commands are real ``usr`` subprocesses;
batch writers are Python processes calling the public API, as cluster jobs do.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_usr, usr_env
from tests.test_sync_scenarios import DS, files_of, head, make_dataset
from usr.dataset import Dataset
from usr.store import Store
from usr.sync import engine
from usr.sync.engine import SyncOptions


class Pause:
    """One ``USR_PAUSE_POINT`` of one process: :meth:`wait` returns once the process sits
    at the point, :meth:`release` lets it go on."""

    def __init__(self, directory: Path, name: str) -> None:
        self.name = name
        self.fifo = directory / f"pause-{name}"
        os.mkfifo(self.fifo)
        self.fd: int | None = None

    @property
    def spec(self) -> str:
        return f"{self.name}:{self.fifo}"

    def wait(self, proc: subprocess.Popen) -> None:
        """Block until ``proc`` (or the remote end it started) opens the pipe at the point.

        Opening the write end of a FIFO returns only when a reader opens it. If ``proc``
        ends first, a watcher opens the read end itself so the wait ends and the test fails
        with what the process said.
        """
        box: dict[str, int] = {}
        opener = threading.Thread(target=lambda: box.update(fd=os.open(self.fifo, os.O_WRONLY)))
        opener.start()

        def watch() -> None:
            proc.wait()
            if opener.is_alive():
                fd = os.open(self.fifo, os.O_RDONLY | os.O_NONBLOCK)
                opener.join()
                os.close(fd)

        threading.Thread(target=watch, daemon=True).start()
        opener.join()
        self.fd = box["fd"]
        if proc.poll() is not None:
            self.release()
            out, err = proc.communicate()
            pytest.fail(f"process ended before pausing at {self.name}: {out}{err}")

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def test_pause_point_holds_the_process_until_released(tmp_path):
    """The mechanism itself: the process stops at the named point (once), not before."""
    pause = Pause(tmp_path, "x")
    script = (
        "from usr import faults\nprint('before', flush=True)\n"
        "for _ in range(2):\n    faults.point('x')\nprint('after', flush=True)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        env=usr_env({"USR_PAUSE_POINT": f"other:/nonexistent,{pause.spec}"}),
        stdout=subprocess.PIPE,
    )
    out = proc.stdout.fileno()
    with paused(proc, pause):
        assert os.read(out, 100) == b"before\n"
        assert select.select([out], [], [], 0)[0] == []  # held: nothing more written
    assert proc.stdout.read() == b"after\n" and proc.returncode == 0


@contextlib.contextmanager
def paused(proc: subprocess.Popen, pause: Pause) -> Iterator[None]:
    """Hold ``proc`` at ``pause`` for the ``with`` block; always release and reap it."""
    try:
        pause.wait(proc)
        yield
    finally:
        pause.release()
        if proc.poll() is None and proc.returncode is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=120)


class Laptop:
    """One machine's datasets root and remotes.toml whose ``bu-scc`` is the sshd fixture."""

    def __init__(self, sshd, tmp: Path, name: str, cluster: Path, remote_env: str = "") -> None:
        self.root = tmp / name
        self.root.mkdir()
        self.config = tmp / f"{name}-remotes.toml"
        remote_usr = f"env {remote_env} {sshd.remote_usr}" if remote_env else sshd.remote_usr
        sshd.write_remotes(self.config, cluster, remote_usr=remote_usr)

    @property
    def dir(self) -> Path:
        return self.root / DS

    def opts(self) -> SyncOptions:
        return SyncOptions(remotes_config=str(self.config))

    def pull(self) -> dict:
        target = engine.resolve_target(self.root, DS, self.opts())
        return engine.pull(target, "bu-scc", self.opts())["data"]

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {"USR_REMOTES_PATH": str(self.config), **(extra or {})}

    def cli(self, *args: str, extra: dict[str, str] | None = None):
        return run_usr("--root", str(self.root), *args, env=self.env(extra))

    def start(self, *args: str, extra: dict[str, str] | None = None) -> subprocess.Popen:
        argv = [sys.executable, "-m", "usr", "--root", str(self.root), *args]
        return subprocess.Popen(
            argv,
            env=usr_env(self.env(extra)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def clean_error(err: str, code: int, words: str) -> None:
    """One ``usr: error:`` line naming ``words``, no traceback."""
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("usr: error:")]
    assert len(lines) == 1 and words in lines[0], err


def remote_intact(cluster: Path, expect_head: str) -> None:
    """The remote dataset is exactly one recorded state: no staging left, fsck clean."""
    directory = cluster / DS
    assert head(directory) == expect_head
    assert not list(directory.glob(".usr-staging-*"))
    assert not (directory / ".usr" / "CHECKOUT").exists()
    store = Store.open(directory)
    assert store.status() == []
    assert run_usr("--root", str(cluster), "fsck", DS).returncode == 0


@pytest.fixture
def cluster(tmp_path: Path) -> Path:
    path = tmp_path / "cluster"
    path.mkdir()
    make_dataset(path)
    return path


def _grow(laptop: Laptop, seq: str) -> str:
    Dataset.open(laptop.root, DS).append_records([{"sequence": seq}], bio_type="dna")
    return Store.open(laptop.dir).head()


# -- two pushes --------------------------------------------------------------------------


def test_push_overtaken_before_its_ref_update_fails_as_remote_moved(sshd, tmp_path, cluster):
    """A's pack is on the remote, its ref update queued; B pushes in between. A is then
    refused by the compare-and-swap ("remote moved", exit 8) and nothing of it is applied."""
    pause = Pause(tmp_path, "serve.received")
    a = Laptop(sshd, tmp_path, "a", cluster, remote_env=f"USR_PAUSE_POINT={pause.spec}")
    b = Laptop(sshd, tmp_path, "b", cluster)
    a.pull(), b.pull()
    base = head(cluster / DS)
    a_head, b_head = _grow(a, "AAAACCCCGGGGTTTT"), _grow(b, "TTTTGGGGCCCCAAAA")
    a_files = files_of(a.dir)

    proc = a.start("push", DS, "bu-scc", "-y")
    with paused(proc, pause):
        r = b.cli("push", DS, "bu-scc", "-y")
        assert r.returncode == 0, r.stderr
        assert head(cluster / DS) == b_head
    code, _, err = finish(proc)
    assert code == 8
    clean_error(err, 8, "remote moved")
    remote_intact(cluster, b_head)
    assert files_of(cluster / DS) == files_of(b.dir)
    assert head(a.dir) == a_head and files_of(a.dir) == a_files  # A lost nothing
    r = a.cli("push", DS, "bu-scc", "-y")  # and a rerun names why, still changing nothing
    assert r.returncode == 8
    clean_error(r.stderr, 8, f"merge base {base[:12]}")
    assert head(cluster / DS) == b_head


def test_push_meeting_a_push_mid_checkout_times_out_naming_the_holder(sshd, tmp_path, cluster):
    """A holds the remote dataset lock while checking out; B's push waits at most
    --lock-timeout, then fails (exit 9) naming A's step. A finishes; the remote is A's."""
    pause = Pause(tmp_path, "checkout.staged")
    a = Laptop(sshd, tmp_path, "a", cluster, remote_env=f"USR_PAUSE_POINT={pause.spec}")
    b = Laptop(sshd, tmp_path, "b", cluster)
    a.pull(), b.pull()
    before_files, before_head = files_of(cluster / DS), head(cluster / DS)
    a_head, b_head = _grow(a, "AAAACCCCGGGGTTTT"), _grow(b, "TTTTGGGGCCCCAAAA")

    proc = a.start("push", DS, "bu-scc", "-y")
    with paused(proc, pause):
        r = b.cli("push", DS, "bu-scc", "-y", "--lock-timeout", "0.5")
        assert r.returncode == 9, r.stderr
        clean_error(r.stderr, 9, "push: update ref and check out")
        assert "pid" in r.stderr
        # Staged but not promoted: the remote still shows the old state, whole.
        assert files_of(cluster / DS) == before_files and head(cluster / DS) == before_head
    code, _, err = finish(proc)
    assert code == 0, err
    remote_intact(cluster, a_head)
    assert files_of(cluster / DS) == files_of(a.dir)
    assert head(b.dir) == b_head
    assert b.cli("push", DS, "bu-scc", "-y").returncode == 8  # diverged now: refused


# -- batch writers on the cluster --------------------------------------------------------

WRITER = """
import sys
from usr.dataset import Dataset
from usr.errors import UsrError
try:
    Dataset.open(sys.argv[1], sys.argv[2]).append_event(sys.argv[3], {"job": 7})
except UsrError as exc:
    print(exc.one_line(), file=sys.stderr)
    sys.exit(exc.exit_code)
"""


def start_writer(cluster: Path, action: str, lock_timeout: str | None = None) -> subprocess.Popen:
    """A batch job appending one event line (no record), as cluster jobs log their steps."""
    extra = {"USR_LOCK_TIMEOUT": lock_timeout} if lock_timeout else None
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(cluster), DS, action],
        env=usr_env(extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def event_lines(directory: Path) -> list[dict]:
    raw = (directory / ".events.log").read_bytes()
    assert raw.endswith(b"\n")
    return [json.loads(line) for line in raw.splitlines()]  # every line whole JSON


def test_event_appended_on_the_remote_during_a_push_checkout_is_never_lost(sshd, tmp_path, cluster):
    """The push's checkout on the remote holds the events lock with the dataset lock, so a
    batch job's line waits and lands after the pushed log (or times out naming the push);
    it is never overwritten by the promoted ``.events.log``."""
    pause = Pause(tmp_path, "checkout.staged")
    a = Laptop(sshd, tmp_path, "a", cluster, remote_env=f"USR_PAUSE_POINT={pause.spec}")
    a.pull()
    a_head = _grow(a, "AAAACCCCGGGGTTTT")
    pushed_log = event_lines(a.dir)

    proc = a.start("push", DS, "bu-scc", "-y")
    with paused(proc, pause):
        code, _, err = finish(start_writer(cluster, "hasty job", lock_timeout="0.5"))
        assert code == 9, err
        assert "push: update ref and check out" in err and "Traceback" not in err
        waiting = start_writer(cluster, "patient job")
    code, _, err = finish(proc)
    assert code == 0, err
    code, _, err = finish(waiting)
    assert code == 0, err
    assert head(cluster / DS) == a_head
    remote_log = event_lines(cluster / DS)
    assert remote_log[: len(pushed_log)] == pushed_log
    assert [e["action"] for e in remote_log[len(pushed_log) :]] == ["patient job"]
    data = a.pull()  # the next pull brings the line: only ever appended
    assert data["transfer_state"] == "TRANSFERRED"
    assert event_lines(a.dir) == remote_log


def test_event_appended_on_the_remote_during_a_pull_comes_with_the_next_one(
    sshd, tmp_path, cluster
):
    """A batch job appends while the pull's record on the remote is under way: the job is
    not held up, the pull moves the state recorded before the line (whole lines, a prefix
    of the remote log) and the next pull brings the line."""
    pause = Pause(tmp_path, "snapshot.after-chunks")
    a = Laptop(sshd, tmp_path, "a", cluster, remote_env=f"USR_PAUSE_POINT={pause.spec}")
    plain = Laptop(sshd, tmp_path, "plain", cluster)
    plain.pull()
    Dataset.open(cluster, DS).append_records([{"sequence": "GGGGAAAACCCCTTTT"}], bio_type="dna")
    recorded_log = event_lines(cluster / DS)

    proc = a.start("pull", DS, "bu-scc", "-y")
    with paused(proc, pause):
        code, _, err = finish(start_writer(cluster, "job during pull", lock_timeout="0.5"))
        assert code == 0, err  # an event append never waits on a record
    code, out, err = finish(proc)
    assert code == 0, err
    assert "TRANSFERRED" in out
    assert event_lines(a.dir) == recorded_log
    remote_log = event_lines(cluster / DS)
    assert remote_log[: len(recorded_log)] == recorded_log
    assert [e["action"] for e in remote_log[len(recorded_log) :]] == ["job during pull"]
    assert [c.path for c in Store.open(cluster / DS).status()] == [".events.log"]
    plain.pull()
    assert event_lines(plain.dir) == remote_log


# -- local commands ----------------------------------------------------------------------


def test_two_local_commands_on_one_dataset_serialise(tmp_path):
    """An import paused inside its record holds the dataset lock: a snapshot with a short
    timeout fails naming it (exit 9), a second import waits and then lands on top."""
    laptop = tmp_path / "laptop"
    Dataset.init(laptop, DS)
    (tmp_path / "a.csv").write_text("sequence\nACGTACGTAA\n")
    (tmp_path / "b.csv").write_text("sequence\nGGGTTTAACC\n")
    pause = Pause(tmp_path, "snapshot.before-ref")
    base = ["--root", str(laptop)]

    def start(*args: str, extra: dict[str, str] | None = None) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "usr", *base, *args],
            env=usr_env(extra),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    first = start("import", DS, "--path", str(tmp_path / "a.csv"),
                  extra={"USR_PAUSE_POINT": pause.spec})  # fmt: skip
    with paused(first, pause):
        r = run_usr(*base, "snapshot", DS, env={"USR_LOCK_TIMEOUT": "0.5"})
        assert r.returncode == 9
        clean_error(r.stderr, 9, "record import")
        assert f"pid {first.pid}" in r.stderr
        second = start("import", DS, "--path", str(tmp_path / "b.csv"))
    assert finish(first)[0] == 0
    code, _, err = finish(second)
    assert code == 0, err
    ds = Dataset.open(laptop, DS)
    assert sorted(ds.to_table(False).column("sequence").to_pylist()) == [
        "ACGTACGTAA",
        "GGGTTTAACC",
    ]
    store = Store.open(ds.path)
    top, below = store.log(limit=2)
    assert top.action == below.action == "import"
    assert list(top.parents) == [below.id]
    assert store.status() == []
    assert [e["action"] for e in ds.events_tail(2)] == ["import", "import"]


def test_event_appended_during_a_local_checkout_lands_after_it(tmp_path):
    """``usr checkout`` holds the events lock while it stages and promotes: a batch job's
    line waits (or times out naming the checkout) and is appended to the restored log."""
    laptop = tmp_path / "laptop"
    ds = make_dataset(laptop)
    store = Store.open(ds.path)
    older = store.log(limit=2)[1].id
    pause = Pause(tmp_path, "checkout.staged")
    proc = subprocess.Popen(
        [sys.executable, "-m", "usr", "--root", str(laptop), "checkout", DS, older[:12]],
        env=usr_env({"USR_PAUSE_POINT": pause.spec}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    with paused(proc, pause):
        code, _, err = finish(start_writer(laptop, "hasty job", lock_timeout="0.5"))
        assert code == 9, err
        assert f"checkout {older[:12]}" in err
        waiting = start_writer(laptop, "patient job")
    assert finish(proc)[0] == 0
    code, _, err = finish(waiting)
    assert code == 0, err
    assert store.head() == older
    log = event_lines(ds.path)
    assert [e["action"] for e in log] == ["init", "patient job"]
