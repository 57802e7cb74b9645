"""``usr validate``: the contract checks of one dataset's working files.

Records (core schema, the id rule, alphabets, lengths, repeated ids), overlay parts
(registered namespace and columns, contract stamps, repeated or orphan keys), the event
log and meta.md. :meth:`usr.dataset.Dataset.validate` calls :func:`validate_dataset`
(re-exported by :mod:`usr.dataset`); this module reads the dataset it is given and never
imports :mod:`usr.dataset`.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from usr import events as ev
from usr import overlays, records, sidecars
from usr.errors import InputError, UsrError
from usr.layout import EVENTS_FILE, META_FILE, RECORDS_FILE
from usr.registry import Registry, type_name


def validate_dataset(ds: Any, strict: bool = False) -> dict[str, Any]:
    """Report ``errors`` and ``warnings`` for a dataset (a :class:`usr.dataset.Dataset`:
    its ``id``, ``root``, ``path`` and ``records_path`` are read); ``ok`` is True without
    errors.

    Errors break a contract (schema, id rule, alphabet, orphan or repeated overlay keys,
    damaged files). Warnings are drift an operator should know about (unregistered
    namespace, a part stamped under an older contract, missing meta.md); ``strict`` turns
    every warning into an error.
    """
    errors: list[str] = []
    warnings: list[str] = []
    ids = _check_records(ds, errors)
    _check_overlays(ds, ids, errors, warnings)
    try:
        evs = ev.read_events(ds.path)
        required = ("event_version", "timestamp_utc", "action", "dataset", "args", "actor")
        for i, event in enumerate(evs, 1):
            lacking = [k for k in required if k not in event]
            if lacking:
                warnings.append(f"{EVENTS_FILE}: event {i} lacks {', '.join(lacking)}")
    except UsrError as exc:
        errors.append(exc.message)
    if not (ds.path / META_FILE).is_file():
        warnings.append(f"{META_FILE} is missing")
    if strict:
        errors, warnings = errors + warnings, []
    return {
        "dataset": ds.id,
        "strict": strict,
        "ok": not errors,
        "errors": errors,
        "warnings": warnings,
    }


def _check_records(ds: Any, errors: list[str]) -> pa.Array | None:
    try:
        table = records.read_records(ds.records_path)
    except UsrError as exc:
        errors.append(exc.message)
        return None
    schema = table.schema.remove_metadata()
    for want in records.CORE_SCHEMA:
        if want.name not in schema.names:
            errors.append(f"{RECORDS_FILE}: core column {want.name!r} is missing")
        elif schema.field(want.name).type != want.type:
            errors.append(
                f"{RECORDS_FILE}: column {want.name!r} is {schema.field(want.name).type}, "
                f"not {want.type}"
            )
    if errors:
        return None
    extra = [n for n in schema.names if n not in records.CORE_COLUMNS]
    if extra:
        errors.append(f"{RECORDS_FILE}: non-core columns {', '.join(extra)}")
    ids = table.column("id").combine_chunks()
    if table.num_rows == 0:
        return ids
    try:
        rebuilt = records.build_records(
            table.select(["sequence", "bio_type", "alphabet", "source"]),
            created_at=records.now_utc(),
        )
    except InputError as exc:
        errors.append(f"{RECORDS_FILE}: {exc.message}")
        return ids
    wrong = pc.invert(pc.equal(rebuilt.column("id"), table.column("id")))
    if pc.any(wrong).as_py():
        i = int(pc.index(wrong, True).as_py())
        errors.append(f"{RECORDS_FILE}: row {i + 1}: id does not follow sha1(bio_type|sequence)")
    if not pc.all(pc.equal(rebuilt.column("length"), table.column("length"))).as_py():
        errors.append(f"{RECORDS_FILE}: some length values do not match their sequence")
    dups = records.duplicate_ids(table)
    if dups:
        errors.append(f"{RECORDS_FILE}: {len(dups)} id(s) repeat, e.g. {dups[0]!r}")
    return ids


def _check_overlays(ds: Any, ids: pa.Array | None, errors: list[str], warnings: list[str]) -> None:
    try:
        registry = Registry.load(ds.root)
    except UsrError as exc:
        errors.append(exc.message)
        return
    try:
        by_ns = overlays.list_parts(ds.path)
    except UsrError as exc:
        errors.append(exc.message)
        return
    try:
        # The contracts attach froze into the dataset: a pulled dataset's namespaces are
        # checkable on a root that never registered them.
        frozen = Registry.load(ds.path / sidecars.FROZEN_REGISTRY_DIR).namespaces
    except UsrError as exc:
        errors.append(exc.message)
        frozen = {}
    for ns_name, parts in by_ns.items():
        ns = registry.namespaces.get(ns_name) or frozen.get(ns_name)
        if ns is None:
            warnings.append(f"namespace {ns_name!r} has parts but is not registered")
        for part in parts:
            rel = part.path.relative_to(ds.path).as_posix()
            lacking = [k for k in overlays.STAMP_KEYS if k not in part.stamps]
            if lacking:
                warnings.append(f"{rel}: lacks stamps {', '.join(lacking)}")
            if ns is not None:
                if part.stamps.get("contract_hash") != ns.contract_hash():
                    warnings.append(f"{rel}: written under another contract of {ns_name!r}")
                types = ns.arrow_types()
                schema = pq.read_schema(part.path)
                for column in part.columns:
                    if column not in types:
                        errors.append(f"{rel}: column {column!r} is not registered")
                    elif schema.field(column).type != types[column]:
                        errors.append(f"{rel}: column {column!r} is not {type_name(types[column])}")
            try:
                keys = overlays.read_part(part, ["id"]).column("id").combine_chunks()
            except UsrError as exc:
                errors.append(exc.message)
                continue
            if len(pc.unique(keys)) != len(keys):
                errors.append(f"{rel}: keys repeat within the part")
            if ids is not None:
                orphans = len(keys) - pc.sum(pc.is_in(keys, value_set=ids).cast(pa.int8())).as_py()
                if orphans:
                    errors.append(f"{rel}: {orphans} key(s) are not in the dataset")
