"""The per-file merge rules of usr.merge on real datasets, real Parquet and a real store.

Both sides of each merge are built in ONE dataset store: a state on the "local" branch,
then a checkout back to the base and a state on the "remote" branch. That is exactly what
a merge sees after a fetch (three commits in one store), without a transport in the way;
the transport paths are covered in test_merge_sync.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from porcelain.merge import graph_rows
from usr import ledger, sidecars
from usr import merge as m
from usr import registry as reg
from usr.dataset import Dataset
from usr.store import Store
from usr.store.fsck import check_events_append_only

DS = "densegen/merge_demo"
SEQS = ["ACGTACGTAA", "GGGTTTAACC", "TTTTCCCCAA"]


@pytest.fixture
def ds(root: Path) -> Dataset:
    cols = reg.parse_columns("infer", "infer__ll:float64,infer__label:string")
    reg.register(root, "infer", cols)
    reg.register(root, "score", reg.parse_columns("score", "score__v:int64"))
    d = Dataset.init(root, DS, source="test")
    d.append_records([{"sequence": s} for s in SEQS], bio_type="dna", alphabet="dna_4")
    return d


def _ids(ds: Dataset) -> list[str]:
    return ds.to_table(overlay=False).column("id").to_pylist()


def branches(
    ds: Dataset, local: Callable[[Dataset], None], remote: Callable[[Dataset], None]
) -> tuple[Store, str, str, str]:
    """(store, base, local head, remote head): both branches grown from the current HEAD."""
    store = Store.open(ds.path)
    base = store.head()
    local(ds)
    ds.record_state("local work")
    lhead = store.head()
    store.checkout(base)
    remote(ds)
    ds.record_state("remote work")
    rhead = store.head()
    assert len({base, lhead, rhead}) == 3
    return store, base, lhead, rhead


def run_merge(store: Store, base: str, lhead: str, rhead: str) -> m.MergeResult:
    return m.merge_trees(store, store.tree_of(base), store.tree_of(lhead), store.tree_of(rhead))


def _blob(store: Store, tree: str, path: str) -> bytes:
    entry = {rel: oid for rel, oid, _ in store.ls_tree(tree)}[path]
    return b"".join(store.open_entry(entry))


def _attach(ds: Dataset, ids: list[str], values: list[float]) -> None:
    ds.attach(pa.table({"id": ids, "ll": values}), namespace="infer", columns=["ll"])


def test_chained_loop_merges_every_row_part_and_event_once(ds):
    ids = _ids(ds)

    def local(d: Dataset) -> None:
        _attach(d, ids[:2], [0.5, 1.5])
        d.append_event("notebook", {"n": 1})
        d.append_records([{"sequence": "CCCCAAAAGG"}], bio_type="dna")  # local-only row
        d.append_records([{"sequence": "AAAACCCCGG"}], bio_type="dna")  # also on remote

    def remote(d: Dataset) -> None:
        d.append_records([{"sequence": "AAAACCCCGG"}, {"sequence": "GATTACAGAT"}], bio_type="dna")
        d.append_event("batch", {"n": 2})

    store, base, lhead, rhead = branches(ds, local, remote)
    result = run_merge(store, base, lhead, rhead)
    assert result.mergeable, result.conflicts
    rules = {r.path: r.resolution for r in result.resolutions}
    assert rules["records.parquet"] == m.RECORDS_UNION
    assert rules[".events.log"] == m.EVENTS_APPEND
    part = next(p for p in rules if p.startswith("_derived/infer/"))
    assert rules[part] == m.TAKE_LOCAL

    merged_rows = pq.read_table(pa.BufferReader(_blob(store, result.tree, "records.parquet")))
    remote_rows = pq.read_table(pa.BufferReader(_blob(store, rhead, "records.parquet")))
    got = merged_rows.column("id").to_pylist()
    assert len(got) == len(set(got)) == 6  # 3 base + 2 remote + 1 local-only
    assert got[: remote_rows.num_rows] == remote_rows.column("id").to_pylist()

    merged_log = _blob(store, result.tree, ".events.log")
    remote_log = _blob(store, rhead, ".events.log")
    local_log = _blob(store, lhead, ".events.log")
    assert merged_log.startswith(remote_log)  # the shared copy only grows
    lines = merged_log.splitlines()
    assert len(lines) == len(set(lines))
    assert set(lines) == set(remote_log.splitlines()) | set(local_log.splitlines())

    again = run_merge(store, base, lhead, rhead)
    assert again.tree == result.tree  # deterministic: same inputs, same tree

    commit = m.commit_merge(store, result, lhead, rhead, "bu-scc")
    assert [str(p) for p in store.repo[commit].parent_ids] == [lhead, rhead]
    assert check_events_append_only(store, commit) is None
    store.checkout(commit, expect_head=rhead)
    assert store.fsck() == []
    view = Dataset.open(ds.root, DS).to_table()
    assert view.num_rows == 6 and "infer__ll" in view.column_names
    assert sorted(v for v in view.column("infer__ll").to_pylist() if v is not None) == [0.5, 1.5]


def test_fsck_checks_a_merge_against_its_remote_parent(ds):
    store, base, lhead, rhead = branches(
        ds,
        lambda d: d.append_event("local", {}),
        lambda d: d.append_event("remote", {}),
    )
    result = run_merge(store, base, lhead, rhead)
    good = m.commit_merge(store, result, lhead, rhead, "bu-scc")
    assert check_events_append_only(store, good) is None
    # The local tree under the same parents extends the local log only: refused.
    bad = store.commit_tree(
        store.tree_of(lhead),
        [lhead, rhead],
        "merge bu-scc",
        message=f"Merge-remote-parent: {rhead}",
    )
    assert "append-only" in check_events_append_only(store, bad)
    # Without a trailer the remote side is the last parent.
    plain = store.commit_tree(result.tree, [lhead, rhead], "merge by hand")
    assert check_events_append_only(store, plain) is None


def _write(ds: Dataset, rel: str, text: str) -> None:
    path = ds.path / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _rewrite_first_event(d: Dataset) -> None:
    log = d.path / ".events.log"
    lines = log.read_text().splitlines(keepends=True)
    lines[0] = lines[0].replace('"init"', '"init-edited"')
    log.write_text("".join(lines))


def _drop_first_row(d: Dataset) -> None:
    from usr import records

    table = records.read_records(d.records_path).slice(1)
    records.write_records(d.records_path, table.to_batches(), records.CORE_SCHEMA)


CONFLICTS = {
    "both-modified": (
        lambda d: _write(d, "meta.md", "local notes\n"),
        lambda d: _write(d, "meta.md", "remote notes\n"),
        "meta.md",
    ),
    "delete-modify": (
        lambda d: (d.path / "meta.md").unlink(),
        lambda d: _write(d, "meta.md", "remote notes\n"),
        "meta.md",
    ),
    "both-added": (
        lambda d: _write(d, "_artifacts/report.txt", "mine\n"),
        lambda d: _write(d, "_artifacts/report.txt", "theirs\n"),
        "_artifacts/report.txt",
    ),
    "events-rewritten": (
        _rewrite_first_event,
        lambda d: d.append_event("batch", {}),
        ".events.log",
    ),
    "records-rewritten": (
        _drop_first_row,
        lambda d: d.append_records([{"sequence": "GATTACAGAT"}], bio_type="dna"),
        "records.parquet",
    ),
    "path-clash": (
        lambda d: _write(d, "_artifacts/x", "a file\n"),
        lambda d: _write(d, "_artifacts/x/y", "a file in a directory\n"),
        "_artifacts/x",
    ),
    "overlay-unreadable": (
        lambda d: _write(d, "_derived/junk/part-l.parquet", "not parquet"),
        lambda d: _write(d, "_derived/junk/part-r.parquet", "not parquet either"),
        "_derived/junk/part-l.parquet",
    ),
    "registry-contract": (
        lambda d: _write(d, sidecars.FROZEN_REGISTRY, _registry_toml(score="float64")),
        lambda d: _write(d, sidecars.FROZEN_REGISTRY, _registry_toml(score="int64")),
        sidecars.FROZEN_REGISTRY,
    ),
}


def _registry_toml(**namespaces: str) -> str:
    """A frozen registry copy holding ``name=type`` namespaces of one column ``name__v``."""
    found = {n: reg.Namespace(n, ((f"{n}__v", t),)) for n, t in sorted(namespaces.items())}
    return reg.Registry(Path("."), found, b"").to_toml().decode()


@pytest.mark.parametrize("kind", sorted(CONFLICTS))
def test_each_conflict_kind_is_reported_with_why(ds, kind):
    local, remote, path = CONFLICTS[kind]
    store, base, lhead, rhead = branches(ds, local, remote)
    result = run_merge(store, base, lhead, rhead)
    assert not result.mergeable and result.tree is None
    found = {(c.path, c.kind) for c in result.conflicts}
    assert (path, kind) in found, result.conflicts
    assert all(c.why for c in result.conflicts)
    doc = result.as_dict()
    assert doc["mergeable"] is False
    assert json.loads(json.dumps(doc))["conflicts"][0]["why"]


def test_overlay_parts_giving_different_values_conflict(ds):
    ids = _ids(ds)
    store, base, lhead, rhead = branches(
        ds,
        lambda d: _attach(d, ids[:2], [0.5, 1.5]),
        lambda d: _attach(d, ids[1:], [9.0, 2.5]),
    )
    result = run_merge(store, base, lhead, rhead)
    kinds = {c.kind for c in result.conflicts}
    assert kinds == {"overlay-values"}
    paths = [c.path for c in result.conflicts]
    assert len(paths) == 2 and all(p.startswith("_derived/infer/") for p in paths)
    assert "infer__ll" in result.conflicts[0].why and ids[1][:12] in result.conflicts[0].why


def test_overlay_parts_that_agree_are_both_kept(ds):
    ids = _ids(ds)
    store, base, lhead, rhead = branches(
        ds,
        lambda d: _attach(d, ids[:2], [0.5, 1.5]),
        lambda d: _attach(d, ids[1:], [1.5, 2.5]),
    )
    result = run_merge(store, base, lhead, rhead)
    assert result.mergeable, result.conflicts
    parts = [p for p, _, _ in store.ls_tree(result.tree) if p.startswith("_derived/")]
    assert len(parts) == 2
    # Both attaches vouched in the sidecar ledger: merged as an append-only log.
    ledger = _blob(store, result.tree, "_registry/sidecar-ledger.jsonl").splitlines()
    theirs = _blob(store, rhead, "_registry/sidecar-ledger.jsonl").splitlines()
    mine = _blob(store, lhead, "_registry/sidecar-ledger.jsonl").splitlines()
    assert ledger[: len(theirs)] == theirs and len(ledger) == len(set(ledger))
    assert set(ledger) == set(mine) | set(theirs)


def test_merge_events_rules():
    base = b'{"a":1}\n'
    merged, added = m.merge_events(base, base + b'{"l":1}\n{"x":1}\n', base + b'{"x":1}\n')
    assert merged == base + b'{"x":1}\n{"l":1}\n' and added == 1
    torn, added = m.merge_events(b"", b'{"l":1}', b'{"r":1}\n')
    assert torn == b'{"r":1}\n{"l":1}\n' and added == 1
    with pytest.raises(m.ContentRefused, match="mid-line"):
        m.merge_events(b"", b'{"l":1}\n', b'{"r":1}')


def test_graph_draws_a_merge_with_both_parents():
    rows = graph_rows(
        [("M", ("L", "R")), ("L", ("B",)), ("R", ("B",)), ("B", ())],
    )
    assert rows == [
        ("*", "M"),
        ("| \\", None),
        ("* |", "L"),
        ("| *", "R"),
        ("| /", None),
        ("*", "B"),
    ]


def _attach_score(ds: Dataset, ids: list[str], values: list[int]) -> None:
    ds.attach(pa.table({"id": ids, "v": values}), namespace="score", columns=["v"])


def _namespaces(store: Store, tree: str) -> list[str]:
    data = _blob(store, tree, sidecars.FROZEN_REGISTRY)
    return sorted(sidecars._parse_registry_bytes(data))


def test_registry_copies_merge_as_the_union_of_namespaces_and_stay_vouched(ds):
    """Each side attached a part of its own namespace: each froze its contract into
    _registry/registry.toml and vouched for it. The merge keeps both namespaces, vouches for
    the union in the merged ledger, and the merged state passes every sidecar check."""
    ids = _ids(ds)
    store, base, lhead, rhead = branches(
        ds,
        lambda d: _attach(d, ids, [0.1, 0.2, 0.3]),
        lambda d: _attach_score(d, ids[1:], [7, 8]),
    )
    result = run_merge(store, base, lhead, rhead)
    assert result.mergeable, result.conflicts
    rules = {r.path: r for r in result.resolutions}
    assert rules[sidecars.FROZEN_REGISTRY].resolution == m.REGISTRY_UNION
    assert rules[ledger.LEDGER_PATH].resolution == m.EVENTS_APPEND
    assert "merged registry copy" in rules[ledger.LEDGER_PATH].detail
    assert _namespaces(store, result.tree) == ["infer", "score"]
    assert _namespaces(store, lhead) == ["infer"] and _namespaces(store, rhead) == ["score"]

    merged_ledger = _blob(store, result.tree, ledger.LEDGER_PATH)
    theirs = _blob(store, rhead, ledger.LEDGER_PATH)
    assert merged_ledger.startswith(theirs)  # still the remote's ledger plus whole lines
    last = json.loads(merged_ledger.splitlines()[-1])
    assert (last["path"], last["via"], last["actor"]) == (
        sidecars.FROZEN_REGISTRY,
        "merge",
        m.MERGE_ACTOR,
    )
    inputs = [e for e in ledger.parse(merged_ledger).entries if e.via == "attach"]
    assert last["recorded_at"] == max(e.recorded_at for e in inputs)  # not the clock

    assert run_merge(store, base, lhead, rhead).tree == result.tree  # deterministic
    commit = m.commit_merge(store, result, lhead, rhead, "bu-scc")
    store.checkout(commit, expect_head=rhead)
    report = sidecars.check_state(sidecars.open_state(ds.path, "HEAD"), DS, ds.root)
    assert report.problems == [] and len(report.checked) == 4  # 2 parts, registry, ledger
    view = Dataset.open(ds.root, DS).to_table()
    assert view.column("score__v").to_pylist() == [None, 7, 8]
    assert view.column("infer__ll").to_pylist() == [0.1, 0.2, 0.3]


def test_registry_union_of_unvouched_copies_stays_unvouched(ds):
    """A merge never launders a file: hand-written copies vouched by nobody give a merged
    copy vouched by nobody (the pre-push check then refuses it until someone vouches)."""
    store, base, lhead, rhead = branches(
        ds,
        lambda d: _write(d, sidecars.FROZEN_REGISTRY, _registry_toml(alpha="int64")),
        lambda d: _write(d, sidecars.FROZEN_REGISTRY, _registry_toml(beta="string")),
    )
    result = run_merge(store, base, lhead, rhead)
    assert result.mergeable, result.conflicts
    rules = {r.path: r for r in result.resolutions}
    assert "left unvouched: an input copy was not vouched for" in (
        rules[sidecars.FROZEN_REGISTRY].detail
    )
    assert ledger.LEDGER_PATH not in {p for p, _, _ in store.ls_tree(result.tree)}
    assert _namespaces(store, result.tree) == ["alpha", "beta"]


def test_merge_registry_rules_per_namespace(tmp_path):
    def ns(**kw: str) -> bytes:
        return _registry_toml(**kw).encode()

    def merged(base, local, remote) -> list[tuple[str, str]]:
        scratch = tmp_path / str(len(list(tmp_path.iterdir())))
        scratch.mkdir()
        data, _ = m.merge_registry(base, local, remote, scratch)
        got = sidecars._parse_registry_bytes(data)
        return sorted((n, got[n].columns[0][1]) for n in got)

    base = ns(a="int64", b="int64")
    # A namespace removed on one side and untouched on the other stays removed.
    assert merged(base, ns(a="int64"), ns(a="int64", b="int64", c="string")) == [
        ("a", "int64"),
        ("c", "string"),
    ]
    assert merged(None, ns(a="int64"), ns(a="int64")) == [("a", "int64")]
    refused = m.ContentRefused
    with pytest.raises(refused, match="namespace 'b': local removed vs remote b__v:string"):
        merged(base, ns(a="int64"), ns(a="int64", b="string"))
    with pytest.raises(m.ContentRefused) as exc:
        merged(None, ns(a="int64"), ns(a="float64"))
    assert exc.value.kind == "registry-contract"
    with pytest.raises(m.ContentRefused, match="not a readable registry"):
        merged(None, b"[[[", ns(a="int64"))


def test_ledger_rewritten_on_one_side_conflicts(ds):
    ledger.record(ds.path, ["meta.md"], via="api")  # any vouch: the base has a ledger
    ds.record_state("vouch")
    path = ds.path / ledger.LEDGER_PATH

    def rewrite(d: Dataset) -> None:
        path.write_text(path.read_text().replace('"via":"api"', '"via":"vouch"'))

    def append(d: Dataset) -> None:
        ledger.record(d.path, [".events.log"], via="api")

    store, base, lhead, rhead = branches(ds, rewrite, append)
    result = run_merge(store, base, lhead, rhead)
    assert [(c.path, c.kind) for c in result.conflicts] == [
        (ledger.LEDGER_PATH, "ledger-rewritten")
    ]
    assert "local side changed or removed lines" in result.conflicts[0].why
