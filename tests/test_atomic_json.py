"""``usr.atomic.write_json``: the big member is written a batch at a time, and the bytes
are exactly the one-shot compact JSON (the checkout journal and the stat cache use it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from usr import atomic

N = atomic.JSON_BATCH


@pytest.mark.parametrize("count", [0, 1, N, N + 1, 2 * N + 3])
@pytest.mark.parametrize("kind", ["list", "dict"])
def test_batched_bytes_equal_one_shot_json(tmp_path: Path, count: int, kind: str) -> None:
    rows = [{"op": "put", "path": f"d/é {i}\n", "id": f"{i:040x}"} for i in range(count)]
    big = rows if kind == "list" else {r["path"]: [i, r["id"]] for i, r in enumerate(rows)}
    doc = {"commit": "c" * 40, "staging": ".usr-staging-x", "ops": big}
    path = tmp_path / "doc.json"
    atomic.write_json(path, doc, "ops")
    assert path.read_bytes() == json.dumps(doc, separators=(",", ":")).encode()
    assert json.loads(path.read_bytes()) == doc


def test_the_big_member_must_be_last(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="last key"):
        atomic.write_json(tmp_path / "doc.json", {"ops": [], "commit": "c"}, "ops")
    assert not (tmp_path / "doc.json").exists()


def test_list_items_are_written_through_item(tmp_path: Path) -> None:
    """A caller keeps tuples in memory and writes objects (the checkout journal)."""
    ops = [("put", f"f{i}", f"{i:040x}") for i in range(N + 2)]
    path = tmp_path / "doc.json"
    atomic.write_json(path, {"ops": ops}, "ops", item=lambda op: dict(zip("kpi", op, strict=True)))
    want = {"ops": [dict(zip("kpi", op, strict=True)) for op in ops]}
    assert path.read_bytes() == json.dumps(want, separators=(",", ":")).encode()
