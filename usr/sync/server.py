"""The remote end: ``usr plumbing serve --root BASE_DIR`` answering one client on stdin/stdout.

Like git's upload-pack and receive-pack in one process. It serves only datasets under its
root (every id through :func:`usr.layout.validate_dataset_id`), verifies every object and
chunk against its id as it lands, and moves a ref only by compare-and-swap under the dataset
lock, in the same locked step as checking the new head out into the working directory. Locks
are never held while objects stream: objects and chunks are immutable and content-addressed,
so writing them needs no lock, and batch writers on the cluster never stall behind a push.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from usr import __version__, faults
from usr.errors import (
    InputError,
    NotFoundError,
    TransportError,
    UsrError,
    VerifyError,
    store_damage,
)
from usr.layout import (
    RECORDS_FILE,
    check_dataset_dir,
    dataset_path,
    refuse_symlinks,
    validate_dataset_id,
)
from usr.locks import hold
from usr.store.objects import INLINE_LIMIT_ENV
from usr.store.streamstage import StreamStager
from usr.sync import files, listing, packstream, refupdate
from usr.sync import protocol as p
from usr.sync.target import scan_working

FAULT_WANT = faults.register(
    "serve.want", "server: a fetch's object listing computed; reply not sent"
)
FAULT_HAVE = faults.register(
    "serve.have", "server: push negotiation computed what is missing; reply not sent"
)
FAULT_RECEIVED = faults.register(
    "serve.received", "server: a pushed stream received and sealed; ref not moved"
)
FAULT_UPDATED = faults.register(
    "serve.updated", "server: ref moved and new head checked out; reply not sent"
)


class Server:
    """Serves one connection. ``fio`` is already set up; :meth:`run` loops until EOF."""

    def __init__(self, root: Path, fio: p.FrameIO, repo_root: Path | None = None) -> None:
        self.root = root
        #: File mode's second root (``--repo-root``): the profile's repo_root, if it has one.
        self.repo_root = repo_root
        self.fio = fio
        self.peer = "client"
        #: Set when a pushed pack was refused: no ref update may follow it in this session.
        self.pack_failed = False
        self._stores: dict[Path, Any] = {}
        #: What a pushed stream staged, by dataset dir, for the ``update`` that follows.
        self._staged: dict[Path, Any] = {}
        #: The gate's check of a pushed table begun on its staged copy, by dataset dir
        #: (:class:`usr.sync.gate.StagedCheck`), for the same ``update``.
        self._early: dict[Path, Any] = {}
        #: This server's own walk of a dataset's working files (``heads`` with ``scan``),
        #: by dataset dir, for the ``record`` with ``scanned`` that follows; used once.
        self._scans: dict[Path, tuple[str, str | None]] = {}
        #: Directories a bootstrap of this connection made, by dataset dir (the dataset's
        #: own first, then each namespace parent it made): what ``abandon`` may remove.
        self._created: dict[Path, list[Path]] = {}
        #: The pack reader of a dataset's store that fetches of this session read with,
        #: by dataset dir (made again when its pack dir lists other packs).
        self._packed: dict[Path, Any] = {}

    # -- helpers -------------------------------------------------------------------------
    def _dir(self, msg: dict[str, Any]) -> tuple[str, Path]:
        ds = p.require(msg, "ds", str, self.peer)
        validate_dataset_id(ds)
        if not self.root.is_dir():
            raise NotFoundError(
                f"base_dir {self.root} does not exist on the remote",
                "create it there, or fix base_dir in the remote profile",
            )
        path = dataset_path(self.root, ds)
        # Refuse a symlinked dataset or namespace directory (as usr info does): whatever it
        # points at, writes through it would land outside what the root shows.
        refuse_symlinks(self.root, ds)
        check_dataset_dir(path, self.root)
        return ds, path

    def _store(self, msg: dict[str, Any], create: bool = False):
        from usr.store import Store

        ds, path = self._dir(msg)
        if path in self._stores:
            return self._stores[path]
        if not create and not (path / ".usr").is_dir():
            raise NotFoundError(f"dataset {ds!r} not found under {self.root}")
        if create:
            made = [d for d in (path, *path.parents) if d != self.root and not d.exists()]
            path.mkdir(parents=True, exist_ok=True)
            if made and made[0] == path:
                self._created[path] = made
        store = self._stores[path] = Store.open(path, create=True)
        return store

    # -- loop ----------------------------------------------------------------------------
    def run(self) -> int:
        """Answer messages until the client closes; a protocol error ends the session.
        A pushed stream whose ``update`` never came leaves nothing staged behind."""
        try:
            return self._loop()
        finally:
            for path in list(self._early):
                self._end_early(path)
            for stager in self._staged.values():
                stager.discard()

    def _loop(self) -> int:
        self.fio.channel.write(p.MAGIC)
        self.fio.flush()
        while True:
            try:
                frame = self.fio.read_frame(eof_ok=True)
            except TransportError as exc:
                self._fail(exc)
                return 1
            if frame is None:
                return 0  # the client closed between requests: a normal end
            kind, payload = frame
            try:
                if kind != p.JSON:
                    raise TransportError("bad frame from client: expected a request")
                msg = p.decode_json(payload, self.peer)
                handler = getattr(self, "op_" + msg["t"].replace("-", "_"), None)
                if handler is None:
                    raise TransportError(f"unknown request {msg['t'][:40]!r}")
                handler(msg)
                self.fio.flush()
            except TransportError as exc:
                # The stream is no longer trustworthy: report and end the session.
                self._fail(exc)
                return 1
            except UsrError as exc:
                self.fio.send_error(exc)
                self.fio.flush()
            except Exception as exc:  # noqa: BLE001 - the client must hear why, in one line
                damage = store_damage(exc)
                if damage is not None:  # the request failed, not the stream
                    self.fio.send_error(damage)
                    self.fio.flush()
                    continue
                self._fail(UsrError(f"internal error in usr serve: {type(exc).__name__}: {exc}"))
                return 1

    def _fail(self, exc: UsrError) -> None:
        try:
            self.fio.send_error(exc)
            self.fio.flush()
        except OSError:
            pass
        print(f"usr serve: {exc.one_line()}", file=sys.stderr)

    # -- requests ------------------------------------------------------------------------
    def op_hello(self, msg: dict[str, Any]) -> None:
        theirs = msg.get("protocol")
        if theirs != p.PROTOCOL_VERSION:
            raise TransportError(
                f"incompatible protocol: client speaks {theirs!r}, this usr {__version__} "
                f"speaks {p.PROTOCOL_VERSION}",
                "install the same usr version on both machines",
            )
        timeout = msg.get("lock_timeout")
        if isinstance(timeout, int | float) and timeout >= 0:
            # Our dataset locks read it (usr.locks); the client's --lock-timeout rules here too.
            os.environ["USR_LOCK_TIMEOUT"] = str(timeout)
        limit = msg.get("inline_limit")
        if isinstance(limit, int) and not isinstance(limit, bool) and limit >= 0:
            # Both ends must cut files the same way or identical files get different tree
            # entries (a phantom change on every record); ssh forwards no environment, so
            # the client's $USR_INLINE_LIMIT travels here.
            os.environ[INLINE_LIMIT_ENV] = str(limit)
        # Capabilities: answered only when the client offered them (an older client is
        # sent the hello it knows) and this side has them on.
        caps = {}
        if msg.get(p.MANIFEST_FIRST) is True and p.manifest_first_enabled():
            caps[p.MANIFEST_FIRST] = True
        self.fio.send_message(
            "hello",
            usr_version=__version__,
            protocol=p.PROTOCOL_VERSION,
            root=str(self.root),
            root_exists=self.root.is_dir(),
            **caps,
        )

    def op_heads(self, msg: dict[str, Any]) -> None:
        ds, path = self._dir(msg)
        if not (path / ".usr").is_dir():
            self.fio.send_message("heads", exists=path.is_dir(), head=None, refs={})
            return
        store = self._store(msg)
        fields: dict[str, Any] = {}
        if msg.get("scan") == "record":
            # Walk now, while the client walks its own side: its record then reuses this.
            self._scans[store.path] = scan_working(store, "scan before a sync")
            fields["tree"] = self._scans[store.path][0]
        elif msg.get("scan") == "look":
            fields["tree"] = store.working_tree()  # a diff: no lock, nothing kept
        refs = {}
        for name in ("refs/heads/main",):
            refs[name] = store.head(name)
        self.fio.send_message("heads", exists=True, head=store.head(), refs=refs, **fields)

    def op_record(self, msg: dict[str, Any]) -> None:
        store = self._store(msg)
        action = p.require(msg, "action", str, self.peer)
        actor = msg.get("actor")
        check = None
        if msg.get("gate") is True:
            # Before the record moves the ref: a refused pull leaves this side as it was.
            from usr.sync.gate import check_state

            def check(tree: str) -> None:
                check_state(store, tree, store.head(), "the pull of the working files")

        scanned = self._scans.pop(store.path, None) if msg.get("scanned") is True else None
        who = actor if isinstance(actor, str) else None
        rec = store.record(action, actor=who, check=check, scanned=scanned)
        self.fio.send_message("recorded", commit=rec.commit, created=rec.created)

    def op_working_tree(self, msg: dict[str, Any]) -> None:
        store = self._store(msg)
        self.fio.send_message("working-tree", tree=store.working_tree())

    def op_log(self, msg: dict[str, Any]) -> None:
        store = self._store(msg)
        head = store.head()
        limit = msg.get("limit")
        limit = limit if isinstance(limit, int) else None
        commits = [e.as_dict() for e in store.log(head, limit)] if head else []
        self.fio.send_message("log", head=head, commits=commits)

    def op_want(self, msg: dict[str, Any]) -> None:
        """List the objects a fetch of ``wants`` needs, given the client's ``haves`` (each
        at most MAX_IDS ids): in ``objects`` messages of at most ``batch`` ids and sizes
        each when the client names a batch, else in one."""
        store = self._store(msg)
        wants = p.id_list(msg, "wants", self.peer, p.check_oid)
        haves = p.id_list(msg, "haves", self.peer, p.check_oid)
        batch = p.listing_batch(msg, self.peer)
        blobs = bool(msg.get("blobs", True))
        found = listing.list_objects(store, wants, haves, blobs=blobs)
        faults.point(FAULT_WANT)
        for part in listing.batched(found, batch):
            self.fio.send_message("objects", **part)

    def op_get(self, msg: dict[str, Any]) -> None:
        """Stream the named objects, then the named chunks (at most MAX_IDS of each), then
        ``done``."""
        store = self._store(msg)
        oids = p.id_list(msg, "oids", self.peer, p.check_oid, [])
        cids = p.id_list(msg, "cids", self.peer, p.check_cid, [])
        held = self._packed.get(store.path)
        packed = held.current() if held is not None else packstream.packed_objects(store)
        self._packed[store.path] = packed
        sent = packstream.send_objects(store, self.fio, oids, packed)
        sent += packstream.send_chunks(store, self.fio, cids)
        self.fio.send_message("done", sent=sent)

    def _transfer_lock(self, store: Any, what: str):
        """``.usr.transfer.lock``: held while a push streams in, and taken for a moment by
        negotiation, so a rerun after a cut connection sees everything the dying receiver
        kept. It is not the dataset lock: recording and batch writers never wait on it."""
        return hold(store.path / ".usr.transfer.lock", what=what)

    def op_have(self, msg: dict[str, Any]) -> None:
        """Push negotiation: which of the client's objects and chunks are missing here (one
        batch of at most MAX_IDS of each; a push sends as many ``have`` as it needs)."""
        store = self._store(msg, create=bool(msg.get("create")))
        with self._transfer_lock(store, "usr serve: push negotiation"):
            pass
        oids = p.id_list(msg, "oids", self.peer, p.check_oid)
        cids = p.id_list(msg, "cids", self.peer, p.check_cid)
        missing_oids = packstream.lacking(store, oids)
        missing_cids = list(store.chunks.missing(cids)) if cids else []
        faults.point(FAULT_HAVE)
        self.fio.send_message("have", oids=missing_oids, cids=missing_cids)

    def op_abandon(self, msg: dict[str, Any]) -> None:
        """The client gives up a push it bootstrapped (its own gate refused the state it was
        sending): a dataset directory this connection made, still without a head, is
        removed with the namespace directories made for it, so the refusal leaves the
        remote as it was. Anything else stays; nothing of another connection is touched
        while its stream holds the transfer lock."""
        path = self._dir(msg)[1]
        made = self._created.pop(path, None)
        removed = False
        if made is not None and path in self._stores:
            store = self._stores.pop(path)
            self._end_early(path)
            stager = self._staged.pop(path, None)
            if stager is not None:
                stager.discard()
            what = "usr serve: abandon a refused bootstrap"
            with store.lock(what), self._transfer_lock(store, what):
                if store.head() is None:
                    shutil.rmtree(path)
                    removed = True
            if removed:
                for parent in made[1:]:
                    try:
                        parent.rmdir()  # only if nothing else came to live there meanwhile
                    except OSError:
                        break
        self.fio.send_message("abandoned", removed=removed)

    def op_pack(self, msg: dict[str, Any]) -> None:
        """Receive a pushed stream of objects and chunks, verifying each as it lands, and
        stage the working files of the pushed state as their blobs land (for ``update``)."""
        store = self._store(msg, create=bool(msg.get("create")))
        self.pack_failed = True
        self._staged.pop(store.path, None)
        head = store.head()
        # The client sends each manifest before its chunks (it says so here, and only
        # after this side offered it in hello): manifests are held until their chunks are
        # sealed, and chunked files are staged as the chunks land.
        first = msg.get(p.MANIFEST_FIRST) is True
        base = store.tree_of(head) if head else None
        self._end_early(store.path)
        # The gate's check of the table starts on its staged copy (unless the client said
        # it will ask for no validation): it goes first in the stream.
        seen = self._staged_table(store) if _gated(msg) else None
        chunked = first and p.manifest_first_enabled()
        stager = StreamStager(store, base=base, chunked=chunked, on_verified=seen)
        try:
            with self._transfer_lock(store, "usr serve: receiving a push"):
                stats = packstream.receive(
                    store, self.fio, self.peer, stage=stager, manifests_first=first
                )
        except BaseException:
            stager.discard()
            raise
        self.pack_failed = False
        self._staged[store.path] = stager
        if faults.armed(FAULT_RECEIVED):
            stager.drain()  # a kill here leaves the same staged files every run
        faults.point(FAULT_RECEIVED)
        self.fio.send_message("received", objects=stats.objects, chunks=stats.chunks)

    def _staged_table(self, store: Any) -> Callable[[str, str, str, os.stat_result], None]:
        """What the stream's staging tells of each chunked file verified whole: the
        dataset's ``records.parquet`` starts the gate's check on that copy."""

        def seen(rel: str, oid: str, path: str, st: os.stat_result) -> None:
            if rel == RECORDS_FILE and oid and store.path not in self._early:
                from usr.sync.gate import StagedCheck

                self._early[store.path] = StagedCheck(store.path, oid, path, st)

        return seen

    def _end_early(self, path: Path) -> None:
        """Wait for a check begun on a staged table (its id-keys entry written whole)
        before its dataset's directory may go, and drop it."""
        early = self._early.pop(path, None)
        if early is not None:
            early.wait()

    def op_update(self, msg: dict[str, Any]) -> None:
        """Compare-and-swap ``refs/heads/main`` old -> new and check new out, locked."""
        if self.pack_failed:
            raise VerifyError("refusing to move the ref: the objects sent with it were refused")
        store = self._store(msg)
        new = p.check_oid(p.require(msg, "new", str, self.peer), self.peer)
        old = msg.get("old")
        if old is not None:
            old = p.check_oid(old, self.peer)
        validate = _gated(msg)
        stager = self._staged.pop(store.path, None) or StreamStager(store)
        try:
            staged = stager.result()  # may complete the table from the store: a check starts
            early = self._early.get(store.path)
            head = refupdate.update_and_checkout(store, new, old, validate, staged, early)
        except BaseException:
            stager.discard()  # refused: the files it staged will not be promoted
            raise
        finally:
            self._end_early(store.path)
        faults.point(FAULT_UPDATED)
        self.fio.send_message("updated", head=head)

    # -- file mode (one plain file under a served root; see usr/sync/files.py) --------------
    def _file(self, msg: dict[str, Any]) -> Path:
        """The file a ``file-*`` request names, confined to the root it names."""
        which = msg.get("root", "base")
        root = (
            {"base": self.root, "repo": self.repo_root}.get(which)
            if isinstance(which, str)
            else None
        )
        if root is None:
            raise InputError(
                f"file root {str(which)[:20]!r} is not served here",
                "file mode needs repo_root in the profile for paths mapped from local_repo_root",
            )
        return files.confine(root, msg.get("path"))

    def op_file_stat(self, msg: dict[str, Any]) -> None:
        path = self._file(msg)
        self.fio.send_message("file-stat", **files.state(path, msg["path"]))

    def op_file_get(self, msg: dict[str, Any]) -> None:
        """Stream one file: ``K`` pieces, then ``file-end``."""
        path = self._file(msg)
        if files.regular_or_absent(path, msg["path"]) is None:
            raise NotFoundError(f"{msg['path']} does not exist under the served root")
        try:
            files.send(self.fio, path, msg["path"])
        except OSError as exc:
            raise UsrError(f"reading {msg['path']}: {exc.strerror or exc}") from None

    def op_file_put(self, msg: dict[str, Any]) -> None:
        """Receive one file and replace the target atomically, if it still holds ``expect``."""
        try:
            path = self._file(msg)
            want = p.require(msg, "blake3", str, self.peer)
            expect = msg.get("expect")
            failure = None
        except UsrError as exc:
            path, want, expect, failure = self.root / ".usr-refused", None, None, exc
        got = files.receive(self.fio, path, self.peer, expect, want=want, failure=failure)
        self.fio.send_message("file-put", **got)

    def op_probe(self, msg: dict[str, Any]) -> None:
        """Doctor information about the served root (and optionally one dataset)."""
        info: dict[str, Any] = {"root": str(self.root), "usr_version": __version__}
        info["root_exists"] = self.root.is_dir()
        info["root_writable"] = self.root.is_dir() and os.access(self.root, os.W_OK | os.X_OK)
        if info["root_exists"]:
            usage = shutil.disk_usage(self.root)
            info["free_bytes"] = usage.free
            info["total_bytes"] = usage.total
        info["lock_ok"] = False
        info["lock_error"] = None
        if info["root_writable"]:
            try:
                with (
                    tempfile.TemporaryDirectory(prefix=".usr-tmp-probe-", dir=self.root) as tmp,
                    hold(Path(tmp) / ".usr.lock", what="usr remotes doctor", timeout=5),
                ):
                    pass
                info["lock_ok"] = True
            except (OSError, UsrError) as exc:
                info["lock_error"] = str(exc)
        self.fio.send_message("probe", **info)


def serve(root: str | os.PathLike[str], repo_root: str | os.PathLike[str] | None = None) -> int:
    """Serve on this process's stdin/stdout. Stray prints go to stderr, never the wire.

    ``repo_root`` is file mode's second root (the profile's ``repo_root``)."""
    base = Path(root).expanduser().absolute()
    repo = Path(repo_root).expanduser().absolute() if repo_root else None
    wire_out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # anything printed by accident must not corrupt the frame stream
    wire_in = os.fdopen(os.dup(0), "rb", buffering=0)
    fio = p.FrameIO(p.FileChannel(wire_in, wire_out), peer="client")
    return Server(base, fio, repo).run()


def _gated(msg: dict[str, Any]) -> bool:
    """Whether a ``pack`` or ``update`` asks for the gate: unless it says ``validate:
    false`` (the client's ``--no-validate``)."""
    return msg.get("validate", True) is not False
