"""The server's side of a push, timed alone: receive + checkout of N small files.

    uv run python benchmarks/stream_receive.py --files 20000 [--profile]
    uv run python benchmarks/stream_receive.py --files 0 --big-mib 1024 \
        --mode trees-first --mode manifests-first

Builds a dataset of N small files (plus records.parquet-sized chunked file with
``--big-mib``), records the frames its push sends, then feeds them to the real receive loop
(``packstream.receive``) and the real ``update_and_checkout`` of a fresh store, twice per
round: as an older client streams (blobs first, nothing staged while receiving:
the checkout reads every blob back and writes it) and as this one does (commits and trees
first, each small file staged as its blob lands: the checkout renames). Wall-clock and
CPU seconds per phase, median of ``--rounds`` (alternated); ``--profile`` prints the top
of a cProfile of one streamed round. No network and no ssh: this is the receiver's own work only.
A third mode, ``manifests-first``, streams as a client with the ``manifest_first``
capability does (each manifest before its chunks; the chunked file is staged as its chunks
land, and the checkout renames it); ``--mode`` picks the modes (default: all three).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from usr.store import Store  # noqa: E402
from usr.store.streamstage import StreamStager  # noqa: E402
from usr.sync import packstream, pushplan, refupdate  # noqa: E402
from usr.sync import protocol as p  # noqa: E402


def build(root: Path, files: int, big_mib: int) -> Store:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        d = root / f"_aux/d{i % 100:02d}"
        if i < 100:
            d.mkdir(parents=True)
        (d / f"f{i:06d}.txt").write_bytes(f"sidecar {i}\n".encode() * (1 + i % 40))
    if big_mib:
        (root / "records.parquet").write_bytes(os.urandom(big_mib << 20))
    store = Store.open(root)
    store.record("import")
    return store


MODES = ("blobs-first", "trees-first", "manifests-first")


def stream(src: Store, mode: str) -> bytes:
    new = src.head()
    oids = src.missing_objects([new], [])
    plan = pushplan.plan_push(src, oids, None)
    out = io.BytesIO()
    fio = p.FrameIO(p.FileChannel(io.BytesIO(), out), peer="bench")
    if mode == "manifests-first":
        sent: set[str] = set()
        for oid in plan.trees_first(oids):
            packstream.send_objects(src, fio, [oid])
            fresh = [c for c in plan.chunks_of.get(oid, []) if c not in sent]
            packstream.send_chunks(src, fio, fresh)
            sent.update(fresh)
    else:
        packstream.send_chunks(src, fio, plan.cids())
        packstream.send_objects(src, fio, plan.trees_first(oids) if mode == "trees-first" else oids)
    fio.send_message("end")
    fio.flush()
    return out.getvalue()


def one(src: Store, data: bytes, work: Path, mode: str) -> tuple[float, ...]:
    """(receive, checkout) wall seconds, then (receive, checkout) CPU seconds (user +
    system of this process), into a fresh store. Nothing is deleted between rounds: ext4
    makes each file created within minutes of a mass delete in its inode group search
    past the recently deleted inodes (``recently_deleted`` in ``ext4_create`` took about 40%
    of the CPU of a round that followed the deletion of the last round's 20,000 files)."""
    work.mkdir()
    dst = Store.open(work)
    first = mode == "manifests-first"
    stager = StreamStager(dst, chunked=first) if mode != "blobs-first" else None
    fio = p.FrameIO(p.FileChannel(io.BytesIO(data), io.BytesIO()), peer="bench")
    t0, c0 = time.perf_counter(), _cpu()
    packstream.receive(dst, fio, "bench", stage=stager, manifests_first=first)
    t1, c1 = time.perf_counter(), _cpu()
    result = stager.result() if stager else None
    refupdate.update_and_checkout(dst, src.head(), None, validate=False, staged=result)
    t2, c2 = time.perf_counter(), _cpu()
    return t1 - t0, t2 - t1, c1 - c0, c2 - c1


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--big-mib", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--mode", action="append", choices=MODES)
    args = ap.parse_args()
    modes = args.mode or list(MODES)
    with tempfile.TemporaryDirectory(prefix="usr-recv-bench-") as tmp:
        base = Path(tmp)
        src = build(base / "src", args.files, args.big_mib)
        data = {mode: stream(src, mode) for mode in modes}
        runs: dict[str, list[tuple[float, ...]]] = {mode: [] for mode in modes}
        for i in range(args.rounds):
            for mode in modes:  # alternated: the disk's load drifts
                runs[mode].append(one(src, data[mode], base / f"dst{i}-{mode}", mode))
        for mode, got in runs.items():
            what = mode
            med = [statistics.median(r[i] for r in got) for i in range(4)]
            print(
                f"{what:32s} median of {len(got)}: receive {med[0]:5.2f} s + checkout "
                f"{med[1]:5.2f} s = {med[0] + med[1]:5.2f} s wall; CPU {med[2]:5.2f} + "
                f"{med[3]:5.2f} = {med[2] + med[3]:5.2f} s"
            )
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
            one(src, data[modes[-1]], base / "dst-profiled", modes[-1])
            prof.disable()
            pstats.Stats(prof).sort_stats("cumulative").print_stats(18)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
