"""What the client holds per file: the audit document is written as it is encoded, each
side of a comparison is summarised (counts, the named files) rather than listed, and the
post-pull check works from the comparison's entries. Real stores, real files."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from tests.conftest import recorded_dataset
from usr.errors import VerifyError
from usr.store import Store
from usr.sync import engine, trees
from usr.sync.engine import SyncOptions

DS = "ns/memory"


@pytest.mark.parametrize(
    "files",
    [
        [],
        [{}],
        [{"path": "a", "size": 1, "ok": True, "gone": None, "ratio": 0.5, "n": -3}],
        [{"path": 'é/\u2028"q"\\', "id": "0" * 40}, {}, {"z": False, "a": 10**20}],
        [{"path": "nested", "more": {"x": [1, 2]}}],  # not flat: the plain encoder
        [{"path": "odd", "when": Path("/p")}],  # not JSON: str() of it, as default=str
        [{"path": f"p{i}", "size": i, "ok": i % 2 == 0} for i in range(20)],
        [{"path": f"p{i}"} for i in range(19)] + [{}],
        [{"path": f"p{i}", "x": [i]} for i in range(20)],  # long, not flat
    ],
)
def test_the_audit_document_streams_as_json_dumps_writes_it(files):
    paths = [f'd/é{i}\t"q"' for i in range(12)]
    doc = {
        "usr_output_version": 1,
        "data": {
            "action": "push",
            "files": files,
            "zeta": [],
            "_auxiliary": {"l": ["x"], "local_only": paths, "n": [1, 2.5, None, True] * 3},
            "mixed": [1, "a", {"b": 1}] * 4,
            "nested": {"deeper": {"paths": paths, "after": {"k": 1}}},
        },
        "changes": {"any": True},
    }
    out = io.StringIO()
    engine.dump_audit(doc, out)
    assert out.getvalue() == json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n"


def test_the_audit_file_is_the_indented_json_of_the_document(tmp_path):
    doc = {
        "data": {"files": [{"path": f"d/{i}.txt", "size": i, "ok": None} for i in range(50)]},
        "where": tmp_path,  # not JSON: written as its str(), as json.dumps(default=str) does
        "text": "µ-ü \u2028 tab\t",
    }
    out = tmp_path / "audit.json"
    engine.write_audit(out, doc)
    expected = json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n"
    assert out.read_text(encoding="utf-8") == expected


def test_a_summary_counts_what_a_listing_counts(tmp_path):
    files = {
        "_auxiliary/a/b/c.txt": b"1",
        "_auxiliary/top.txt": b"2",
        "_derived/x/part-0.parquet": b"3",
        "_snapshots/s1.txt": b"4",
        "notes/free.txt": b"5",
        "loose.txt": b"6",
    }
    ds = recorded_dataset(tmp_path / "local", DS, files)
    store = Store.open(ds.path)
    tree = store.tree_of(store.head())
    summary = trees.summarize(store, tree)
    listing = trees.listing(store, tree)
    counts = {s: sum(1 for f in listing if f.section == s) for s in summary.counts}
    assert summary.counts == counts
    assert summary.named == [f for f in listing if f.section in ("primary", "meta", "events")]


def test_verify_working_from_a_comparison_catches_a_changed_file(tmp_path):
    """The post-pull check given the comparison's entries hashes each working file against
    its entry id without reading the object, and still names a file that differs."""
    ds = recorded_dataset(
        tmp_path / "local", DS, {"_auxiliary/a.txt": b"alpha\n", "_derived/b.txt": b"b"}
    )
    store = Store.open(ds.path)
    head = store.head()
    entries = [c for c in store.diff(None, head) if c.path.startswith("_")]
    opts = SyncOptions()
    assert engine.verify_working(store, ds.path, head, opts, entries=entries) == 2
    (ds.path / "_auxiliary" / "a.txt").write_bytes(b"alphA\n")
    with pytest.raises(VerifyError, match="a.txt"):
        engine.verify_working(store, ds.path, head, opts, entries=entries)
