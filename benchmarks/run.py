"""usr's performance benchmark: every figure of issue 7 as a ratio against same-run baselines.

One command::

    uv run python benchmarks/run.py --quick           # < 3 minutes, smaller sizes
    uv run python benchmarks/run.py                   # the issue's sizes (1 GiB, 4 GiB, 100k)
    uv run python benchmarks/run.py --smoke           # seconds: does every scenario run?
    uv run python benchmarks/run.py --scale           # issue 23: 10k, 100k, 1M files vs git
    uv run python benchmarks/run.py --scale --scale-files 10000,100000   # chosen counts

It generates realistic data with usr's own writers (records.parquet of 100-200 bp DNA in
the core schema, overlay parts, many small auxiliary files), starts a loopback sshd on
127.0.0.1 (the test suite's fixture), and measures usr against raw ``ssh host 'cat >
file'``, ``rsync -a`` and ``rsync -an`` over that same sshd, on the same data, in the same
run. Results go to ``--out`` (JSON) and a Markdown table on stdout (``--markdown`` writes it
to a file too); docs/performance.md explains them.

Needs: OpenSSH sshd and client, ssh-keygen, rsync, tar; free disk of about 6x the largest
dataset (full mode: ~40 GB).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for path in (str(REPO), str(HERE)):
    if path not in sys.path:
        sys.path.insert(0, path)

import loopback  # noqa: E402
import measure  # noqa: E402
import report  # noqa: E402
import scenarios  # noqa: E402


def machine() -> dict[str, Any]:
    """What the figures were measured on."""

    def first(path: str, key: str) -> str:
        try:
            for line in Path(path).read_text().splitlines():
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return "unknown"

    def version(argv: list[str]) -> str:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        except OSError:
            return "missing"
        return (out.stdout or out.stderr).strip().splitlines()[0]

    import asyncssh
    import blake3
    import pyarrow
    import pygit2

    mem_kib = int(first("/proc/meminfo", "MemTotal").split()[0])
    return {
        "nproc": os.cpu_count(),
        "cpu": first("/proc/cpuinfo", "model name"),
        "memory_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "pyarrow": pyarrow.__version__,
        "pygit2": pygit2.__version__,
        "asyncssh": asyncssh.__version__,
        "blake3": getattr(blake3, "__version__", "unknown"),
        "openssh": version(["ssh", "-V"]),
        "rsync": version(["rsync", "--version"]),
    }


def source() -> dict[str, str]:
    """Which code was measured: ``$BENCH_COMMIT`` (set when running an exported tree),
    else this checkout's HEAD and whether its working tree had uncommitted changes."""
    if os.environ.get("BENCH_COMMIT"):
        return {"commit": os.environ["BENCH_COMMIT"], "tree": str(REPO)}
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return {"commit": "unknown", "tree": str(REPO)}
    return {"commit": head, "tree": str(REPO), "uncommitted_changes": str(bool(dirty))}


def _save(doc: dict[str, Any], out: Path | None) -> None:
    """Write the results so far (a long full run keeps what it measured if cut short)."""
    if out is None:
        return
    doc["targets"] = report.targets(doc)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="smaller sizes, under 3 minutes")
    mode.add_argument("--smoke", action="store_true", help="tiny sizes: checks it runs")
    mode.add_argument(
        "--scale",
        action="store_true",
        help="issue 23's table only: many 1 KiB files vs git and rsync (over an hour at 1M)",
    )
    parser.add_argument(
        "--scale-files",
        metavar="N,N,...",
        help="file counts of the scale scenario (same as --size scale_files=N,N,...)",
    )
    parser.add_argument("--out", type=Path, help="JSON results (default: print only)")
    parser.add_argument("--markdown", type=Path, help="also write the Markdown table here")
    parser.add_argument("--workdir", type=Path, help="where data goes (default: a tmp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the workdir afterwards")
    parser.add_argument(
        "--only", action="append", default=[], help="run only these scenarios (repeatable)"
    )
    parser.add_argument(
        "--size",
        action="append",
        default=[],
        metavar="FIELD=INT",
        help="override one size of the mode (e.g. history_bytes=268435456); recorded",
    )
    opts = parser.parse_args(argv)
    name = "smoke" if opts.smoke else "quick" if opts.quick else "scale" if opts.scale else "full"
    sizes = dataclasses.replace(scenarios.MODES[name])
    if opts.scale_files:
        opts.size.append(f"scale_files={opts.scale_files}")
    for item in opts.size:
        field, _, value = item.partition("=")
        if not hasattr(sizes, field):
            parser.error(f"--size {item}: unknown field")
        try:
            if isinstance(getattr(sizes, field), tuple):  # a list of sizes: N,N,...
                setattr(sizes, field, tuple(int(v) for v in value.split(",") if v))
            else:
                setattr(sizes, field, type(getattr(sizes, field))(value))
        except ValueError:
            parser.error(f"--size {item}: not a number (or a comma-separated list of them)")
    only = opts.only or (list(scenarios.SCALE_SCENARIOS) if name == "scale" else [])
    command = "uv run python benchmarks/run.py" + {"full": "", "quick": " --quick"}.get(
        name, f" --{name}"
    )
    command += "".join(f" --size {item}" for item in opts.size)
    command += "".join(f" --only {only}" for only in opts.only)

    workdir = opts.workdir or Path(tempfile.mkdtemp(prefix=f"usr-bench-{name}-"))
    workdir.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {
        "mode": name,
        "command": command,
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "source": source(),
        "sizes": sizes.__dict__
        | {"status_files": list(sizes.status_files), "scale_files": list(sizes.scale_files)},
        "results": {},
        "errors": {},
        # Other work on the machine inflates wall times: recorded per scenario.
        "load": {},
    }
    start = time.perf_counter()
    remote_root = workdir / "remote"
    remote_root.mkdir(exist_ok=True)
    loop = loopback.start(workdir, remote_root)
    bench = None
    try:
        bench = scenarios.Bench(workdir, sizes, loop)
        bench.results = doc["results"]
        bench.checkpoint = lambda: _save(doc, opts.out)
        scenarios.warm_up(bench)
        doc["warm_memory"] = measure.warm_memory(sizes.warm_memory_bytes)
        for scenario, fn in scenarios.SCENARIOS:
            if only and scenario not in only:
                continue
            t0 = time.perf_counter()
            load0 = os.getloadavg()[0]
            print(f"[bench] {scenario} ...", file=sys.stderr, flush=True)
            try:
                fn(bench)
            except Exception as exc:  # noqa: BLE001 - one failed scenario must not hide the rest
                doc["errors"][scenario] = f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
            doc["load"][scenario] = {
                "seconds": round(time.perf_counter() - t0, 1),
                "loadavg_1min_before": round(load0, 2),
                "loadavg_1min_after": round(os.getloadavg()[0], 2),
            }
            _save(doc, opts.out)
            print(
                f"[bench] {scenario} done in {time.perf_counter() - t0:.1f}s",
                file=sys.stderr,
                flush=True,
            )
    finally:
        loop.stop()
        if not opts.keep and opts.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
        doc["missing"] = sorted(bench.missing) if bench is not None else []
    doc["seconds"] = round(time.perf_counter() - start, 1)
    doc["targets"] = report.targets(doc)
    table = report.markdown(doc)
    _save(doc, opts.out)
    if opts.markdown:
        opts.markdown.write_text(table)
    print(table)
    return 1 if doc["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
