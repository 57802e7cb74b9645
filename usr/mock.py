"""Mock writers: a batch job that appends sequences, and an annotation tool that attaches
an overlay. The demo, the drills, the harness and the tests drive the sync loop with them.

They use only the public Python API (:class:`usr.dataset.Dataset`,
:func:`usr.registry.register`), exactly as a real batch writer on the cluster or an
inference tool on a laptop would, so the loop they exercise is the loop operators run. Output is a
function of ``seed`` and of what the dataset already holds (never of the clock or of global
random state): the same calls on the same dataset write the same rows and values. Only
timestamps (``created_at``, event times, part names) differ between runs.

    mock_batch(root, "densegen/demo", rows=100)      # HPC side: init if absent, append rows
    mock_infer(root, "densegen/demo")                 # laptop: score rows not yet scored
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from usr.dataset import Dataset
from usr.errors import InputError
from usr.layout import dataset_path, resolve_root
from usr.registry import register

#: Length of every mock sequence (long enough that ids never collide in practice).
SEQUENCE_LENGTH = 60
#: The overlay contract the mock annotation writer registers: a pseudo log-likelihood and
#: the GC fraction of each sequence, as an Evo2-like scoring run would attach.
INFER_COLUMNS = ("ll", "gc")


@dataclass(frozen=True)
class BatchResult:
    """What one mock batch did: rows added, rows in the dataset after, batch number."""

    dataset: str
    created: bool
    added: int
    rows: int
    batch: int


@dataclass(frozen=True)
class InferResult:
    """What one mock annotation pass did: rows scored, the part written (None if none)."""

    dataset: str
    namespace: str
    scored: int
    part: str | None


def _rng(*parts: object) -> random.Random:
    """A private generator seeded from ``parts`` (stable across runs and Python versions,
    unlike ``hash()``), so mock data never depends on global random state."""
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def mock_sequences(n: int, seed: int, offset: int) -> list[str]:
    """``n`` DNA sequences, deterministic in ``(seed, offset)``."""
    rng = _rng("mock-batch", seed, offset)
    return ["".join(rng.choice("ACGT") for _ in range(SEQUENCE_LENGTH)) for _ in range(n)]


def mock_batch(
    root: Path | str | None,
    dataset_id: str,
    rows: int = 100,
    seed: int = 0,
    source: str = "mock-batch",
) -> BatchResult:
    """Append ``rows`` new DNA records as one batch (creating the dataset when absent).

    Each call is one batch job: the rows it writes depend on ``seed`` and on how many rows
    the dataset already has, so repeated batches append new sequences and a rerun of the
    same sequence of calls on a fresh root writes the same records. The batch appends its
    own event (``mock batch``) and records a state, like any writer using the API.
    """
    if rows < 1:
        raise InputError(f"--rows must be at least 1, got {rows}")
    base = resolve_root(root)
    created = not (dataset_path(base, dataset_id) / "records.parquet").is_file()
    if created:
        ds = Dataset.init(base, dataset_id, source=source, notes="written by usr.mock")
    else:
        ds = Dataset.open(base, dataset_id)
    before = ds.info()["rows"]
    batch = sum(1 for e in ds.events_tail(10**6) if e.get("action") == "mock batch") + 1
    seqs = mock_sequences(rows, seed, before)
    result = ds.append_records(
        [{"sequence": s} for s in seqs],
        bio_type="dna",
        alphabet="dna_4",
        source=f"{source} batch {batch}",
        on_duplicate="skip",
        action="mock batch",
        event_args={"batch": batch, "seed": seed, "rows_requested": rows},
    )
    return BatchResult(dataset_id, created, result.added, result.rows, batch)


def _scores(ids: list[str], seqs: list[str], seed: int) -> tuple[list[float], list[float]]:
    lls, gcs = [], []
    for rid, seq in zip(ids, seqs, strict=True):
        gc = (seq.count("G") + seq.count("C")) / max(len(seq), 1)
        noise = _rng("mock-infer", seed, rid).random()
        lls.append(round(-1.4 * len(seq) + 10.0 * gc + noise, 6))
        gcs.append(round(gc, 6))
    return lls, gcs


def mock_infer(
    root: Path | str | None,
    dataset_id: str,
    namespace: str = "infer",
    seed: int = 0,
) -> InferResult:
    """Score every record that has no ``<namespace>__ll`` yet and attach one overlay part.

    Registers ``namespace`` (``ll``, ``gc`` as float64) on this root if needed, so it runs
    on a fresh laptop root. Rows already scored are left alone (an attach never overwrites
    without being told to), so repeated passes after new batches add one part each.
    ``Dataset.attach`` freezes the namespace contract into the dataset's
    ``_registry/registry.toml`` and vouches for the part, so the part verifies on a machine
    whose root never registered the namespace. Returns ``scored=0`` and no part when every
    row already has a score.
    """
    base = resolve_root(root)
    ds = Dataset.open(base, dataset_id)
    register(
        base,
        namespace,
        [(f"{namespace}__{c}", "float64") for c in INFER_COLUMNS],
        owner="usr.mock",
        description="mock annotation writer: pseudo log-likelihood and GC fraction",
    )
    view = ds.to_table()
    ll_col = f"{namespace}__ll"
    if ll_col in view.column_names:
        view = view.filter(pc.is_null(view.column(ll_col)))
    if view.num_rows == 0:
        return InferResult(dataset_id, namespace, 0, None)
    ids = view.column("id").to_pylist()
    lls, gcs = _scores(ids, view.column("sequence").to_pylist(), seed)
    table = pa.table({"id": ids, f"{namespace}__ll": lls, f"{namespace}__gc": gcs})
    result = ds.attach(
        table, namespace=namespace, event_args={"tool": "usr.mock infer", "seed": seed}
    )
    return InferResult(
        dataset_id, namespace, result.rows, result.part.relative_to(ds.path).as_posix()
    )
