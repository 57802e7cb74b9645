"""The audit document of one sync command, written as it is encoded, on success and on
failure alike.

Owns :func:`run_audited` (runs a command's body under an :class:`AuditRun` and writes the
document to ``--audit-json-out`` whatever the outcome), :func:`dump_audit` (the indented
JSON layout without building the whole string, its spooled per-file lists item by item),
:func:`write_audit` and :func:`observed_transfer`. May import :mod:`usr.atomic`,
:mod:`usr.errors`, :mod:`usr.sync.audit`, :mod:`usr.sync.auditrows`, :mod:`usr.sync.options`,
:mod:`usr.sync.target`.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from usr import atomic
from usr.errors import UsrError
from usr.sync.audit import AuditRun, VerifyProfile
from usr.sync.auditrows import SpooledList
from usr.sync.options import SyncOptions
from usr.sync.target import Target

_LIST_MARK = "\x00usr-audit-list-%d\x00"
_SCALARS = (str, int, float, bool, type(None))


def dump_audit(doc: dict[str, Any], out: TextIO) -> None:
    """Write the audit document to ``out`` as it is encoded: the bytes of
    ``json.dumps(doc, indent=2, sort_keys=True, default=str)`` and a newline, without
    building that string.

    ``json.dumps`` with an indent joins millions of small strings first (100,000 files:
    +230 MiB of peak memory) and encodes in Python. Long lists of scalars or of flat dicts
    (``data.files``, the sections' path lists) are encoded by the C encoder with the
    indented layout's separators instead, the rest as before (100,000 entries and a
    100,000-path section: 0.90 -> 0.42 s of CPU).
    ``--audit-json-out`` and ``--format json`` use it."""
    enc = json.JSONEncoder(indent=2, sort_keys=True, default=str)
    lists: list[list[Any]] = []
    shell = _swap_lists(doc, lists)
    marks = {enc.encode(_LIST_MARK % i): lst for i, lst in enumerate(lists)}
    line = ""  # the output's current line: a swapped list takes its key's indent
    for chunk in enc.iterencode(shell):
        mark = next((m for m in marks if m in chunk), None) if "usr-audit-list-" in chunk else None
        if mark is None:
            out.write(chunk)
            line = line + chunk if "\n" not in chunk else chunk.rsplit("\n", 1)[1]
            continue
        before, _, after = chunk.partition(mark)
        out.write(before)
        line = line + before if "\n" not in before else before.rsplit("\n", 1)[1]
        _dump_list(marks[mark], len(line) - len(line.lstrip(" ")), out)
        out.write(after)
        line = ("]" + after).rsplit("\n", 1)[-1]
    out.write("\n")


def _swap_lists(value: Any, lists: list[list[Any]]) -> Any:
    """A copy of the dicts of ``value`` with each long flat list (see :func:`_flat_list`)
    replaced by a marker string; the lists are collected in ``lists``."""
    if not isinstance(value, dict):
        return value
    out = {}
    for key, item in value.items():
        if isinstance(item, SpooledList):  # a spooled per-file list: streamed when long
            if len(item) < 8:  # as a short list is: encoded with the rest
                out[key] = list(item)
                continue
            out[key] = _LIST_MARK % len(lists)
            lists.append(item)
        elif isinstance(item, list) and _flat_list(item):
            out[key] = _LIST_MARK % len(lists)
            lists.append(item)
        else:
            out[key] = _swap_lists(item, lists)
    return out


def _flat_list(items: list[Any]) -> bool:
    """Worth the C encoder: more than a few items, all scalars or all flat dicts of them."""
    if len(items) < 8:
        return False
    if all(type(v) in _SCALARS for v in items):
        return True
    return all(
        isinstance(e, dict)
        and all(isinstance(k, str) and type(v) in _SCALARS for k, v in e.items())
        for e in items
    )


def _dump_list(items: list[Any] | SpooledList, key_indent: int, out: TextIO) -> None:
    """The indented layout of a flat list under a key indented ``key_indent``; a
    :class:`SpooledList` item by item, so only one of its items is alive at a time."""
    item_pad = " " * (key_indent + 2)
    first = items[0]
    if type(first) in _SCALARS and isinstance(items, SpooledList):
        scalar = json.JSONEncoder().encode
        out.write("[")
        sep = "\n"
        for item in items:
            out.write(f"{sep}{item_pad}{scalar(item)}")
            sep = ",\n"
        out.write("\n" + " " * key_indent + "]")
        return
    if type(first) in _SCALARS:
        body = json.JSONEncoder(separators=(",\n" + item_pad, ": ")).encode(items)[1:-1]
        out.write(f"[\n{item_pad}{body}\n{' ' * key_indent}]")
        return
    field_pad = item_pad + "  "
    one = json.JSONEncoder(sort_keys=True, separators=(",\n" + field_pad, ": ")).encode
    out.write("[")
    sep = "\n"
    for entry in items:
        body = one(entry)[1:-1]
        block = f"{{\n{field_pad}{body}\n{item_pad}}}" if body else "{}"
        out.write(f"{sep}{item_pad}{block}")
        sep = ",\n"
    out.write("\n" + " " * key_indent + "]")


def write_audit(path: Path | None, doc: dict[str, Any]) -> None:
    if path is None:
        return
    with atomic.atomic_writer(path) as fh:
        text = io.TextIOWrapper(fh, encoding="utf-8", newline="\n")
        try:
            dump_audit(doc, text)
        finally:
            text.detach()  # flushes; the atomic writer fsyncs and closes the file itself


def run_audited(
    action: str,
    target: Target,
    remote: str,
    options: SyncOptions,
    audit_json_out: Path | None,
    body: Callable[[AuditRun], str],
    profile: VerifyProfile | None = None,
) -> dict[str, Any]:
    """Run ``body`` (which returns the transfer state) and write its audit document; a
    failure's document is written too, naming the error, before the error propagates.
    ``profile``: the verification really applied, when it is not the options' (file mode)."""
    run = AuditRun(action, target.dataset, remote, profile or options.profile())
    run.options = options.to_json()
    try:
        state = body(run)
    except BaseException as exc:
        if isinstance(exc, UsrError | OSError | ValueError):
            write_audit(audit_json_out, run.finish("FAILED", error=exc))
        elif isinstance(exc, KeyboardInterrupt):
            write_audit(
                audit_json_out, run.finish("FAILED", error=UsrError("interrupted by the user"))
            )
        raise
    doc = run.finish(state)
    write_audit(audit_json_out, doc)
    return doc


def observed_transfer(data: dict[str, Any], stats: Any) -> None:
    """Replace the audit's transfer estimate with what the transport really moved."""
    data["transfer"] = dict(
        data.get("transfer") or {},
        objects=int(getattr(stats, "objects", 0)),
        chunks=int(getattr(stats, "chunks", 0)),
        payload_bytes=int(getattr(stats, "payload_bytes", 0)),
        basis="observed",
    )
