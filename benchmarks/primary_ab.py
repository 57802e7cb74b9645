"""The primary dataset's syncs over a ``local`` remote, by one or more checkouts of usr:
initial push, bootstrap pull, 1% append push, and the pull of that append.

    uv run python benchmarks/primary_ab.py --work /tmp/pab --tree main=/tmp/main --tree new=.
    uv run python benchmarks/primary_ab.py --work /tmp/pab --tree new=. --profile /tmp/pab/prof

The dataset is made once in ``WORK/template`` as ``benchmarks/run.py`` makes the full-size
one (``--bytes`` of records, 10,000 sidecars, a snapshot, then overlays), with the first
tree's code. Then for each tree in turn: the template is copied to a laptop root, pushed to
an empty remote, pulled into an empty root, 1% rows are appended on the laptop
(``Dataset.append_records``, with this tree's code) and pushed, and the pulled root pulls
again. Each ``--tree NAME=DIR`` is a checkout with its own ``.venv``; both ends run under
``benchmarks/probe.py`` (the server as ``remote_usr``), so CPU and peak RSS are reported
per end; ``--profile DIR`` runs both under cProfile. Prints one JSON line per step.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DS = "bench/ds"


def _probe(tree: Path, profile: Path | None, tag: str) -> list[str]:
    prof = ["-m", "cProfile", "-o", str(profile / f"{tag}.prof")] if profile else []
    return [str(tree / ".venv" / "bin" / "python"), *prof, str(tree / "benchmarks" / "probe.py")]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # bytecode cached, as for an installed usr
    return env


def build(tree: Path, work: Path, target_bytes: int) -> None:
    """The template dataset, made by ``tree``'s code in a child process."""
    script = f"""
import sys
sys.path[:0] = [{str(tree / "benchmarks")!r}, {str(tree)!r}]
from pathlib import Path
import datagen
from usr.dataset import Dataset
work = Path({str(work)!r})
ds = Dataset.init(work / "template", {DS!r}, source="benchmark")
rows = datagen.rows_for({target_bytes}, datagen.bytes_per_row(work))
datagen.write_records(ds, rows, seed=1)
datagen.write_files(ds.path / "_artifacts" / "summaries", 10000, seed=2)
"""
    subprocess.run([str(tree / ".venv/bin/python"), "-c", script], check=True, env=_env())
    usr = [str(tree / ".venv/bin/python"), "-m", "usr", "--root", str(work / "template")]
    subprocess.run([*usr, "snapshot", DS, "-m", "import", "-q"], check=True, env=_env())
    script = f"""
import sys
sys.path[:0] = [{str(tree / "benchmarks")!r}, {str(tree)!r}]
from pathlib import Path
import datagen
import pyarrow.parquet as pq
from usr.dataset import Dataset
ds = Dataset.open(Path({str(work / "template")!r}), {DS!r})
rows = pq.ParquetFile(ds.records_path).metadata.num_rows
datagen.attach_overlays(ds, max(100, rows // 20), seed=3)
"""
    subprocess.run([str(tree / ".venv/bin/python"), "-c", script], check=True, env=_env())


def append(tree: Path, root: Path, rows: int, seed: int) -> float:
    script = f"""
import sys
sys.path[:0] = [{str(tree / "benchmarks")!r}, {str(tree)!r}]
from pathlib import Path
import datagen
from usr.dataset import Dataset
datagen.append_rows(Dataset.open(Path({str(root)!r}), {DS!r}), {rows}, seed={seed})
"""
    start = time.perf_counter()
    subprocess.run([str(tree / ".venv/bin/python"), "-c", script], check=True, env=_env())
    return time.perf_counter() - start


def sync(tree: Path, work: Path, action: str, root: Path, profile: Path | None, tag: str) -> dict:
    """One ``usr push`` or ``usr pull`` by ``tree``: wall, CPU and peak RSS of both ends."""
    import tomli_w

    log = work / f"probe-{tag}.jsonl"
    log.unlink(missing_ok=True)
    server = _probe(tree, profile, f"{tag}-server")
    remote = {
        "type": "local",
        "base_dir": str(work / "cluster"),
        "remote_usr": " ".join([*server, "--log", str(log), "--"]),
    }
    cfg = work / "remotes.toml"
    cfg.write_text(tomli_w.dumps({"remotes": {"bench": remote}}))
    cfg.chmod(0o600)
    env = dict(_env(), USR_REMOTES_PATH=str(cfg))
    argv = [*_probe(tree, profile, f"{tag}-client"), "--log", str(log), "--"]
    argv += ["--root", str(root), action, DS, "bench", "-y"]
    start = time.perf_counter()
    r = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if r.returncode != 0:
        raise SystemExit(f"{tag}: {r.stderr.strip()}")
    ends = {}
    for line in log.read_text().splitlines():
        d = json.loads(line)
        ends["server" if d["args"][:2] == ["plumbing", "serve"] else "client"] = d
    return {
        "step": tag,
        "wall_s": round(wall, 2),
        "cpu_s": {k: round(v["cpu_seconds"], 2) for k, v in ends.items()},
        "rss_mib": {k: round(v["maxrss_kib"] / 1024) for k, v in ends.items()},
        "load": round(os.getloadavg()[0], 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--tree", action="append", required=True, help="NAME=DIR")
    ap.add_argument("--bytes", type=int, default=1 << 30, help="records bytes (default 1 GiB)")
    ap.add_argument("--profile", type=Path)
    args = ap.parse_args()
    trees = {n: Path(d).resolve() for n, d in (t.split("=", 1) for t in args.tree)}
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    if not (work / "template").is_dir():
        build(next(iter(trees.values())), work, args.bytes)
    rows = None
    for round_, (name, tree) in enumerate(trees.items()):
        laptop, pulled = work / "laptop", work / "pulled"
        for d in (work / "cluster", laptop, pulled):
            shutil.rmtree(d, ignore_errors=True)
        (work / "cluster").mkdir()
        subprocess.run(["cp", "-a", str(work / "template"), str(laptop)], check=True)
        subprocess.run(["sync"], check=True)
        if rows is None:
            import pyarrow.parquet as pq

            rows = pq.ParquetFile(laptop / DS / "records.parquet").metadata.num_rows
        steps = [
            ("push", laptop, None),
            ("pull", pulled, None),
            ("push", laptop, "append"),
            ("pull", pulled, "again"),
        ]
        for action, root, extra in steps:
            tag = f"{name}-{action}" + (f"-{extra}" if extra else "")
            out: dict = {}
            if extra == "append":
                out["append_s"] = round(append(tree, laptop, max(1, rows // 100), 100 + round_), 2)
            out.update(sync(tree, work, action, root, args.profile, tag))
            print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
