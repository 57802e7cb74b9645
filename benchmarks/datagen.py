"""Realistic benchmark data, written by usr's own code paths.

* ``records.parquet``: DNA sequences of 100-200 bp in the core schema, built by
  :func:`usr.records.build_records` and written by :func:`usr.records.write_records` (the
  append-friendly layout), streamed batch by batch so a 1 GiB file never sits in memory;
* overlay parts under ``_derived/`` attached through :meth:`usr.dataset.Dataset.attach`;
* many small auxiliary files (JSON summaries, FASTA-like reads) under ``_artifacts/``;
* 1% appends through :meth:`usr.dataset.Dataset.append_records`, as a batch job would.

Everything is seeded, so two runs with the same sizes produce the same bytes.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa

from usr import records, registry
from usr.dataset import Dataset
from usr.locks import dataset_lock

#: Byte -> base: every random byte becomes one of A, C, G, T with equal odds.
_DNA = bytes.maketrans(bytes(range(256)), b"ACGT" * 64)
_BATCH_ROWS = 131_072
_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


def sequences(rng: random.Random, rows: int) -> pa.Array:
    """``rows`` random DNA strings of 100-200 bp (each row unique in practice)."""
    raw = rng.randbytes(rows * 200).translate(_DNA).decode("ascii")
    lengths = rng.randbytes(rows)
    return pa.array(
        [raw[i * 200 : i * 200 + 100 + lengths[i] % 101] for i in range(rows)], pa.string()
    )


def record_batches(seed: int, rows: int, batch: int = _BATCH_ROWS) -> Iterator[pa.RecordBatch]:
    """Core-schema rows, ``batch`` at a time, through usr's validating builder."""
    rng = random.Random(seed)
    done = 0
    while done < rows:
        n = min(batch, rows - done)
        table = records.build_records(
            pa.table({"sequence": sequences(rng, n)}),
            bio_type="dna",
            alphabet="dna_4",
            source="benchmark",
            created_at=_EPOCH + timedelta(seconds=seed * 10_000 + done // batch),
        )
        yield from table.to_batches()
        done += n


def bytes_per_row(workdir: Path) -> float:
    """Measure how many Parquet bytes one row costs with usr's writer (for sizing)."""
    probe = workdir / "calibrate.parquet"
    rows = 4 * records.ROW_GROUP_ROWS
    records.write_records(probe, record_batches(999, rows), records.CORE_SCHEMA)
    size = probe.stat().st_size
    probe.unlink()
    return size / rows


def rows_for(target_bytes: int, per_row: float) -> int:
    return max(100, int(target_bytes / per_row))


def write_records(ds: Dataset, rows: int, seed: int) -> None:
    """Write ``rows`` rows as the dataset's records.parquet (replacing the empty table) and
    log the import, as ``usr import`` would; recording the state is left to the caller."""
    with dataset_lock(ds.path, what="benchmark import"):
        records.write_records(ds.records_path, record_batches(seed, rows), records.CORE_SCHEMA)
        ds.append_event("import", {"added": rows, "source": "benchmark"})


def append_rows(ds: Dataset, rows: int, seed: int) -> None:
    """A batch job's append: new rows at the end, one event, one recorded state."""
    table = pa.Table.from_batches(list(record_batches(seed, rows)))
    ds.append_records(table, action="import", event_args={"source": "benchmark"})


def first_ids(ds: Dataset, n: int) -> pa.Array:
    """Ids of the first ``n`` rows (overlays annotate existing records)."""
    ids: list[pa.Array] = []
    have = 0
    for batch in records.iter_batches(ds.records_path, columns=["id"]):
        ids.append(batch.column(0))
        have += batch.num_rows
        if have >= n:
            break
    return pa.concat_arrays(ids)[:n]


def attach_overlays(ds: Dataset, rows: int, seed: int) -> None:
    """Two overlay parts of namespace ``infer`` (scores, labels) over the first rows."""
    registry.register(
        ds.root,
        "infer",
        registry.parse_columns("infer", "score:float64,label:string"),
        owner="benchmark",
    )
    rng = random.Random(seed)
    ids = first_ids(ds, rows)
    half = max(1, len(ids) // 2)
    for part in (ids[:half], ids[half:]):
        if len(part) == 0:
            continue
        scores = pa.array([rng.random() for _ in range(len(part))], pa.float64())
        labels = pa.array([rng.choice(("bind", "weak", "none")) for _ in range(len(part))])
        ds.attach(pa.table({"id": part, "score": scores, "label": labels}), namespace="infer")


def json_sidecar(rng: random.Random, i: int) -> bytes:
    """A small analysis summary (~1-3 KB of JSON), the typical _artifacts file."""
    values = [round(rng.gauss(0, 1), 6) for _ in range(40 + rng.randrange(120))]
    doc = {"run": i, "tool": "benchmark", "metric": "logit", "values": values}
    return json.dumps(doc, indent=1).encode()


def fasta_file(rng: random.Random, i: int, size: int) -> bytes:
    """A FASTA-like text file of about ``size`` bytes (reads of a sequencing run)."""
    out = bytearray()
    n = 0
    while len(out) < size:
        seq = rng.randbytes(150).translate(_DNA)
        out += f">read_{i}_{n}\n".encode() + seq + b"\n"
        n += 1
    return bytes(out[:size])


def write_files(
    directory: Path, count: int, seed: int, kind: str = "json", size: int = 10_000
) -> int:
    """``count`` small files, 100 per subdirectory; returns their total bytes."""
    rng = random.Random(seed)
    total = 0
    for i in range(count):
        sub = directory / f"d{i // 100:05d}"
        if i % 100 == 0:
            sub.mkdir(parents=True, exist_ok=True)
        if kind == "json":
            data = json_sidecar(rng, i)
            name = f"summary_{i:06d}.json"
        else:
            data = fasta_file(rng, i, size - 500 + rng.randrange(1000))
            name = f"reads_{i:06d}.fa"
        (sub / name).write_bytes(data)
        total += len(data)
    return total


def write_many_files(
    directory: Path, count: int, seed: int, dirs: int = 1000, size: int = 1024
) -> int:
    """``count`` files of ``size`` random bytes spread over ``dirs`` directories (the scale
    benchmark's tree); returns their total bytes.

    A tight loop, since a million files is the point: one seeded ``randbytes`` per
    directory sliced into distinct files, written with bare ``os.open``/``os.write``
    (about 10 µs a file here instead of ~40 µs through ``Path.write_bytes``)."""
    rng = random.Random(seed)
    per_dir = -(-count // dirs)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    done = 0
    d = 0
    while done < count:
        n = min(per_dir, count - done)
        sub = os.path.join(directory, f"d{d:03d}")
        os.makedirs(sub, exist_ok=True)
        block = memoryview(rng.randbytes(n * size))
        for i in range(n):
            fd = os.open(f"{sub}/f{done + i:07d}", flags, 0o644)
            os.write(fd, block[i * size : (i + 1) * size])
            os.close(fd)
        done += n
        d += 1
    return done * size


def rewrite_files(
    directory: Path, count: int, seed: int, size: int = 1024, keep: dict[Path, bytes] | None = None
) -> list[Path]:
    """Give the first file of each of ``count`` directories new bytes of the same size (an
    operator's edit); returns the files changed. ``keep`` gets each file's old bytes."""
    rng = random.Random(seed)
    changed = []
    for sub in sorted(directory.iterdir())[:count]:
        first = min(sub.iterdir())
        if keep is not None:
            keep[first] = first.read_bytes()
        first.write_bytes(rng.randbytes(size))
        changed.append(first)
    return changed


def write_big_file(path: Path, size: int, seed: int) -> None:
    """``size`` incompressible bytes (the worst case: every chunk unique)."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    block = 8 << 20
    with open(path, "wb") as fh:
        left = size
        while left:
            n = min(block, left)
            fh.write(rng.randbytes(n))
            left -= n


def tree_bytes(directory: Path, skip: tuple[str, ...] = (".usr",)) -> tuple[int, int]:
    """(files, bytes) under ``directory``, leaving out usr's own store."""
    files = size = 0
    for path in directory.rglob("*"):
        rel = path.relative_to(directory).parts
        if rel and rel[0] in skip:
            continue
        if path.is_file():
            files += 1
            size += path.stat().st_size
    return files, size


def dir_bytes(directory: Path) -> int:
    """Apparent bytes of every file under ``directory``."""
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
