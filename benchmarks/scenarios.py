"""The measurements of issue 7, each against baselines run in the same place on the same data.

Every scenario gets a :class:`Bench` (local and remote roots, the loopback sshd, runners)
and stores its figures in ``bench.results[name]``. Baselines are OpenSSH and rsync against
the same sshd: ``tar | ssh host 'cat > file'`` (raw stream of the same bytes), ``rsync -a``
and ``rsync -an`` (the no-op diff). Each figure is reported absolute and as a ratio.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datagen
import objstore
from loopback import Loopback
from measure import REPO, Run, UsrRunner, clean_env, run

from usr.dataset import Dataset
from usr.store import Store

MIB = 1 << 20
SMOKE_SCALE_FILES = 500
RSYNC_EXCLUDES = ["--exclude=/.usr", "--exclude=.usr.lock", "--exclude=.events.lock"]
#: git without anyone's configuration, and without the automatic gc or maintenance a commit
#: of a million loose objects would start in the background while the next figure runs.
GIT = "git -c user.name=bench -c user.email=bench@127.0.0.1 -c gc.auto=0 -c maintenance.auto=false"


@dataclass
class Sizes:
    """How big each scenario's data is (see MODES)."""

    primary_bytes: int
    sidecars: int
    small_files: int
    small_file_bytes: int
    big_file_bytes: int
    history_bytes: int
    history_states: int
    status_files: tuple[int, ...]
    repeats: int
    #: Free memory touched once before measuring (``measure.warm_memory``).
    warm_memory_bytes: int = 0
    #: Records of the record-diff scenario (then 1% appended).
    record_diff_rows: int = 3_000_000
    #: File counts of the scale scenario (``--scale``; empty: the scenario does nothing).
    scale_files: tuple[int, ...] = ()
    #: Wait past the stat cache's racy window (2 s) before a measured snapshot/status;
    #: smoke runs skip it (their statuses then re-hash every file: no figure is read).
    racy_wait_seconds: float = 2.5


MODES = {
    # The sizes.
    "full": Sizes(
        1 << 30,
        10_000,
        100_000,
        10_000,
        4 << 30,
        1 << 30,
        20,
        (1000, 10_000, 100_000),
        3,
        warm_memory_bytes=64 << 30,
        record_diff_rows=3_000_000,
    ),
    # Under 3 minutes on 2 cores: the same scenarios, smaller.
    "quick": Sizes(
        32 * MIB,
        1000,
        2000,
        10_000,
        256 * MIB,
        8 * MIB,
        20,
        (1000, 3000, 10_000),
        2,
        4 << 30,
        record_diff_rows=3_000_000,
    ),
    # Seconds: only checks that every scenario runs (used by the test suite).
    "smoke": Sizes(
        1 * MIB,
        20,
        100,
        2000,
        8 * MIB,
        1 * MIB,
        3,
        (50, 100, 200),
        1,
        record_diff_rows=40_000,
        # Not 10k: creating files is slow here (~0.15-0.4 ms each, see
        # docs/performance.md), and the scale scenario creates each file five times.
        scale_files=(SMOKE_SCALE_FILES,),
        racy_wait_seconds=0.0,
    ),
}
#: ``run.py --scale``: the scale scenario of issue 23 at its sizes (and the floors).
MODES["scale"] = dataclasses.replace(
    MODES["quick"], repeats=3, scale_files=(10_000, 100_000, 1_000_000)
)


class Bench:
    """Everything a scenario needs; ``results`` collects the figures."""

    def __init__(self, workdir: Path, sizes: Sizes, loop: Loopback) -> None:
        self.workdir = workdir
        self.sizes = sizes
        self.loop = loop
        self.local = workdir / "local"
        self.remote = loop.remote_root
        self.pulled = workdir / "pulled"
        self.baseline = workdir / "baseline"
        for d in (self.local, self.pulled, self.baseline, workdir / "logs"):
            d.mkdir(parents=True, exist_ok=True)
        self.usr = UsrRunner(self.local, loop.remotes, loop.probe_log, workdir / "logs")
        self.results: dict[str, Any] = {}
        self.per_row: float | None = None
        #: Baseline programs this machine lacks (their figures are None).
        self.missing: set[str] = set()
        #: Writes the results so far (run.py sets it): a long scenario calls it between
        #: steps, so a run cut short keeps what it measured.
        self.checkpoint: Callable[[], None] = lambda: None

    # -- baselines ----------------------------------------------------------------------
    def _ssh(self, host: str, command: str) -> str:
        return f"{self.loop.ssh_command()} {host} {shlex.quote(command)}"

    def cat_tree(self, src: Path, dest: str, host: str = "bench") -> Run:
        """Raw stream: the dataset's files (no store) as one tar, into ``ssh 'cat > f'``."""
        target = self.baseline / dest
        line = f"tar -C {shlex.quote(str(src))} --exclude=./.usr -cf - . | " + self._ssh(
            host, f"cat > {shlex.quote(str(target))}"
        )
        return run(line).check("ssh cat")

    def untar_tree(self, src: Path, dest: str, host: str = "bench") -> Run:
        """The same tar unpacked on the remote (``ssh 'tar -xf -'``): the stream plus the
        cost of creating every file there, which a push's checkout must also pay."""
        target = self.baseline / dest
        remote = f"mkdir -p {shlex.quote(str(target))} && tar -C {shlex.quote(str(target))} -xf -"
        line = f"tar -C {shlex.quote(str(src))} --exclude=./.usr -cf - . | " + self._ssh(
            host, remote
        )
        return run(line).check("ssh tar -x")

    def cat_file(self, src: Path, dest: str, host: str = "bench") -> Run:
        target = self.baseline / dest
        line = f"{self._ssh(host, 'cat > ' + shlex.quote(str(target)))} < {shlex.quote(str(src))}"
        return run(line).check("ssh cat")

    def rsync(self, src: Path, dest: str, host: str = "bench", dry: bool = False) -> Run:
        """``rsync -a`` (or ``-an``) of a dataset directory, store excluded, with --stats.

        Without rsync on this machine (or named in ``$USR_BENCH_WITHOUT``) the baseline is
        missing: its figures are None and the results say so; the scenario goes on."""
        if "rsync" in os.environ.get("USR_BENCH_WITHOUT", "").split(",") or not shutil.which(
            "rsync"
        ):
            self.missing.add("rsync")
            return Run.absent()
        target = self.baseline / dest
        argv = ["rsync", "-a", "--delete", "--stats", *RSYNC_EXCLUDES]
        if dry:
            argv.append("-n")
        argv += ["-e", self.loop.ssh_command(), f"{src}/", f"{host}:{target}/"]
        proxy = self.loop.proxy if host == "bench-wire" else None
        result = run(argv, proxy=proxy).check("rsync")
        return result

    def git(self, repo: Path, *commands: str) -> Run:
        """``git C1 && git C2 ...`` in ``repo`` as one measured shell line, or a missing
        baseline as for rsync when git is absent (or named in ``$USR_BENCH_WITHOUT``)."""
        if "git" in os.environ.get("USR_BENCH_WITHOUT", "").split(",") or not shutil.which("git"):
            self.missing.add("git")
            return Run.absent()
        env = clean_env() | {"GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1"}
        line = " && ".join(f"{GIT} {command}" for command in commands)
        return run(f"cd {shlex.quote(str(repo))} && {line}", env=env).check("git")

    # -- usr ----------------------------------------------------------------------------
    def sync(self, action: str, ds: str, remote: str = "bench", root: Path | None = None) -> Run:
        """``usr push|pull|diff`` with an audit file; the audit is kept on ``Run.client``."""
        audit = self.workdir / "logs" / f"audit-{self.usr.count + 1:04d}.json"
        args = [action, ds, remote, "--audit-json-out", str(audit)]
        if action != "diff":
            args.append("-y")
        proxy = self.loop.proxy if remote == "bench-wire" else None
        result = self.usr(*args, proxy=proxy, root=root).check(f"usr {action}")
        if audit.exists():
            result.client["audit"] = json.loads(audit.read_text())["data"]
        return result

    def rows_for(self, target: int) -> int:
        if self.per_row is None:
            self.per_row = datagen.bytes_per_row(self.workdir)
        return datagen.rows_for(target, self.per_row)


# -- helpers ---------------------------------------------------------------------------


def _rsync_stats(r: Run) -> dict[str, int]:
    out = {}
    for key, pattern in (
        ("sent", r"Total bytes sent: ([\d,.]+)"),
        ("received", r"Total bytes received: ([\d,.]+)"),
    ):
        m = re.search(pattern, r.stdout)
        if m:
            out[key] = int(re.sub(r"[,.]", "", m.group(1)))
    return out


def _usr_side(r: Run) -> dict[str, Any]:
    """What one usr command cost on each side."""
    audit = r.client.get("audit", {})
    return {
        "seconds": round(r.seconds, 3),
        "client_cpu_seconds": round(r.cpu_seconds, 3),
        "server_cpu_seconds": round(r.server_cpu_seconds(), 3),
        "client_rss_mib": round(r.client_rss_mib(), 1),
        "server_rss_mib": round(r.server_rss_mib(), 1),
        "protocol_bytes": int(r.client.get("bytes_in", 0) + r.client.get("bytes_out", 0)),
        "round_trips_after_handshake": r.round_trips_after_handshake(),
        "sessions": int(r.client.get("sessions", 0)),
        "transfer_state": audit.get("transfer_state"),
    }


def _median(runs: list[Run]) -> Run:
    ordered = sorted(runs, key=lambda r: r.seconds)
    return ordered[len(ordered) // 2]


def _repeat(n: int, fn: Callable[[], Run]) -> tuple[Run, list[float | None]]:
    runs = [fn() for _ in range(n)]
    return _median(runs), [_secs(r) for r in runs]


def _at_rest(step: Callable[[], Run]) -> Callable[[], Run]:
    """``step``, run once the kernel has written out the dirty pages (untimed): a step
    must not pay for the writeback of the files the step before it created
    (docs/performance.md, "Scale (issue 23): the issue's table in one run, sixteenth
    round")."""

    def settled() -> Run:
        os.sync()
        return step()

    return settled


def _ratio(a: float | None, b: float | None, digits: int = 3) -> float | None:
    return round(a / b, digits) if a is not None and b else None


def _secs(r: Run) -> float | None:
    """A run's wall time, or None for a baseline whose program is missing."""
    return None if r.missing else round(r.seconds, 3)


def _cpu(r: Run) -> float | None:
    return None if r.missing else round(r.cpu_seconds, 3)


def _wire(r: Run) -> int | None:
    return None if r.missing else r.wire_bytes


def _rss(r: Run) -> dict[str, float]:
    return {"client": round(r.client_rss_mib(), 1), "server": round(r.server_rss_mib(), 1)}


def _remove(*paths: Path) -> None:
    """Free the disk a finished scenario used (full mode writes tens of GB)."""
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists():
            path.unlink()


# -- scenarios -------------------------------------------------------------------------


def warm_up(b: Bench) -> None:
    """Compile usr's and its libraries' bytecode on both sides once, unmeasured, so the
    first measured command does not pay for it (an installed usr never does)."""
    imports = (
        "import porcelain.cli, usr.ssh, usr.sync.server; "
        "getattr(porcelain.cli, 'mount_all', lambda: None)()"  # older trees mounted all at import
    )
    run([sys.executable, "-c", imports]).check("warm-up")
    remote = (
        f"PYTHONPATH={shlex.quote(str(REPO))} {shlex.quote(sys.executable)} "
        f"-c {shlex.quote(imports)}"
    )
    run(f"{b.loop.ssh_command()} bench {shlex.quote(remote)}").check("remote warm-up")


def floors(b: Bench) -> None:
    """Fixed costs every command pays on this machine, to read the other figures against:
    an OpenSSH login that runs nothing, and importing what a usr client needs."""
    n = max(3, b.sizes.repeats)
    login, login_all = _repeat(n, lambda: run(f"{b.loop.ssh_command()} bench true"))
    usr_import, _ = _repeat(n, lambda: run([sys.executable, "-c", "import porcelain.cli"]))
    ssh_import, _ = _repeat(n, lambda: run([sys.executable, "-c", "import asyncssh"]))
    version, _ = _repeat(n, lambda: b.usr("--version"))
    b.results["floors"] = {
        "ssh_login_true_seconds": round(login.seconds, 3),
        "ssh_login_true_seconds_all": login_all,
        "python_import_porcelain_seconds": round(usr_import.seconds, 3),
        "python_import_porcelain_cpu_seconds": round(usr_import.cpu_seconds, 3),
        "python_import_asyncssh_seconds": round(ssh_import.seconds, 3),
        "python_import_asyncssh_cpu_seconds": round(ssh_import.cpu_seconds, 3),
        "usr_version_seconds": round(version.seconds, 3),
    }


def primary_dataset(b: Bench) -> None:
    """A dataset of ``primary_bytes`` of records, overlays and ``sidecars`` small files:
    first snapshot, initial push against ssh cat and rsync, bootstrap pull."""
    s = b.sizes
    ds = Dataset.init(b.local, "bench/ds", source="benchmark")
    rows = b.rows_for(s.primary_bytes)
    start = time.perf_counter()
    datagen.write_records(ds, rows, seed=1)
    datagen.write_files(ds.path / "_artifacts" / "summaries", s.sidecars, seed=2)
    gen_s = time.perf_counter() - start
    snap = b.usr("snapshot", "bench/ds", "-m", "benchmark import").check("usr snapshot")
    datagen.attach_overlays(ds, max(100, rows // 20), seed=3)
    files, total = datagen.tree_bytes(ds.path)
    b.results["dataset"] = {
        "rows": rows,
        "records_bytes": ds.records_path.stat().st_size,
        "files": files,
        "bytes": total,
        "generate_seconds": round(gen_s, 1),
    }
    b.results["snapshot_initial"] = {
        "seconds": round(snap.seconds, 3),
        "mib_per_s": round(total / MIB / snap.seconds, 1),
        "rss_mib": round(snap.client_rss_mib(), 1),
    }
    cat = b.cat_tree(ds.path, "ds.tar")
    rs = b.rsync(ds.path, "ds")
    push = b.sync("push", "bench/ds")
    pull = b.sync("pull", "bench/ds", root=b.pulled)
    b.results["initial_push"] = {
        "bytes": total,
        "usr": _usr_side(push),
        "ssh_cat_seconds": round(cat.seconds, 3),
        "ssh_cat_client_cpu_seconds": round(cat.cpu_seconds, 3),
        "rsync_seconds": _secs(rs),
        "rsync_client_cpu_seconds": _cpu(rs),
        "usr_mib_per_s": round(total / MIB / push.seconds, 1),
        "ssh_cat_mib_per_s": round(total / MIB / cat.seconds, 1),
        "throughput_vs_ssh_cat": _ratio(cat.seconds, push.seconds),
        "time_vs_rsync": _ratio(push.seconds, _secs(rs)),
    }
    b.results["initial_pull"] = {
        "usr": _usr_side(pull),
        "throughput_vs_ssh_cat": _ratio(cat.seconds, pull.seconds),
    }


def incremental(b: Bench) -> None:
    """Append 1% rows; push it and rsync it, both through the counting proxy."""
    ds = Dataset.open(b.local, "bench/ds")
    rows = b.results["dataset"]["rows"]
    start = time.perf_counter()
    datagen.append_rows(ds, max(1, rows // 100), seed=4)
    append_s = time.perf_counter() - start
    size = ds.records_path.stat().st_size
    rs = b.rsync(ds.path, "ds", host="bench-wire")
    push = b.sync("push", "bench/ds", "bench-wire")
    stats = _rsync_stats(rs)
    b.results["incremental_push"] = {
        "records_bytes": size,
        "append_and_record_seconds": round(append_s, 2),
        "usr": _usr_side(push),
        "usr_wire_bytes": push.wire_bytes,
        "usr_wire_fraction_of_file": round(push.wire_bytes / size, 5),
        "usr_protocol_fraction_of_file": round(_usr_side(push)["protocol_bytes"] / size, 5),
        "rsync_seconds": _secs(rs),
        "rsync_client_cpu_seconds": _cpu(rs),
        "rsync_wire_bytes": _wire(rs),
        "rsync_wire_fraction_of_file": _ratio(_wire(rs), size, 5),
        "rsync_stats": stats,
        "time_vs_rsync": _ratio(push.seconds, _secs(rs)),
        "wire_vs_rsync": _ratio(push.wire_bytes, _wire(rs)),
    }
    # The pulled copy catches up too (so later no-op pulls are no-ops).
    b.results["incremental_pull"] = {"usr": _usr_side(b.sync("pull", "bench/ds", root=b.pulled))}


def noop(b: Bench) -> None:
    """Re-push, re-pull and diff with nothing changed: round trips, bytes, time."""
    n = b.sizes.repeats
    ds_path = b.local / "bench" / "ds"
    out: dict[str, Any] = {}
    rs, rs_times = _repeat(n, lambda: b.rsync(ds_path, "ds"))
    rs_dry, rs_dry_times = _repeat(n, lambda: b.rsync(ds_path, "ds", dry=True))
    rs_wire = b.rsync(ds_path, "ds", host="bench-wire")
    rs_dry_wire = b.rsync(ds_path, "ds", host="bench-wire", dry=True)
    for action, root, baseline, base_times, base_wire in (
        ("push", None, rs, rs_times, rs_wire),
        ("pull", b.pulled, rs, rs_times, rs_wire),
        ("diff", None, rs_dry, rs_dry_times, rs_dry_wire),
    ):
        timed, times = _repeat(n, lambda a=action, r=root: b.sync(a, "bench/ds", root=r))
        wired = b.sync(action, "bench/ds", "bench-wire", root=root)
        out[f"noop_{action}"] = {
            "usr": _usr_side(timed),
            "usr_seconds_all": times,
            "usr_wire_bytes": wired.wire_bytes,
            "usr_round_trips_after_handshake": wired.round_trips_after_handshake(),
            "usr_protocol_bytes": _usr_side(wired)["protocol_bytes"],
            "baseline": "rsync -an" if action == "diff" else "rsync -a",
            "baseline_seconds": _secs(baseline),
            "baseline_client_cpu_seconds": _cpu(baseline),
            "baseline_seconds_all": base_times,
            "baseline_wire_bytes": _wire(base_wire),
            "time_vs_baseline": _ratio(timed.seconds, _secs(baseline)),
        }
    b.results.update(out)
    b.results["noop_diff_warm_auth"] = _warm_diff(b, n, rs_dry)
    timed, times = _repeat(n, lambda: b.sync("diff", "bench/ds", "bench-openssh"))
    b.results["noop_diff_openssh"] = {
        "usr": _usr_side(timed),
        "usr_seconds_all": times,
        "transport": "openssh",
        "baseline": "rsync -an",
        "baseline_seconds": _secs(rs_dry),
        "time_vs_baseline": _ratio(timed.seconds, _secs(rs_dry)),
    }


def _warm_diff(b: Bench, n: int, baseline: Run) -> dict[str, Any]:
    """The same no-op diff through a warm-auth holder (``usr remotes warm-auth``): no SSH
    login and no asyncssh import in the command itself, as an operator's second command
    within ``idle_timeout`` would run."""
    holder = ["remotes", "warm-auth", "--remote", "bench", "--remotes-config", str(b.loop.remotes)]
    b.usr(*holder).check("usr remotes warm-auth")
    try:
        timed, times = _repeat(n, lambda: b.sync("diff", "bench/ds"))
    finally:
        b.usr(*holder, "--stop")
    return {
        "usr": _usr_side(timed),
        "usr_seconds_all": times,
        "via_holder": True,
        "baseline": "rsync -an",
        "baseline_seconds": _secs(baseline),
        "time_vs_baseline": _ratio(timed.seconds, _secs(baseline)),
    }


def small_files(b: Bench) -> None:
    """First push of many ~10 KB files against one tar stream through ssh cat; RSS of
    snapshot, push, pull and checkout of that dataset."""
    s = b.sizes
    ds = Dataset.init(b.local, "bench/small", source="benchmark")
    total = datagen.write_files(
        ds.path / "_artifacts" / "reads",
        s.small_files,
        seed=6,
        kind="fasta",
        size=s.small_file_bytes,
    )
    snap = b.usr("snapshot", "bench/small", "-m", "reads").check("usr snapshot")
    files, tree_total = datagen.tree_bytes(ds.path)
    cat = b.cat_tree(ds.path, "small.tar")
    untar = b.untar_tree(ds.path, "small-untar")
    rs = b.rsync(ds.path, "small")
    push = b.sync("push", "bench/small")
    pull = b.sync("pull", "bench/small", root=b.pulled)
    # checkout moves main with it, so go back to the recorded id, not to "main".
    head = Store.open(ds.path, create=False).head()
    back = b.usr("checkout", "bench/small", "HEAD~1").check("usr checkout")
    fwd = b.usr("checkout", "bench/small", head).check("usr checkout")
    status = b.usr("status", "bench/small").check("usr status")
    b.results["small_files"] = {
        "files": files,
        "bytes": tree_total,
        "payload_bytes": total,
        "usr": _usr_side(push),
        "ssh_cat_seconds": round(cat.seconds, 3),
        "ssh_cat_client_cpu_seconds": round(cat.cpu_seconds, 3),
        "ssh_untar_seconds": round(untar.seconds, 3),
        "time_vs_ssh_untar": _ratio(push.seconds, untar.seconds),
        "rsync_seconds": _secs(rs),
        "rsync_client_cpu_seconds": _cpu(rs),
        "throughput_vs_ssh_cat": _ratio(cat.seconds, push.seconds),
        "time_vs_rsync": _ratio(push.seconds, _secs(rs)),
        "files_per_s": round(files / push.seconds),
        "rss_mib": {
            "snapshot": round(snap.client_rss_mib(), 1),
            "push": _rss(push),
            "pull": _rss(pull),
            "checkout_back": round(back.client_rss_mib(), 1),
            "checkout_forward": round(fwd.client_rss_mib(), 1),
            "status": round(status.client_rss_mib(), 1),
        },
        "seconds": {
            "snapshot": round(snap.seconds, 3),
            "pull": round(pull.seconds, 3),
            "checkout_forward": round(fwd.seconds, 3),
        },
    }
    _remove(ds.path, b.remote / "bench" / "small", b.pulled / "bench" / "small")
    _remove(b.baseline / "small")
    _remove(b.baseline / "small.tar", b.baseline / "small-untar")


def big_file(b: Bench) -> None:
    """Peak RSS on each side for snapshot, push, pull and checkout of one huge file."""
    size = b.sizes.big_file_bytes
    ds = Dataset.init(b.local, "bench/big", source="benchmark")
    path = ds.path / "_artifacts" / "big.bin"
    datagen.write_big_file(path, size, seed=7)
    snap = b.usr("snapshot", "bench/big", "-m", "big").check("usr snapshot")
    cat = b.cat_file(path, "big.bin")
    push = b.sync("push", "bench/big")
    pull = b.sync("pull", "bench/big", root=b.pulled)
    # checkout moves main with it, so go back to the recorded id, not to "main".
    head = Store.open(ds.path, create=False).head()
    back = b.usr("checkout", "bench/big", "HEAD~1").check("usr checkout")
    fwd = b.usr("checkout", "bench/big", head).check("usr checkout")
    b.results["big_file"] = {
        "bytes": size,
        "rss_mib": {
            "snapshot": round(snap.client_rss_mib(), 1),
            "push": _rss(push),
            "pull": _rss(pull),
            "checkout": round(fwd.client_rss_mib(), 1),
            "checkout_back": round(back.client_rss_mib(), 1),
        },
        "seconds": {
            "snapshot": round(snap.seconds, 3),
            "push": round(push.seconds, 3),
            "pull": round(pull.seconds, 3),
            "checkout": round(fwd.seconds, 3),
            "ssh_cat": round(cat.seconds, 3),
        },
        "snapshot_mib_per_s": round(size / MIB / snap.seconds, 1),
        "push_throughput_vs_ssh_cat": _ratio(cat.seconds, push.seconds),
    }
    _remove(ds.path, b.remote / "bench" / "big", b.pulled / "bench" / "big", b.baseline / "big.bin")


def storage(b: Bench) -> None:
    """``history_states`` states, each after a 1% append: bytes in ``.usr`` vs the file."""
    s = b.sizes
    ds = Dataset.init(b.local, "bench/history", source="benchmark")
    rows = b.rows_for(s.history_bytes)
    datagen.write_records(ds, rows, seed=8)
    ds.record_state("import")
    per_append = []
    for i in range(s.history_states):
        start = time.perf_counter()
        datagen.append_rows(ds, max(1, rows // 100), seed=100 + i)
        per_append.append(time.perf_counter() - start)
        rows += max(1, rows // 100)
    store = ds.path / ".usr"
    final = ds.records_path.stat().st_size
    apparent = datagen.dir_bytes(store)
    blocks = sum(p.stat().st_blocks * 512 for p in store.rglob("*") if p.is_file())
    b.results["storage"] = {
        "states_after_appends": s.history_states,
        "final_records_bytes": final,
        "store_bytes": apparent,
        "store_disk_bytes": blocks,
        "store_vs_final_file": round(apparent / final, 3),
        "append_and_record_seconds_median": round(statistics.median(per_append), 2),
    }


def status_scaling(b: Bench) -> None:
    """No-op ``usr status`` on 1k/10k/100k files; rchar shows no file contents are read."""
    out = []
    for n in b.sizes.status_files:
        name = f"bench/status_{n}"
        ds = Dataset.init(b.local, name, source="benchmark")
        total = datagen.write_files(ds.path / "_artifacts" / "s", n, seed=9)
        # Files modified within the store's racy window (2 s) of a snapshot are re-hashed
        # by every status until the next snapshot (correctly: they could have changed in
        # the same tick). Measure the steady state an operator sees, not that window.
        time.sleep(2.5)
        b.usr("snapshot", name).check("usr snapshot")
        timed, times = _repeat(b.sizes.repeats, lambda nm=name: b.usr("status", nm))
        floor, _ = _repeat(
            b.sizes.repeats, lambda p=ds.path: run(["find", str(p), "-printf", "%s %T@\\n"])
        )
        out.append(
            {
                "files": n,
                "content_bytes": total,
                "seconds": round(timed.seconds, 3),
                "seconds_all": times,
                "rss_mib": round(timed.client_rss_mib(), 1),
                "cpu_seconds": round(timed.cpu_seconds, 3),
                "rchar": timed.client.get("rchar", 0),
                "find_stat_seconds": round(floor.seconds, 3),
                "time_vs_find": _ratio(timed.seconds, floor.seconds),
            }
        )
    b.results["status_scaling"] = out


def record_diff(b: Bench) -> None:
    """``record_diff_rows`` records, then 1% appended (a batch job's append, one recorded
    state): the record diff of the two states (``usr plumbing diff-records`` and ``usr show
    --rows``), time and peak RSS of the whole command; the issue's bound is 256 MiB."""
    rows = b.sizes.record_diff_rows
    ds = Dataset.init(b.local, "bench/rows", source="benchmark")
    datagen.write_records(ds, rows, seed=21)
    ds.record_state("import")
    appended = max(1, rows // 100)
    datagen.append_rows(ds, appended, seed=22)
    plumbing, times = _repeat(
        b.sizes.repeats,
        lambda: b.usr(
            "plumbing", "diff-records", "bench/rows", "HEAD~1", "HEAD", "--format", "json"
        ).check("usr plumbing diff-records"),
    )
    found = json.loads(plumbing.stdout)["data"]["records"]
    if (found["added"], found["removed"], found["changed"]) != (appended, 0, 0):
        raise RuntimeError(f"record diff found {found}, expected {appended} added")
    show, _ = _repeat(
        b.sizes.repeats,
        lambda: b.usr("show", "bench/rows", "--rows", "--format", "json").check("usr show"),
    )
    streamed = b.usr("plumbing", "diff-records", "bench/rows", "HEAD~1", "HEAD", "-z")
    streamed.check("usr plumbing diff-records -z")
    b.results["record_diff"] = {
        "records_before": rows,
        "records_appended": appended,
        "records_bytes": ds.records_path.stat().st_size,
        "row_groups": found["row_groups"],
        "plumbing_seconds": round(plumbing.seconds, 3),
        "plumbing_seconds_all": times,
        "plumbing_rss_mib": round(plumbing.client_rss_mib(), 1),
        "plumbing_cpu_seconds": round(plumbing.cpu_seconds, 3),
        "plumbing_rchar": plumbing.client.get("rchar", 0),
        "show_rows_seconds": round(show.seconds, 3),
        "show_rows_rss_mib": round(show.client_rss_mib(), 1),
        "streamed_ids_seconds": round(streamed.seconds, 3),
        "streamed_ids_rss_mib": round(streamed.client_rss_mib(), 1),
        "streamed_ids": streamed.stdout.count("\0"),
    }


def scale(b: Bench) -> None:
    """Issue 23's table: for each N of ``scale_files``, N files of 1 KiB in 1,000
    directories: usr snapshot, status (no-op, 10 files changed), push, no-op push and pull
    over the loopback sshd, peak RSS of each command on each side, against ``rsync -a`` /
    ``rsync -an`` (same files, same sshd) and ``git add -A && git commit`` / ``git status``
    (a fresh repository over a copy of the same files); and the stat cache's bytes per file.
    Every N's copies are removed only after the last N is measured (1M files take ~4 GiB
    per copy, 27 GB with all copies), so no tool creates its files after a mass deletion:
    a smaller N's cleanup made the 1M push and pull slower in the same run."""
    if b.sizes.scale_files:
        b.results["scale"] = []
    leftovers: list[Path] = []
    try:
        for n in b.sizes.scale_files:
            b.results["scale"].append(_scale_one(b, n, leftovers))
            b.checkpoint()
    finally:
        _remove(*leftovers)


def _scale_one(b: Bench, n: int, leftovers: list[Path]) -> dict[str, Any]:
    name = f"bench/scale_{n}"
    reps = b.sizes.repeats
    load0 = os.getloadavg()[0]
    ds = Dataset.init(b.local, name, source="benchmark")
    many = ds.path / "_artifacts" / "many"
    start = time.perf_counter()
    total = datagen.write_many_files(many, n, seed=23)
    gen_s = time.perf_counter() - start
    directories = sum(1 for _ in many.iterdir())
    # Files written within the stat cache's racy window (2 s) of a snapshot are re-hashed
    # by every status until the next snapshot: measure the steady state (status_scaling).
    time.sleep(b.sizes.racy_wait_seconds)
    snap = _at_rest(lambda: b.usr("snapshot", name, "-m", "scale").check("usr snapshot"))()
    time.sleep(b.sizes.racy_wait_seconds)
    status, status_all = _repeat(reps, _at_rest(lambda: b.usr("status", name).check("usr status")))
    # Ten files edited, measured in the same conditions as the no-op status (before the
    # copies below put millions more inodes in the kernel's caches; measured after them,
    # the same status took 6.5 s of CPU against the no-op's 2.9 s), then put back.
    recorded: dict[Path, bytes] = {}
    datagen.rewrite_files(many, 10, seed=24, keep=recorded)
    touched, touched_all = _repeat(
        reps, _at_rest(lambda: b.usr("status", name).check("usr status"))
    )
    for path, data in recorded.items():
        path.write_bytes(data)
    # The stat cache: .usr/stat-cache (binary, docs/format.md §6); index.json before it.
    store_dir = ds.path / ".usr"
    index = [p for p in (store_dir / "stat-cache", store_dir / "index.json") if p.exists()]
    index_bytes = sum(p.stat().st_size for p in index)
    # Nothing is deleted from here to the last measured step: on a filesystem without a
    # journal, ext4 skips recently deleted inodes one by one when it allocates one, so
    # creating files within minutes of a mass deletion costs several times the kernel CPU
    # (docs/performance.md, "File creation after a mass deletion"). Each copy stays until
    # the end (at 1M files about 27 GB at once), so every tool creates its files under the
    # same conditions.
    push = _at_rest(lambda: b.sync("push", name))()
    push_noop, push_noop_all = _repeat(reps, _at_rest(lambda: b.sync("push", name)))
    pulled = b.workdir / f"scale-pulled-{n}"
    pulled.mkdir()
    pull = _at_rest(lambda: b.sync("pull", name, root=pulled))()
    dest = f"scale_{n}"
    rs = _at_rest(lambda: b.rsync(ds.path, dest))()
    rs_noop, rs_noop_all = _repeat(reps, _at_rest(lambda: b.rsync(ds.path, dest, dry=True)))
    # git's copy: the same files (store excluded), in a fresh repository made untimed.
    gitrepo = b.workdir / f"git-scale-{n}"
    gitrepo.mkdir()
    if not b.git(gitrepo, "init -q").missing:
        run(
            f"tar -C {shlex.quote(str(ds.path))} --exclude=./.usr -cf - . | "
            f"tar -C {shlex.quote(str(gitrepo))} -xf -"
        ).check("tar copy for git")
    commit = _at_rest(lambda: b.git(gitrepo, "add -A", "commit -q -m scale"))()
    time.sleep(b.sizes.racy_wait_seconds)  # git's racy window is its index's mtime: past it
    git_status, git_status_all = _repeat(reps, _at_rest(lambda: b.git(gitrepo, "status")))

    leftovers += [gitrepo, pulled, b.baseline / dest, ds.path, b.remote / name]

    usr = {
        "snapshot": _usr_side(snap),
        "status_noop": _usr_side(status) | {"seconds_all": status_all},
        "status_touched": _usr_side(touched) | {"seconds_all": touched_all},
        "push": _usr_side(push),
        "push_noop": _usr_side(push_noop) | {"seconds_all": push_noop_all},
        "pull": _usr_side(pull),
    }
    peak = max(max(side["client_rss_mib"], side["server_rss_mib"]) for side in usr.values())
    return {
        "files": n,
        "file_bytes": 1024,
        "directories": directories,
        "content_bytes": total,
        "generate_seconds": round(gen_s, 1),
        "usr": usr,
        "usr_peak_rss_mib": peak,
        # What each status saw (a no-op must be clean; 10 rewritten files must show).
        "status_noop_clean": ": clean (" in status.stdout,
        "status_touched_saw_changes": "unrecorded changes" in touched.stdout,
        "index_files": [p.name for p in index],
        "index_bytes": index_bytes,
        "index_bytes_per_file": round(index_bytes / n, 1),
        "rsync_seconds": _secs(rs),
        "rsync_noop_seconds": _secs(rs_noop),
        "rsync_noop_seconds_all": rs_noop_all,
        "git_add_commit_seconds": _secs(commit),
        "git_status_seconds": _secs(git_status),
        "git_status_seconds_all": git_status_all,
        "snapshot_vs_git_commit": _ratio(snap.seconds, _secs(commit)),
        "status_vs_git_status": _ratio(status.seconds, _secs(git_status)),
        "status_touched_vs_noop": _ratio(touched.seconds, status.seconds),
        "push_vs_rsync": _ratio(push.seconds, _secs(rs)),
        "pull_vs_rsync": _ratio(pull.seconds, _secs(rs)),
        "noop_push_vs_rsync_noop": _ratio(push_noop.seconds, _secs(rs_noop)),
        "loadavg_1min_before": round(load0, 2),
        "loadavg_1min_after": round(os.getloadavg()[0], 2),
    }


SCENARIOS: list[tuple[str, Callable[[Bench], None]]] = [
    ("floors", floors),
    ("primary_dataset", primary_dataset),
    ("incremental", incremental),
    ("noop", noop),
    ("small_files", small_files),
    ("big_file", big_file),
    ("storage", storage),
    ("status_scaling", status_scaling),
    ("record_diff", record_diff),
    ("object_store", objstore.object_store),
    ("scale", scale),
]
#: What ``run.py --scale`` runs (unless ``--only`` says otherwise).
SCALE_SCENARIOS = ("floors", "scale")
