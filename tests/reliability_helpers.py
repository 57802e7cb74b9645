"""Shared pieces of the crash and connection-fault suites (tests/test_reliability_*.py).

A *pair* is a laptop root and a cluster root holding one dataset, plus a remotes.toml whose
``bu-scc`` reaches the cluster over the real sshd fixture or as a ``local`` subprocess.
The remote ``usr`` is started through a small wrapper script that (a) may set
``USR_FAULT_POINT`` for the server only and (b) holds a FIFO open for the server's
lifetime, so a test can wait for a server orphaned by a killed client to finish before it
inspects the cluster copy — a pipe, not a sleep.
"""

from __future__ import annotations

import os
import random
import select
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pygit2
import pytest
import tomli_w

from tests.conftest import Result, run_usr
from usr.dataset import Dataset
from usr.errors import TransportError
from usr.store import Store, gitpack

DS = "densegen/my_dataset"
REMOTE = "bu-scc"
#: The "full" audit of a dataset copy: every file but usr's own runtime state.
_RUNTIME = (".usr", ".usr-")


def files_of(directory: Path) -> dict[str, bytes]:
    """Every dataset file under ``directory`` (not .usr/, staging, locks) -> bytes."""
    out: dict[str, bytes] = {}
    if not directory.is_dir():
        return out
    for p in sorted(directory.rglob("*")):
        rel = p.relative_to(directory).as_posix()
        if p.is_file() and not rel.startswith(_RUNTIME) and not rel.endswith(".lock"):
            out[rel] = p.read_bytes()
    return out


def open_store(directory: Path) -> Store | None:
    """The dataset's store, recovering an interrupted checkout as every usr command does
    (None when there is no store at all: a bootstrap killed before it made one)."""
    if not (directory / ".usr" / "HEAD").exists():
        return None
    return Store.open(directory, create=False)


def reachable(store: Store | None) -> set[str]:
    """Every commit some ref of ``store`` reaches (heads, remote-tracking, saved)."""
    if store is None:
        return set()
    out: set[str] = set()
    for name in store.refs.names():
        tip = store.head(name)
        if tip and tip not in out:
            walker = store.repo.walk(pygit2.Oid(hex=tip), pygit2.enums.SortMode.TOPOLOGICAL)
            out.update(str(c.id) for c in walker)
    return out


def leftovers(directory: Path, prefix: str) -> list[Path]:
    """Paths under ``directory`` (any depth) whose name starts with ``prefix``."""
    if not directory.is_dir():
        return []
    return [p for p in directory.rglob(f"{prefix}*")]


class ServerExit:
    """Waits for the wrapped remote ``usr`` to exit: the wrapper opens ``fifo`` (read-write,
    so it never blocks, even once nobody watches) and execs usr, which inherits it; EOF
    here means the server process is gone."""

    def __init__(self, fifo: Path) -> None:
        fifo.unlink(missing_ok=True)
        os.mkfifo(fifo)
        self.fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)

    def wait(self, limit: float = 120) -> None:
        """Return once no server holds the FIFO (at once if none ever started)."""
        try:
            while True:
                try:
                    if not os.read(self.fd, 4096):
                        return  # no writer (any more): read on a writerless FIFO is EOF
                except BlockingIOError:
                    pass  # the server still holds it: wait for its hangup
                ready, _, _ = select.select([self.fd], [], [], limit)
                assert ready, "the remote usr did not exit"
        finally:
            os.close(self.fd)


@dataclass
class Pair:
    """Both copies of the dataset and how the laptop reaches the cluster."""

    tmp: Path
    kind: str  # "ssh" | "local"
    base_usr: str  # command that runs usr where the server runs
    sshd: object | None = None
    counter: list[int] = field(default_factory=lambda: [0])

    @property
    def local_root(self) -> Path:
        return self.tmp / "laptop"

    @property
    def remote_root(self) -> Path:
        return self.tmp / "cluster"

    @property
    def local_dir(self) -> Path:
        return self.local_root / DS

    @property
    def remote_dir(self) -> Path:
        return self.remote_root / DS

    @property
    def config(self) -> Path:
        return self.tmp / "remotes.toml"

    def configure(self, fault: str | None = None) -> ServerExit:
        """Point ``bu-scc`` at a fresh server wrapper (with ``fault`` for the server only);
        returns the watch to wait on after the command."""
        self.counter[0] += 1
        n = self.counter[0]
        fifo = self.tmp / f"serve-{n}.fifo"
        watch = ServerExit(fifo)
        wrapper = self.tmp / f"serve-{n}.sh"
        env = f"env USR_FAULT_POINT={fault} " if fault else ""
        wrapper.write_text(f'#!/bin/sh\nexec 9<>"{fifo}"\nexec {env}{self.base_usr} "$@"\n')
        wrapper.chmod(0o755)
        if self.kind == "ssh":  # the sshd fixture, or any server with the same profile()
            table = self.sshd.profile(self.remote_root, remote_usr=str(wrapper))  # type: ignore[union-attr]
        else:
            table = {"type": "local", "base_dir": str(self.remote_root), "remote_usr": str(wrapper)}
        self.config.write_text(tomli_w.dumps({"remotes": {REMOTE: table}}))
        self.config.chmod(0o600)
        return watch

    def run(
        self,
        *args: str,
        client_fault: str | None = None,
        server_fault: str | None = None,
    ) -> Result:
        """``usr --root LAPTOP ARGS`` with the faults named; waits for the server to exit."""
        watch = self.configure(server_fault)
        env = {"USR_REMOTES_PATH": str(self.config)}
        if client_fault:
            env["USR_FAULT_POINT"] = client_fault
        try:
            return run_usr("--root", str(self.local_root), *args, env=env)
        finally:
            watch.wait()


def make_pair(kind: str, tmp: Path, sshd: object | None = None) -> Pair:
    """A pair reaching the cluster through ``sshd`` (kind "ssh": anything with the sshd
    fixture's ``remote_usr`` and ``profile()``) or a local subprocess (kind "local")."""
    base = sshd.remote_usr if kind == "ssh" else f"{sys.executable} -m usr"  # type: ignore[union-attr]
    return Pair(tmp, kind, base, sshd)


def prepare_pair(
    kind: str,
    template: Path,
    tmp: Path,
    command: str,
    sshd: object | None = None,
    changed: bool = False,
    **change,
) -> Pair:
    """A copy of the synced ``template`` pair where the sending side (laptop for a push,
    cluster for a pull) has new work (:func:`change_dataset`) to transfer; ``changed``: the
    template's sending side holds it already (a template prepared once per command)."""
    pair = make_pair(kind, tmp, sshd)
    copy_tree(template / "laptop", pair.local_root)
    copy_tree(template / "cluster", pair.remote_root)
    if not changed:
        change_dataset(pair.local_root if command == "push" else pair.remote_root, 7, **change)
    return pair


def prepare_case(
    case: Kill, template: Path, tmp: Path, request: pytest.FixtureRequest, changed: bool = False
) -> Pair:
    """:func:`prepare_pair` for ``case`` (the sshd fixture fetched only for an ssh case),
    the receiving copy removed for a bootstrap."""
    sshd = request.getfixturevalue("sshd") if case.kind == "ssh" else None
    pair = prepare_pair(case.kind, template, tmp, case.command, sshd, changed)
    if case.bootstrap:  # the receiving side has nothing yet
        shutil.rmtree(pair.remote_dir if case.command == "push" else pair.local_dir)
    return pair


def build_template(base: Path, build: Callable[[Path], Path] | None = None) -> Path:
    """Laptop and cluster copies of one dataset, synced (the cluster built it with
    ``build``, by default :func:`build_dataset`; the laptop pulled it in-process over a
    local remote); tests copy it instead of rebuilding."""
    from usr.sync import engine

    (base / "laptop").mkdir()
    (base / "cluster").mkdir()
    (build or build_dataset)(base / "cluster")
    config = base / "template-remotes.toml"
    table = {"type": "local", "base_dir": str(base / "cluster")}
    config.write_text(tomli_w.dumps({"remotes": {REMOTE: table}}))
    config.chmod(0o600)
    options = engine.SyncOptions(remotes_config=str(config))
    engine.pull(engine.resolve_target(base / "laptop", DS, options), REMOTE, options)
    assert files_of(base / "laptop" / DS) == files_of(base / "cluster" / DS)
    return base


def random_bytes(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def sequences(seed: int, count: int, length: int = 300) -> list[dict[str, str]]:
    rng = random.Random(seed)
    return [{"sequence": "".join(rng.choices("ACGT", k=length))} for _ in range(count)]


def build_dataset(root: Path, rows: int = 3000, aux_bytes: int = 1_500_000) -> Path:
    """A real dataset (Parquet records, meta, events) plus a large auxiliary file and a
    small derived part: records.parquet and the aux file are chunked (over 256 KiB)."""
    ds = Dataset.init(root, DS, source="reliability")
    ds.append_records(sequences(1, rows), bio_type="dna", alphabet="dna_4")
    (ds.path / "_artifacts").mkdir()
    (ds.path / "_artifacts/reads.bin").write_bytes(random_bytes(2, aux_bytes))
    (ds.path / "_artifacts/old.txt").write_text("removed by the next state\n")
    (ds.path / "_derived/infer").mkdir(parents=True)
    (ds.path / "_derived/infer/part-0.parquet").write_bytes(random_bytes(3, 20_000))
    ds.record_state("build")
    return ds.path


def change_dataset(root: Path, seed: int, aux_growth: int = 1_000_000) -> None:
    """A batch job's work: rows appended (recorded, as the Dataset API does), then files
    edited, added and deleted without recording (the next sync records them)."""
    directory = root / DS
    Dataset.open(root, DS).append_records(sequences(seed, 200), bio_type="dna", alphabet="dna_4")
    reads = directory / "_artifacts/reads.bin"
    reads.write_bytes(reads.read_bytes() + random_bytes(seed + 1, aux_growth))
    (directory / "_artifacts/old.txt").unlink(missing_ok=True)
    (directory / f"_artifacts/new-{seed}.txt").write_text(f"added by batch {seed}\n")
    with (directory / "meta.md").open("a") as fh:
        fh.write(f"\nbatch {seed}\n")
    # More new files than the unpack limit, so the transfer writes an object pack (and its
    # kill points are reached) rather than loose objects.
    notes = directory / f"_artifacts/notes-{seed}"
    notes.mkdir()
    for i in range(gitpack.UNPACK_LIMIT + 10):
        (notes / f"n{i:03d}.txt").write_text(f"batch {seed} note {i}\n")


def copy_tree(src: Path, dst: Path) -> None:
    """``src`` copied to ``dst`` (which must not exist) by ``cp -a``: modes, times and
    symlinks kept, and fast on trees of thousands of directories."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", "--", str(src), str(dst)], check=True)


def sweep(cases: list, per_run: int, salt: int = 0) -> list:
    """The cases this run tries: all of them under ``USR_FULL_SWEEP=1``; otherwise
    ``per_run`` of them, a window that rotates with ``USR_SWEEP_SEED`` (default 0) over a
    fixed shuffle, so successive seeds cover the whole set and any run can be repeated."""
    if os.environ.get("USR_FULL_SWEEP") == "1" or per_run >= len(cases):
        return list(cases)
    seed = int(os.environ.get("USR_SWEEP_SEED", "0"))
    order = list(cases)
    random.Random(20261130 + salt).shuffle(order)
    start = (seed * per_run) % len(order)
    return [order[(start + i) % len(order)] for i in range(per_run)]


@dataclass(frozen=True)
class Kill:
    """One crash case: ``usr COMMAND DS bu-scc -y`` with ``point`` armed in one process."""

    command: str  # push | pull
    side: str  # client | server: the process that dies
    point: str  # USR_FAULT_POINT value, name[:N]
    kind: str = "ssh"  # ssh | local
    bootstrap: bool = False  # the receiving side has no copy yet

    @property
    def id(self) -> str:
        boot = "-bootstrap" if self.bootstrap else ""
        return f"{self.kind}-{self.command}{boot}-{self.side}-{self.point}"

    @property
    def args(self) -> tuple[str, ...]:
        return (self.command, DS, REMOTE, "-y")


#: Points where a killed checkout has left files staged for the receiver.
STAGING_POINTS = (
    "checkout.mid-stage",
    "checkout.staged",
    "checkout.streamed-file",
    "checkout.streamed-chunk",
    "gate.staged-check",
)


def check_after_kill(
    directory: Path, before: dict[str, bytes], target: dict[str, bytes], commits: set[str]
) -> None:
    """Sound store, a recorded (or untouched) working state, no recorded state lost."""
    store = open_store(directory)
    files = files_of(directory)
    assert files in (before, target), f"{directory.name}: files are neither before nor after"
    if store is None:
        assert files == before == {} and not commits
        return
    assert store.fsck() == []
    if store.head() is not None:
        assert store.verify_working() == [] or files == before, "files differ from HEAD"
    else:
        assert files == before == {}
    assert commits <= reachable(store), "a recorded state was lost"


def staged_inodes(directory: Path) -> dict[str, int]:
    """Files a killed checkout left staged, by dataset path: a rerun that reuses them
    renames these very files into place."""
    out = {}
    for staging in leftovers(directory, ".usr-staging-"):
        for f in staging.rglob("*"):
            if f.is_file():
                out[f.relative_to(staging).as_posix()] = f.stat().st_ino
    return out


def check_completed(pair: Pair, target: dict[str, bytes], commits: dict[str, set[str]]) -> None:
    """Both heads equal, both copies exactly ``target``, stores sound and tidy."""
    local, remote = open_store(pair.local_dir), open_store(pair.remote_dir)
    assert local is not None and remote is not None
    assert local.head() == remote.head() is not None
    assert local.head(f"refs/remotes/{REMOTE}/main") == local.head()
    assert files_of(pair.local_dir) == files_of(pair.remote_dir) == target
    for name, store in (("local", local), ("remote", remote)):
        assert store.fsck() == [], name
        assert store.verify_working() == [], name
        assert commits[name] <= reachable(store), f"{name}: a recorded state was lost"
        assert not leftovers(store.path, ".usr-staging-"), f"{name}: staging left behind"
        assert not (store.gitdir / "CHECKOUT").exists(), f"{name}: checkout journal left"
        store.gc(prune_age=0)
        assert not leftovers(store.path, ".usr-tmp-"), f"{name}: temp files survive gc"
        assert store.fsck() == [], name


def kill(pair: Pair, args: tuple[str, ...], side: str, point: str) -> None:
    """Run the command with ``point`` armed in the ``side`` process; it must die there
    (a killed server is reported by the client in one ``usr: error:`` line, exit 6)."""
    if side == "client":
        killed = pair.run(*args, client_fault=point)
        assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr)
    else:
        killed = pair.run(*args, server_fault=point)
        lines = killed.stderr.strip().splitlines()
        assert killed.returncode == TransportError.exit_code, killed.stderr
        assert len(lines) == 1 and lines[0].startswith("usr: error: "), killed.stderr


def kill_then_rerun(pair: Pair, case: Kill) -> None:
    """The crash promise for one case on a prepared ``pair``: the command killed at the
    case's point leaves both copies valid (:func:`check_after_kill`), what a killed
    checkout staged is there, and the rerun completes (:func:`check_completed`) reusing
    the staged files (same inode)."""
    sides = {"local": pair.local_dir, "remote": pair.remote_dir}
    before = {name: files_of(d) for name, d in sides.items()}
    commits = {name: reachable(open_store(d)) for name, d in sides.items()}
    target = before["local" if case.command == "push" else "remote"]

    kill(pair, case.args, case.side, case.point)
    for name, directory in sides.items():
        check_after_kill(directory, before[name], target, commits[name])
    staged = {name: staged_inodes(d) for name, d in sides.items()}
    if case.point.split(":")[0] in STAGING_POINTS:
        assert staged["remote" if case.command == "push" else "local"], "nothing was staged"

    again = pair.run(*case.args)
    assert again.returncode == 0, again.stderr
    check_completed(pair, target, commits)
    for name, directory in sides.items():  # what a killed checkout staged was reused
        for rel, inode in staged[name].items():
            assert (directory / rel).stat().st_ino == inode, f"{name}: {rel} staged again"
