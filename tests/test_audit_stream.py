"""The audit's per-file lists are spooled rows, streamed into the document (issue "Scale: a
million files per dataset in bounded memory"): the document's bytes are those of
``json.dumps`` over the same lists held whole, every reader of the lists (the text summary,
a pull's post-checkout walk, equality, slicing) sees the same items, and writing N entries
keeps a few of them alive at a time. Pure: hand-made FileChange lists, as Store.diff gives.
"""

from __future__ import annotations

import io
import json
import tracemalloc
import weakref
from typing import Any

import pytest

from usr.layout import section_of
from usr.store import FileChange
from usr.sync import audit, auditrows
from usr.sync.audit import AuditRun, Comparison, Side, VerifyProfile, render_text
from usr.sync.auditfile import dump_audit
from usr.sync.auditrows import SpooledList, spooled
from usr.sync.pull import pulled_entries

_DIRS = ("_derived/ns/", "_artifacts/", "_snapshots/s/", "_registry/")


def _changes(n: int) -> list[FileChange]:
    """``n`` changes over three file sections, every status, some odd paths; unsorted."""
    out = []
    for i in range(n):
        path = f"{_DIRS[i % 4]}d{i % 7}/f\u00e9-{(i * 7919) % n:06d}.bin"
        status = "AMD"[i % 3]
        old = None if status == "A" else f"{i:040x}"
        new = None if status == "D" else f"{i + 1:040x}"
        sizes = (None if old is None else i, None if new is None else 2 * i)
        out.append(FileChange(path, status, section_of(path), old, new, *sizes))
    return out + [FileChange("records.parquet", "M", "primary", "a" * 40, "b" * 40, 5, 6)]


def _comparison(changes: list[FileChange], base: bool) -> Comparison:
    local = {c.path for c in changes[::2]}
    return Comparison(
        dataset="densegen/big",
        remote="bu-scc",
        local=Side(exists=True, head="L" * 40, counts={"derived": 3, "auxiliary": 4}),
        remote_side=Side(exists=True, head="R" * 40, counts={"snapshots": 2}),
        relation="diverged" if base else "local-ahead",
        merge_base="B" * 40 if base else None,
        changes=changes,
        local_changed=local if base else None,
        remote_changed={c.path for c in changes[::3]} if base else None,
    )


def _plain(value: Any) -> Any:
    """``value`` with every spooled list made a list: the document as it used to be held."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, SpooledList):
        return list(value)
    return value


@pytest.mark.parametrize("action", ["pull", "push", "diff"])
@pytest.mark.parametrize("base", [True, False])
def test_spooled_document_is_byte_identical_and_reads_the_same(
    action: str, base: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auditrows, "SPILL_BYTES", 4096)  # spill to the temp file early
    run = AuditRun(action, "densegen/big", "bu-scc", VerifyProfile())
    data = run.set_comparison(_comparison(_changes(2_000), base))
    assert isinstance(data["files"], SpooledList) and data["files"].spool.spilled()
    doc = run.finish("DRY-RUN")
    out = io.StringIO()
    dump_audit(doc, out)
    plain = _plain(doc)
    assert out.getvalue() == json.dumps(plain, indent=2, sort_keys=True, default=str) + "\n"
    # Every consumer gets the same numbers and items from the spool as from lists.
    assert render_text(doc, None) == render_text(plain, None)
    assert render_text(doc) == render_text(plain)
    assert list(pulled_entries(doc["data"])) == list(pulled_entries(plain["data"]))
    files = doc["data"]["files"]
    assert len(files) == 2_001 and files == plain["data"]["files"]
    assert files[0] == plain["data"]["files"][0] and files[-1] == plain["data"]["files"][-1]
    assert files[5:9] == plain["data"]["files"][5:9]
    paths = [f["path"] for f in files]
    assert paths == sorted(paths)
    for key in ("_derived", "_auxiliary", "_snapshots"):
        for side in ("local_only", "remote_only"):
            assert len(doc["data"][key][side]) == len(plain["data"][key][side]) > 0
    assert json.loads(json.dumps(doc, default=list)) == json.loads(out.getvalue())


def test_short_spooled_lists_encode_as_short_lists() -> None:
    for n in (0, 1, 7, 8, 9):
        doc = {"data": {"a": spooled(f"p{i}" for i in range(n)), "b": spooled([{"x": 1}] * n)}}
        out = io.StringIO()
        dump_audit(doc, out)
        assert out.getvalue() == json.dumps(_plain(doc), indent=2, sort_keys=True) + "\n"
        assert doc["data"]["a"] == [f"p{i}" for i in range(n)]


def test_writing_many_entries_keeps_few_alive(monkeypatch: pytest.MonkeyPatch) -> None:
    """20,000 entries: the writer makes each entry from its row as it writes it, so no
    more than a few exist at any moment (a list held all of them to the end)."""

    class Entry(dict):  # a dict subclass: weakly referenceable, a dict to the encoder
        pass

    made: list[weakref.ref[Entry]] = []
    plain_entry = audit._file_entry

    def tracked(*args: Any) -> Entry:
        entry = Entry(plain_entry(*args))
        made.append(weakref.ref(entry))
        return entry

    most = 0

    class Sink(io.StringIO):
        def write(self, s: str) -> int:
            nonlocal most
            most = max(most, sum(1 for r in made[-50:] if r() is not None))
            return super().write(s)

    run = AuditRun("push", "densegen/big", "bu-scc", VerifyProfile())
    run.set_comparison(_comparison(_changes(20_000), base=False))
    monkeypatch.setattr(audit, "_file_entry", tracked)
    out = Sink()
    dump_audit(run.finish("TRANSFERRED"), out)
    assert len(made) >= 20_001
    assert sum(1 for r in made if r() is not None) == 0
    assert most <= 2, most
    assert out.getvalue().count('"old_id"') == 20_001


def test_the_audit_of_many_files_is_built_in_bounded_memory() -> None:
    """30,000 changes: building the audit and writing it adds a bounded amount (the rows
    in memory before they spill, buffers, the sorted order), not ~200 bytes a file."""
    changes = _changes(30_000)
    cmp = _comparison(changes, base=False)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        run = AuditRun("push", "densegen/big", "bu-scc", VerifyProfile())
        run.set_comparison(cmp)
        dump_audit(run.finish("TRANSFERRED"), _Discard())
        held = tracemalloc.get_traced_memory()[0] - before
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    # Kept to the end: the rows of the files list and of each section's list not spilled.
    assert held < 7 * auditrows.SPILL_BYTES, held
    # The sort's order (8 bytes a change) and one spool in memory are the only per-change
    # costs met on the way; entries held whole took more than 20 MB.
    assert peak < 8 * len(changes) + 10 * auditrows.SPILL_BYTES, peak


class _Discard(io.TextIOBase):
    def write(self, s: str) -> int:
        return len(s)


def test_spooled_items_come_back_as_json_gives_them_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each item reads back as its JSON round trip (a tuple as a list, a str subclass as a
    str, a dict's int keys as str), in memory and from the spilled file, with frames cut
    by the file's read blocks."""
    import enum

    class Kind(enum.StrEnum):
        ADD = "A"

    monkeypatch.setattr(auditrows, "SPILL_BYTES", 1000)
    monkeypatch.setattr(auditrows, "_READ", 97)  # frames straddle the blocks read back
    items = [
        ("a/ü.txt", "A", "aux", None, "ab" * 20, None, 1 << 40, True, False),
        "just a path\udcff",
        (Kind.ADD, ("nested",)),
        {1: "one", "two": [2.5, None]},
        [],
        "",
    ] * 40
    listed = spooled(items)
    assert listed.spool.spilled()
    expected = [json.loads(json.dumps(item)) for item in items]
    assert list(listed) == expected and list(listed) == expected  # read twice, the same
    assert listed[3] == {"1": "one", "two": [2.5, None]} and listed[0][0] == "a/ü.txt"
