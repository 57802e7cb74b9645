"""The gate: a state that would replace a good copy must pass the checks of ``usr validate``
first, on whichever side receives it, before anything is promoted or a ref moves.

Checked, whatever ``--verify`` says (it is the fidelity of the copy, this is the validity
of what is copied):

* ``records.parquet`` — a readable Parquet file, the core schema (every core column, with
  its type, and no other), and no id twice;
* ``.events.log`` — every line a JSON object, the last one ended by a newline.

(The append-only rule of the log along history is :func:`usr.sync.rules.check_events_chain`;
the id rule ``sha1(bio_type|sequence)`` and the alphabets stay with ``usr validate``, which
reads every sequence.) A file the receiver already holds in its recorded head was accepted
when it arrived, so it is not read again. ``--no-validate`` skips the gate; the audit says
so (``data.gate``).

A state is read from a store (:func:`check_state`, what a pull or a push receives) or from
the working files a sender is about to record (:func:`check_working`), through the same
checks. The unique-ids check keeps an id-keys cache per dataset (:mod:`usr.idkeys`), so a
table grown by an append decodes only its new row groups; the answer is the same. May
import :mod:`usr.errors`, :mod:`usr.layout`, :mod:`usr.records` (the core schema),
:mod:`usr.unique_ids` (its spool error), :mod:`usr.idkeys` and pyarrow; it reads the store
only through
:class:`usr.store.entryfile.EntryFile` and ``open_entry``.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from usr import faults, idkeys
from usr.errors import UsrError, VerifyError
from usr.layout import EVENTS_FILE, RECORDS_FILE
from usr.store.entryfile import EntryFile
from usr.unique_ids import SpoolError

FAULT_STAGED_CHECK = faults.register(
    "gate.staged-check",
    "receiver of a push: its gate's check of the table begun on the staged copy, mid-stream",
)

HINT = (
    "nothing was changed on either side; fix the file where it was written (usr validate "
    "DATASET names every problem), or pass --no-validate to transfer it anyway"
)


class GateRefused(VerifyError):
    """An incoming state that fails the gate (exit 5): names the file and the check."""

    def __init__(self, where: str, path: str, check: str, why: str) -> None:
        super().__init__(f"refusing {where}: {path} fails the {check} check: {why}", HINT)
        self.path = path
        self.check = check
        self.why = why


def gate_state(
    store: Any, commit: str, receiver_head: str | None, action: str, options: Any
) -> dict[str, Any]:
    """The gate of a pull or push (``action``) receiving ``commit``, for its audit entry:
    ``{"validated", "override", "checked"}``; ``--no-validate`` checks nothing."""
    if options.no_validate:
        return {"validated": False, "override": True, "checked": []}
    where = f"the {action} of state {commit[:12]}"
    return dict(check_state(store, commit, receiver_head, where), validated=True, override=False)


def own_handle(store: Any) -> Any:
    """Another handle on ``store`` (its own libgit2 repository and chunk readers), so the
    gate can read a state on a thread while a checkout reads through ``store``."""
    import pygit2

    return type(store)(store.path, pygit2.Repository(str(store.gitdir)))


def check_state(
    store: Any,
    commit: str,
    receiver_head: str | None,
    where: str,
    staged: StagedCheck | None = None,
) -> dict[str, Any]:
    """Gate the recorded state ``commit`` of ``store`` (all its objects there) against the
    receiver's current head (None: a bootstrap). Returns what was checked, for the audit.
    ``staged``: the check of a received table already started on its staged copy, whose
    answer stands for that table's."""
    checked: list[str] = []
    tree = store.repo[store.tree_of(commit)]
    base = store.repo[store.tree_of(receiver_head)] if receiver_head else None
    primary = _blob(tree, RECORDS_FILE)
    if primary is not None and primary != _blob(base, RECORDS_FILE):
        if staged is not None and staged.answer(primary, where):
            _PASSED.add((primary, None))
        if (primary, None) not in _PASSED:
            cache = idkeys.cache_of(store.path)
            twin = lambda: EntryFile(own_handle(store), primary)  # noqa: E731
            check_records(EntryFile(store, primary), where, cache, twin)
            _PASSED.add((primary, None))
        checked.append(RECORDS_FILE)
    events = _blob(tree, EVENTS_FILE)
    held = _blob(base, EVENTS_FILE)
    if events is not None and events != held:
        if (events, held) not in _PASSED:
            old = b"".join(store.open_entry(held)) if held else b""
            check_events(store.open_entry(events), old, where)
            _PASSED.add((events, held))
        checked.append(EVENTS_FILE)
    return {"checked": checked}


#: ``(blob, held)`` pairs this process has gated already. Blobs are named by their bytes,
#: so one that passed passes again: a push to an object store checks its working tree
#: inside the local record and the same state again before the ref moves, and reads the
#: table once.
_PASSED: set[tuple[str, str | None]] = set()


class StagedCheck:
    """The check of a received ``records.parquet`` on its staged copy, started on a thread
    as soon as the stream has written that copy and verified it whole against its manifest,
    while the rest of the stream lands (a push sends the table first:
    :func:`usr.sync.pushplan.plan_push`). :func:`check_state` takes its answer for that
    blob instead of reading the table again from the store after the stream.

    An answer is taken only when the staged file is, before and after the check, the one
    the stream verified (same inode, size, mtime and ctime); a file changed or gone
    meanwhile, or any error but a refusal, gives no answer, and the table is checked from
    the store as before. So the answer is never another file's."""

    def __init__(self, dataset_dir: Path, blob: str, path: str, st: os.stat_result) -> None:
        self.blob, self.path = blob, path
        self._stamp = _stamp(st)
        self._passed = False
        self._refused: GateRefused | None = None
        self._thread: threading.Thread | None = None
        if faults.armed(FAULT_STAGED_CHECK):
            self._run(dataset_dir)  # a test's crash point: reached at the same step each run
            return
        self._thread = threading.Thread(
            target=self._run, args=(dataset_dir,), name="usr-staged-gate", daemon=True
        )
        self._thread.start()

    def _run(self, dataset_dir: Path) -> None:
        faults.point(FAULT_STAGED_CHECK)
        try:
            with open(self.path, "rb") as fh:
                if _stamp(os.fstat(fh.fileno())) != self._stamp:
                    return
                try:
                    check_records(fh, "", idkeys.cache_of(dataset_dir), self._twin)
                except GateRefused as exc:
                    refused: GateRefused | None = exc
                else:
                    refused = None
            if _stamp(os.stat(self.path)) == self._stamp:
                self._refused, self._passed = refused, refused is None
        except Exception:  # noqa: BLE001 - no answer: the table is checked from the store
            return

    def _twin(self) -> BinaryIO:
        return open(self.path, "rb")  # noqa: SIM115 - closed with the second reader

    def wait(self) -> None:
        """Until the check has ended (before the dataset's directory may be removed)."""
        if self._thread is not None:
            self._thread.join()

    def answer(self, blob: str, where: str) -> bool:
        """For ``blob``: True if its staged copy passed; raises the refusal (naming
        ``where``) if it failed; False if this check has no answer for it."""
        if blob != self.blob:
            return False
        self.wait()
        if self._refused is not None:
            exc = self._refused
            raise GateRefused(where, exc.path, exc.check, exc.why)
        return self._passed


def _stamp(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def check_working(directory: Path, where: str) -> dict[str, Any]:
    """Gate the working files a sender is about to record (before the record moves a ref)."""
    checked: list[str] = []
    records = directory / RECORDS_FILE
    if records.is_file():
        with records.open("rb") as fh:
            check_records(fh, where, idkeys.cache_of(directory))
        checked.append(RECORDS_FILE)
    events = directory / EVENTS_FILE
    if events.is_file():
        check_events(_blocks(events), b"", where)
        checked.append(EVENTS_FILE)
    return {"checked": checked}


def check_records(
    source: BinaryIO,
    where: str,
    cache: Path | None = None,
    twin: Callable[[], BinaryIO] | None = None,
) -> None:
    """Readable Parquet, the core schema exactly, unique ids (the id column alone, row
    group by row group, in bounded memory: :mod:`usr.unique_ids`). ``cache``: the
    dataset's id-keys cache (:mod:`usr.idkeys`), so that a table grown by appended rows
    decodes only its new row groups; it saves time, it never changes the answer. ``twin``
    opens the same bytes again, so that the whole check of a big table decodes on two
    threads (:func:`usr.unique_ids.id_keys`; opened only then)."""
    import pyarrow.parquet as pq

    from usr.records import schema_problem

    try:
        pf = pq.ParquetFile(source)
        schema = pf.schema_arrow.remove_metadata()
    except Exception as exc:  # noqa: BLE001 - any parse failure is the refusal
        raise GateRefused(where, RECORDS_FILE, "parquet", _first_line(exc)) from None
    why = schema_problem(schema)
    if why is not None:
        raise GateRefused(where, RECORDS_FILE, "schema", why)
    try:
        duplicate = idkeys.check(pf, source, cache, twin).duplicate
    except SpoolError as exc:  # this machine's temporary directory, not the table
        raise UsrError(
            f"cannot check {RECORDS_FILE} for duplicate ids ({where}): {exc}",
            "free space in the temporary directory or set TMPDIR to a larger one; "
            "nothing was changed",
        ) from None
    except Exception as exc:  # noqa: BLE001 - a damaged column chunk
        raise GateRefused(where, RECORDS_FILE, "parquet", _first_line(exc)) from None
    if duplicate is not None:
        raise GateRefused(where, RECORDS_FILE, "unique-ids", f"id {duplicate!r} appears twice")


def check_events(blocks: Iterable[bytes], held: bytes, where: str) -> None:
    """Every line beyond the receiver's copy (``held``, a byte prefix when the new log
    extends it) is a JSON object, and the log ends with a newline."""
    data = b"".join(blocks)
    start = len(held) if held and data.startswith(held) else 0
    if data and not data.endswith(b"\n"):
        why = "its last line is not ended by a newline (a partial write)"
        raise GateRefused(where, EVENTS_FILE, "event-lines", why)
    number = data.count(b"\n", 0, start)
    for line in data[start:].splitlines():
        number += 1
        try:
            event = json.loads(line)
        except ValueError:
            raise GateRefused(
                where, EVENTS_FILE, "event-lines", f"line {number} is not JSON"
            ) from None
        if not isinstance(event, dict):
            why = f"line {number} is not a JSON object"
            raise GateRefused(where, EVENTS_FILE, "event-lines", why)


def _blob(tree: Any, name: str) -> str | None:
    if tree is None:
        return None
    try:
        entry = tree[name]
    except KeyError:
        return None
    return str(entry.id) if entry.type_str == "blob" else None


def _blocks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as fh:
        yield from iter(lambda: fh.read(1 << 20), b"")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
