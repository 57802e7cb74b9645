"""The checks behind ``usr plumbing verify-sidecars``: is every sidecar of a state verified?

A sidecar is a file in the ``derived`` section (overlay parts under ``_derived/``) or the
``auxiliary`` section (``_registry/``, ``_artifacts/``, ...). For one state — a recorded
commit, or the working files — every sidecar must pass:

``ledger``          its path and blake3 are in the state's digest ledger (:mod:`usr.ledger`)
``tree-hash``       the bytes behind its tree entry re-hash to that entry (commits only)
``working-hash``    the working file still has those bytes (when the state is HEAD)
``file-type``       it is a regular file (no symlink, device, ...)

and every overlay part (``_derived/<namespace>/*.parquet``):

``parquet``         a readable Parquet file
``namespace``       its namespace is registered (root ``registry.toml``, else the dataset's
                    frozen copy under ``_registry/``) and agrees with its stamp
``columns``         every column besides the join key is registered, with that type
``contract-hash``   its ``namespace_contract_hash`` stamp is the registry's
``join-key``        its join keys are unique and present in ``records.parquet``

plus the state-wide logs:

``events-json``         every ``.events.log`` line is a JSON object
``events-append-only``  ``.events.log`` extends a parent state's log by whole lines
``ledger-append-only``  the ledger extends a parent state's ledger by whole lines

Each failure is a :class:`Problem` (path, check, expected, found): plumbing prints one line
each and exits 0 only when there are none. The state to check is reached through a
:class:`StateView`, so the same checks run on working files and on a commit received from
a peer; nothing here writes to the dataset except :func:`vouch` (and
:func:`record_overlay_part`, attach's side).

The states and :class:`Problem` live in :mod:`usr.stateview` (re-exported here); this
module adds the checks and imports the ledger, the registry, the layout and pyarrow.
"""

from __future__ import annotations

import json
import tempfile
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from usr import ledger
from usr.atomic import write_bytes
from usr.layout import (
    DERIVED_DIR,
    EVENTS_FILE,
    NAMESPACE_RE,
    RECORDS_FILE,
    REGISTRY_FILE,
    section_of,
)
from usr.registry import Namespace, Registry
from usr.stateview import CommitState as CommitState  # re-exported
from usr.stateview import Problem, StateView, one_line
from usr.stateview import WorkingState as WorkingState  # re-exported
from usr.stateview import open_state as open_state  # re-exported

SIDECAR_SECTIONS = ("derived", "auxiliary")
#: The dataset's frozen copy of the namespaces its overlays use (same TOML as the root's
#: ``registry.toml``), written by :func:`record_overlay_part` at attach time.
FROZEN_REGISTRY_DIR = "_registry"
FROZEN_REGISTRY = f"{FROZEN_REGISTRY_DIR}/{REGISTRY_FILE}"


@dataclass
class Report:
    """Result of :func:`check_state`: what was checked and what failed."""

    dataset: str
    state: str
    checked: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    recorded: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, object]:
        return {
            "dataset": self.dataset,
            "state": self.state,
            "ok": self.ok,
            "checked": len(self.checked),
            "problems": [p.to_json() for p in self.problems],
            "recorded": self.recorded,
        }


def is_sidecar(path: str) -> bool:
    return section_of(path) in SIDECAR_SECTIONS


def is_overlay_part(path: str) -> bool:
    parts = path.split("/")
    return len(parts) >= 3 and parts[0] == DERIVED_DIR and path.endswith(".parquet")


# -- registry resolution ------------------------------------------------------------------


class RegistryView:
    """Namespaces as a state sees them: the root registry first, then the dataset's frozen
    copy (a state received from elsewhere may use a namespace this root never registered)."""

    def __init__(self, root: Registry | None, frozen: dict[str, Namespace]) -> None:
        self.root = root
        self.frozen = frozen

    def lookup(self, name: str) -> tuple[Namespace | None, str]:
        if self.root is not None and name in self.root.namespaces:
            return self.root.namespaces[name], f"{REGISTRY_FILE} of the root"
        if name in self.frozen:
            return self.frozen[name], "the dataset's frozen registry copy"
        return None, ""


def _parse_registry_bytes(data: bytes) -> dict[str, Namespace]:
    """Namespaces of a registry file read from a state (the same TOML as ``registry.toml``)."""
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError):
        return {}
    out: dict[str, Namespace] = {}
    for name, body in (doc.get("namespaces") or {}).items():
        try:
            cols = tuple((c["name"], c["type"]) for c in body.get("columns", []))
        except (KeyError, TypeError, AttributeError):
            continue
        out[name] = Namespace(name=name, columns=cols)
    return out


def registry_view(state: StateView, root: Path | None) -> RegistryView:
    root_reg = Registry.load(root) if root is not None else None
    data = state.read(FROZEN_REGISTRY)
    frozen = _parse_registry_bytes(data) if data is not None else {}
    return RegistryView(root_reg, frozen)


def record_overlay_part(dataset_dir: Path, part: Path, namespace: Namespace) -> list[str]:
    """The writer's side of verification, called by attach right after it wrote a part it
    validated (under the dataset lock): freeze ``namespace``'s contract into the dataset's
    registry copy, so a machine whose root registry lacks it can still check the part, and
    vouch for the part and the copy in the ledger. Returns the paths vouched for."""
    dataset_dir = Path(dataset_dir)
    frozen = Registry.load(dataset_dir / FROZEN_REGISTRY_DIR)
    # The contract only (no owner, description, created_at): two roots that registered the
    # same contract freeze identical bytes, so their copies never conflict in a merge.
    contract = Namespace(name=namespace.name, columns=tuple(namespace.columns))
    if frozen.namespaces.get(namespace.name) != contract:
        frozen.namespaces[namespace.name] = contract
        write_bytes(frozen.path, frozen.to_toml())
    relpaths = [Path(part).relative_to(dataset_dir).as_posix(), FROZEN_REGISTRY]
    ledger.record(dataset_dir, relpaths, via="attach")
    return relpaths


# -- overlay parts --------------------------------------------------------------------------

#: Parquet key/value metadata keys the overlay writer stamps (see usr.overlays.write_part).
STAMP_NAMESPACE = "usr:namespace"
STAMP_CONTRACT = ("usr:contract_hash", "usr:namespace_contract_hash")
#: Every part joins on the record ``id`` (attach maps ``--key sequence`` to ids).
JOIN_KEY = "id"


def _stamps(meta: dict[bytes, bytes] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in (meta or {}).items():
        try:
            out[k.decode()] = v.decode()
        except UnicodeDecodeError:
            continue
    return out


def _stamp(stamps: dict[str, str], *names: str) -> str | None:
    for name in names:
        if name in stamps:
            return stamps[name]
        bare = name.split(":", 1)[-1]
        for key in (bare, f"usr.{bare}", f"usr__{bare}"):
            if key in stamps:
                return stamps[key]
    return None


def _open_parquet(state: StateView, path: str) -> pq.ParquetFile:
    """A Parquet file of the state: the working file when it holds the entry's bytes, else
    the entry streamed into an anonymous temporary file, so memory stays bounded whatever
    the size of ``records.parquet`` or a part."""
    local = state.local_path(path)
    if local is not None:
        return pq.ParquetFile(local, page_checksum_verification=True)
    fh = tempfile.TemporaryFile(prefix=".usr-tmp-verify-")  # noqa: SIM115 - lives with the reader
    try:
        for piece in state.stream(path):
            fh.write(piece)
        fh.seek(0)
        return pq.ParquetFile(fh, page_checksum_verification=True)
    except BaseException:
        fh.close()
        raise


class RecordKeys:
    """The join keys of the state's ``records.parquet``, loaded once, only when needed."""

    def __init__(self, state: StateView) -> None:
        self.state = state
        self._cache: dict[str, pa.Array | None] = {}

    def column(self, key: str) -> pa.Array | None:
        if key not in self._cache:
            try:
                pf = _open_parquet(self.state, RECORDS_FILE)
                self._cache[key] = pf.read(columns=[key]).column(key).combine_chunks()
            except (OSError, pa.ArrowException, KeyError):
                self._cache[key] = None
        return self._cache[key]


def check_overlay_part(
    state: StateView, path: str, registry: RegistryView, records: RecordKeys
) -> list[Problem]:
    """Parquet, namespace, columns, contract-hash and join-key checks of one overlay part."""
    problems: list[Problem] = []
    dir_ns = path.split("/")[1]
    try:
        pf = _open_parquet(state, path)
        schema = pf.schema_arrow
    except (OSError, pa.ArrowException) as exc:
        return [Problem(path, "parquet", "readable Parquet", one_line(str(exc))[:200])]
    stamps = _stamps(schema.metadata)
    stamped_ns = _stamp(stamps, STAMP_NAMESPACE)
    if stamped_ns is not None and stamped_ns != dir_ns:
        problems.append(Problem(path, "namespace", f"stamp {dir_ns}", f"stamp {stamped_ns}"))
    if not NAMESPACE_RE.match(dir_ns):
        return [*problems, Problem(path, "namespace", "^[a-z][a-z0-9_]*$", dir_ns)]
    ns, _where = registry.lookup(dir_ns)
    if ns is None:
        problems.append(Problem(path, "namespace", f"{dir_ns} registered", "not registered"))
        return problems
    key = JOIN_KEY
    registered = ns.arrow_types()
    for name in schema.names:
        if name == key:
            continue
        if name not in registered:
            problems.append(Problem(path, "columns", f"a column of {dir_ns}", name))
            continue
        found = schema.field(name).type
        if not _same_type(found, registered[name]):
            problems.append(
                Problem(path, "columns", f"{name}: {registered[name]}", f"{name}: {found}")
            )
    stamped = _stamp(stamps, *STAMP_CONTRACT)
    expected = ns.contract_hash()
    if stamped != expected:
        problems.append(Problem(path, "contract-hash", expected, stamped or "no stamp"))
    problems.extend(_check_keys(path, pf, key, records))
    return problems


def _same_type(found: pa.DataType, registered: pa.DataType) -> bool:
    if found == registered:
        return True
    # Parquet round-trips large_string/large_list only when written that way; both spell the
    # same registry type.
    if pa.types.is_large_string(found) and pa.types.is_string(registered):
        return True
    if pa.types.is_large_list(found) and pa.types.is_list(registered):
        return _same_type(found.value_type, registered.value_type)
    if pa.types.is_list(found) and pa.types.is_list(registered):
        return _same_type(found.value_type, registered.value_type)
    return False


def _check_keys(path: str, pf: pq.ParquetFile, key: str, records: RecordKeys) -> list[Problem]:
    if key not in pf.schema_arrow.names:
        return [Problem(path, "join-key", f"a {key!r} column", "none")]
    try:
        # Read every page with its checksum: a damaged part fails here, not in a consumer.
        pf.read()
        keys = pf.read(columns=[key]).column(key).combine_chunks()
    except (OSError, pa.ArrowException) as exc:
        return [Problem(path, "parquet", "readable Parquet", one_line(str(exc))[:200])]
    problems: list[Problem] = []
    if keys.null_count:
        problems.append(Problem(path, "join-key", f"no null {key}", f"{keys.null_count} null"))
    counts = pc.value_counts(keys.drop_null())
    repeated = pc.filter(counts, pc.greater(counts.field("counts"), 1))
    dup = [str(v) for v in repeated.field("values").to_pylist()]
    if dup:
        problems.append(
            Problem(path, "join-key", f"unique {key}", f"{len(dup)} repeated, e.g. {dup[0]}")
        )
    base = records.column(key)
    if base is None:
        problems.append(Problem(path, "join-key", f"{RECORDS_FILE} with {key!r}", "unreadable"))
        return problems
    absent = pc.invert(pc.is_in(keys.drop_null(), value_set=base))
    missing = keys.drop_null().filter(absent)
    if len(missing):
        problems.append(
            Problem(
                path,
                "join-key",
                f"every {key} in {RECORDS_FILE}",
                f"{len(missing)} absent, e.g. {missing[0].as_py()}",
            )
        )
    return problems


# -- logs -----------------------------------------------------------------------------------


def check_events(state: StateView) -> list[Problem]:
    """``.events.log``: JSON-object lines that extend a parent state's log."""
    data = state.read(EVENTS_FILE)
    problems: list[Problem] = []
    if data is None:
        data = b""
    lines = data.split(b"\n")
    # The last piece is "" or a line still being written (no newline yet): not checked,
    # as usr.events does, since the next append completes or seals it.
    for i, raw in enumerate(lines[:-1], start=1):
        if not raw.strip():
            continue
        try:
            doc = json.loads(raw)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            problems.append(
                Problem(EVENTS_FILE, "events-json", f"line {i}: a JSON object", "not JSON")
            )
            break
    problems.extend(_check_append_only(state, EVENTS_FILE, "events-append-only"))
    return problems


def check_ledger_log(state: StateView) -> list[Problem]:
    return _check_append_only(state, ledger.LEDGER_PATH, "ledger-append-only")


def _check_append_only(state: StateView, path: str, check: str) -> list[Problem]:
    data = state.read(path) or b""
    parents = state.parents()
    if not parents:
        return []
    olds = [p.read(path) or b"" for p in parents]
    if any(ledger.is_line_prefix(old, data) for old in olds):
        return []
    old = olds[0]
    common = _common_lines(old, data)
    return [
        Problem(
            path,
            check,
            f"the {len(old.splitlines())} lines of {parents[0].label[:12]} then appended lines",
            f"line {common + 1} rewritten or removed",
        )
    ]


def _common_lines(old: bytes, new: bytes) -> int:
    n = 0
    for a, b in zip(old.splitlines(keepends=True), new.splitlines(keepends=True), strict=False):
        if a != b:
            break
        n += 1
    return n


# -- the whole state ------------------------------------------------------------------------


def check_state(state: StateView, dataset: str, root: Path | None) -> Report:
    """Run every check on ``state``; the report lists each problem found."""
    report = Report(dataset=dataset, state=state.label)
    paths = state.paths()
    book = ledger.parse(state.read(ledger.LEDGER_PATH) or b"")
    registry = registry_view(state, root)
    records = RecordKeys(state)
    for path in paths:
        if not is_sidecar(path):
            continue
        report.checked.append(path)
        file_problems = state.problems_of(path)
        report.problems.extend(file_problems)
        if any(p.check in ("file-type", "tree-hash") for p in file_problems):
            continue
        if not ledger.is_ledger_path(path):
            digest = state.digest(path)
            if not book.vouches(path, digest):
                known = book.digests_for(path)
                found = f"blake3 {digest[:16]}" + (
                    " (other bytes were recorded)" if known else " (never recorded)"
                )
                report.problems.append(Problem(path, "ledger", "a recorded digest", found))
        if is_overlay_part(path):
            report.problems.extend(check_overlay_part(state, path, registry, records))
    report.problems.extend(check_events(state))
    report.problems.extend(check_ledger_log(state))
    return report


def unvouched(state: StateView) -> Iterator[tuple[str, str, int]]:
    """``(path, blake3, size)`` of the state's sidecars the ledger does not vouch for."""
    book = ledger.parse(state.read(ledger.LEDGER_PATH) or b"")
    for path in state.paths():
        if not is_sidecar(path) or ledger.is_ledger_path(path):
            continue
        digest = state.digest(path)
        if not book.vouches(path, digest):
            data_size = _size_of(state, path)
            yield path, digest, data_size


def _size_of(state: StateView, path: str) -> int:
    local = state.local_path(path)
    if local is not None:
        return local.stat().st_size
    data = state.read(path)
    return len(data) if data is not None else 0


def vouch(state: StateView, dataset: str, dataset_dir: Path, root: Path | None) -> Report:
    """``--record``: run every check except ledger membership; when all of those pass,
    append the unvouched sidecars' digests to the working ledger as operator vouches.

    An operator vouches for bytes they have checked, so nothing is recorded when any other
    check fails (a bad overlay stays unverified however often ``--record`` runs).
    """
    report = check_state(state, dataset, root)
    others = [p for p in report.problems if p.check != "ledger"]
    if others:
        report.problems = others
        return report
    entries = ledger.record_digests(dataset_dir, list(unvouched(state)), via="vouch")
    report.recorded = [e.path for e in entries]
    report.problems = []
    return report


# -- naming the dataset checked ------------------------------------------------------------


def dataset_label(root: Path, dataset_dir: Path) -> str:
    """The id of ``dataset_dir`` under ``root`` (its directory name when outside it)."""
    try:
        return Path(dataset_dir).absolute().relative_to(Path(root).absolute()).as_posix()
    except ValueError:
        return Path(dataset_dir).name
