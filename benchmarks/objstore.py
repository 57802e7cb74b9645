"""The object-store scenario: usr push against an S3 bucket on a SeaweedFS (``weed mini``,
tests/fixtures/s3server.py) that this scenario starts on 127.0.0.1 and stops afterwards.

Initial push of a dataset of ``primary_bytes`` of records, a 1% append pushed, and a no-op
push and diff; the baseline is one raw PUT (obstore) of the dataset's records file to the
same bucket, so the ratio says what usr's packing, index and ref cost over moving bytes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import datagen
import tomli_w
from measure import Run, clean_env, run

from usr.dataset import Dataset

MIB = 1 << 20
DS = "bench/s3ds"


def _usr(b: Any, env: dict[str, str], root: Path, *args: str) -> tuple[Run, dict[str, Any]]:
    import sys

    audit = b.workdir / "logs" / f"s3-audit-{time.monotonic_ns()}.json"
    argv = [sys.executable, "-m", "usr", "--root", str(root), *args]
    argv += ["--audit-json-out", str(audit)]
    result = run(argv, env=env).check(f"usr {args[0]}")
    return result, json.loads(audit.read_text())["data"]


def _raw_put(server: Any, path: Path) -> float:
    """Seconds for one PUT of ``path``'s bytes into the bucket (the baseline)."""
    import obstore
    from obstore.store import S3Store

    store = S3Store(
        server.bucket,
        endpoint=server.endpoint,
        access_key_id=server.access_key,
        secret_access_key=server.secret_key,
        region="us-east-1",
        virtual_hosted_style_request=False,
        client_options={"allow_http": True},
    )
    data = path.read_bytes()
    start = time.perf_counter()
    obstore.put(store, "baseline/records.parquet", data)
    return time.perf_counter() - start


def _side(r: Run, audit: dict[str, Any]) -> dict[str, Any]:
    moved = audit.get("bytes_moved") or {}
    return {
        "seconds": round(r.seconds, 3),
        "client_cpu_seconds": round(r.cpu_seconds, 3),
        "client_rss_mib": round(r.client_rss_mib(), 1),
        "bytes_sent": int(moved.get("sent", 0)),
        "bytes_received": int(moved.get("received", 0)),
        "transfer_state": audit.get("transfer_state"),
    }


def object_store(b: Any) -> None:
    from tests.fixtures import s3server

    server = s3server.start(b.workdir / "s3")
    try:
        _measure(b, server)
    finally:
        server.stop()


def _measure(b: Any, server: Any) -> None:
    root = b.workdir / "s3local"
    root.mkdir(exist_ok=True)
    config = b.workdir / "s3remotes.toml"
    config.write_text(tomli_w.dumps({"remotes": {"s3": server.profile(prefix="bench")}}))
    config.chmod(0o600)
    env = clean_env() | server.env() | {"USR_REMOTES_PATH": str(config)}
    ds = Dataset.init(root, DS, source="benchmark")
    rows = b.rows_for(b.sizes.primary_bytes)
    datagen.write_records(ds, rows, seed=11)
    size = ds.records_path.stat().st_size
    push, audit = _usr(b, env, root, "push", DS, "s3", "-y")
    raw = _raw_put(server, ds.records_path)
    datagen.append_rows(ds, max(1, rows // 100), seed=12)
    inc, inc_audit = _usr(b, env, root, "push", DS, "s3", "-y")
    noop, noop_audit = _usr(b, env, root, "push", DS, "s3", "-y")
    diff, diff_audit = _usr(b, env, root, "diff", DS, "s3")
    b.results["object_store"] = {
        "records_bytes": size,
        "initial_push": _side(push, audit),
        "raw_put_seconds": round(raw, 3),
        "initial_push_mib_per_s": round(size / MIB / push.seconds, 1),
        "raw_put_mib_per_s": round(size / MIB / raw, 1) if raw > 0 else None,
        "time_vs_raw_put": round(push.seconds / raw, 2) if raw > 0 else None,
        "incremental_push": _side(inc, inc_audit),
        "incremental_sent_fraction_of_file": round(
            _side(inc, inc_audit)["bytes_sent"] / ds.records_path.stat().st_size, 5
        ),
        "noop_push": _side(noop, noop_audit),
        "noop_diff": _side(diff, diff_audit),
    }
