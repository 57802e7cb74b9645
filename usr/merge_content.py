"""The content rules of a three-way merge: how two sides' appends to one file combine.

Owns :func:`merge_events` (append-only JSON-lines logs: the event log and the sidecar
ledger), :func:`merge_records` (a records table both sides only appended to) and
:func:`merge_registry` (the frozen registry copy, namespace by namespace), each a pure
function of the base and both sides, raising :class:`ContentRefused` where the rule does
not hold (the caller turns that into a conflict). May import :mod:`usr.registry`,
:mod:`usr.errors`, :mod:`usr.layout` and pyarrow; nothing of the store or the sync.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from usr.errors import InputError
from usr.layout import REGISTRY_FILE
from usr.registry import Namespace, Registry


class ContentRefused(Exception):
    """A content merge that must become a conflict (kind, why)."""

    def __init__(self, kind: str, why: str) -> None:
        super().__init__(why)
        self.kind = kind
        self.why = why


def _line_prefix(base: bytes, side: bytes) -> bool:
    """``base`` is a whole-line prefix of ``side`` (ends at a line boundary)."""
    return side.startswith(base) and (not base or base.endswith(b"\n"))


def merge_events(base: bytes, local: bytes, remote: bytes) -> tuple[bytes, int]:
    """The remote log, then the local-only appended lines (those the remote's appended
    lines do not already hold), in order. Returns (merged bytes, local lines added).

    Raises :class:`ContentRefused` when a side did not only append, or the remote log ends
    mid-line (appending to it would glue two events into one line).
    """
    for side, data in (("local", local), ("remote", remote)):
        if not _line_prefix(base, data):
            raise ContentRefused(
                "events-rewritten",
                f"the {side} side changed or removed lines of the base log (not append-only)",
            )
    if remote and not remote.endswith(b"\n"):
        raise ContentRefused("events-rewritten", "the remote log ends mid-line")
    already = Counter(remote[len(base) :].splitlines(keepends=False))
    added: list[bytes] = []
    for line in local[len(base) :].splitlines(keepends=False):
        if already[line]:
            already[line] -= 1
            continue
        added.append(line + b"\n")
    return remote + b"".join(added), len(added)


def without_meta(schema: pa.Schema) -> pa.Schema:
    return schema.remove_metadata()


def merge_records(base: pa.Table, local: pa.Table, remote: pa.Table) -> tuple[pa.Table, int]:
    """The remote's rows, then the local-only appended rows whose id the remote lacks.

    Refuses (:class:`ContentRefused`) unless both sides kept every base row as it was, in place,
    with the same columns: only then is "both appended" true and the union unambiguous.
    """
    schema = without_meta(base.schema)
    for side, table in (("local", local), ("remote", remote)):
        if not without_meta(table.schema).equals(schema):
            raise ContentRefused(
                "records-rewritten", f"the {side} side changed the table's columns"
            )
        if table.num_rows < base.num_rows or not table.slice(0, base.num_rows).equals(base):
            raise ContentRefused(
                "records-rewritten",
                f"the {side} side changed or removed rows of the base (not only appended)",
            )
    local_new = local.slice(base.num_rows)
    remote_ids = pc.is_in(local_new.column("id"), value_set=remote.column("id").combine_chunks())
    local_only = local_new.filter(pc.invert(remote_ids))
    merged = pa.concat_tables([remote.cast(schema), local_only.cast(schema)])
    return merged, local_only.num_rows


def _registry_namespaces(data: bytes | None, scratch: Path, side: str) -> dict[str, Namespace]:
    """The namespaces of one side's registry copy, parsed by the registry's own reader."""
    if data is None:
        return {}
    where = scratch / f"registry-{side}"
    where.mkdir(exist_ok=True)
    (where / REGISTRY_FILE).write_bytes(data)
    try:
        return Registry.load(where).namespaces
    except (InputError, AttributeError, TypeError) as exc:  # a table where TOML had a value
        why = str(exc).replace(str(where / REGISTRY_FILE), f"the {side} copy")
        raise ContentRefused(
            "unreadable", f"the {side} copy is not a readable registry ({why})"
        ) from None


def _columns(ns: Namespace) -> str:
    return ",".join(f"{n}:{t}" for n, t in ns.columns) or "(no columns)"


def merge_registry(
    base: bytes | None, local: bytes, remote: bytes, scratch: Path
) -> tuple[bytes, str]:
    """The union of two registry copies' namespaces, each namespace merged against the base.

    Per namespace: changed (added, altered, removed) on one side only -> that side; the same
    contract (columns) on both -> the remote's entry (the cluster's copy is the shared one);
    different contracts, or removed on one side and changed on the other -> :class:`ContentRefused`
    (``registry-contract``): parts stamped under one contract would be checked against the
    other. Returns (bytes from the registry's writer, so equal inputs give equal bytes;
    a detail for the report).
    """
    b = _registry_namespaces(base, scratch, "base")
    lo = _registry_namespaces(local, scratch, "local")
    r = _registry_namespaces(remote, scratch, "remote")
    merged: dict[str, Namespace] = {}
    clashes: list[str] = []
    for name in sorted(set(b) | set(lo) | set(r)):
        bn, ln, rn = b.get(name), lo.get(name), r.get(name)
        if ln in (rn, bn):
            pick = rn
        elif rn == bn:
            pick = ln
        elif ln is not None and rn is not None and ln.columns == rn.columns:
            pick = rn
        else:
            mine = _columns(ln) if ln else "removed"
            theirs = _columns(rn) if rn else "removed"
            clashes.append(f"namespace {name!r}: local {mine} vs remote {theirs}")
            continue
        if pick is not None:
            merged[name] = pick
    if clashes:
        raise ContentRefused(
            "registry-contract",
            f"a namespace has a different contract on each side: {'; '.join(clashes)}",
        )
    data = Registry(scratch, merged, b"").to_toml()
    return data, f"{len(merged)} namespace(s): {', '.join(sorted(merged))}"
