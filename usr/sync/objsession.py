"""An object-store remote behind the session seam: :class:`ObjectStoreSession`.

The sync talks to every remote through the methods of :class:`usr.sync.session.Session`
(``heads``, ``record``, ``working_tree``, ``fetch``, ``fetch_tree``, ``fetch_blobs``,
``push``, ``log``, ``close``); this class answers them from a bucket laid out as in
docs/format.md ("Object-store remotes") instead of from ``usr plumbing serve``. There is
no server: what the server would check, the client checks here — every fetched object by
its git id and every chunk by its blake3 before it lands in the local store, and the gate
(:func:`usr.sync.gate.check_state`) on a pushed state before the ref moves. The ref moves
last, by compare-and-swap, after every pack and the index it names are written.

An object store has no working files: ``record`` returns the head unchanged and
``working_tree`` is the head's tree. May import :mod:`usr.sync.bucket`,
:mod:`usr.sync.packstream`, :mod:`usr.sync.pushplan`, :mod:`usr.sync.peercheck`,
:mod:`usr.sync.gate` and the store's id helpers; knows no transport but the bucket.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from usr import faults
from usr.errors import NotFoundError, UsageError, VerifyError
from usr.layout import validate_dataset_id
from usr.store.chunks import chunk_id
from usr.store.objects import git_object_id
from usr.sync import packstream, peercheck, pushplan
from usr.sync import protocol as p
from usr.sync.bucket import Bucket, Index, PackBuilder, Ref, read_spans
from usr.sync.conversation import TransferStats
from usr.sync.history import require_fast_forward

FAULT_BEFORE_REF = faults.register(
    "s3.before-ref", "client: every pack and the new index in the bucket; the ref not moved"
)
FAULT_REF_MOVED = faults.register(
    "s3.ref-moved", "client: the bucket's ref moved by CAS; the local tracking ref not yet"
)
FAULT_CHUNKS_LANDED = faults.register(
    "s3.chunks-landed", "client: a fetch's chunks are in the local store; no manifest yet"
)


class ObjectStoreSession:
    """One conversation with an object-store remote. Use as a context manager."""

    def __init__(self, profile: Any, name: str) -> None:
        self.name = name
        self.bucket = Bucket(profile, name)
        self.fio = self.bucket.counter  # bytes_in / bytes_out, as usr.sync.remote reads them
        self.server: dict[str, Any] = {"usr_version": None, "protocol": None, "store": "s3"}
        self.handshake_seconds = 0.0
        self.lock_timeout = None
        self._refs: dict[str, Ref | None] = {}
        self._indexes: dict[str, Index] = {}

    def __enter__(self) -> ObjectStoreSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> int | None:
        return None

    def hello(self) -> dict[str, Any]:
        """Reach the bucket once, so a wrong key or a missing bucket fails up front."""
        start = time.monotonic()
        self.bucket.probe()
        self.handshake_seconds = time.monotonic() - start
        return self.server

    # -- reading the ref and the index -----------------------------------------------------
    def _ref(self, ds: str, fresh: bool = False) -> Ref | None:
        if fresh or ds not in self._refs:
            self._refs[ds] = self.bucket.read_ref(ds)
        return self._refs[ds]

    def _index(self, ds: str, ref: Ref | None) -> Index:
        if ref is None:
            return Index()
        if ref.index not in self._indexes:
            self._indexes[ref.index] = self.bucket.read_index(ds, ref.index)
        return self._indexes[ref.index]

    def _require(self, ds: str) -> tuple[Ref, Index]:
        ref = self._ref(ds)
        if ref is None:
            raise NotFoundError(f"dataset {ds!r} has no recorded state on {self.name}")
        return ref, self._index(ds, ref)

    def heads(self, ds: str, scan: str | None = None) -> dict[str, Any]:
        """``{"exists", "head", "refs", "tree"}``: the dataset exists once its ref does;
        a bucket has no working files to ``scan`` (``tree`` is None)."""
        del scan
        ref = self._ref(validate_dataset_id(ds), fresh=True)
        head = None if ref is None else p.check_oid(ref.head, self.name)
        refs = {"refs/heads/main": head}
        return {"exists": head is not None, "head": head, "refs": refs, "tree": None}

    def record(
        self,
        ds: str,
        action: str,
        actor: str | None = None,
        gate: bool = False,
        scanned: bool = False,
    ) -> dict[str, Any]:
        """Nothing to record (no working files): the head as it is."""
        del action, actor, gate, scanned
        ref = self._ref(validate_dataset_id(ds))
        return {"commit": None if ref is None else ref.head, "created": False}

    def working_tree(self, ds: str) -> str:
        """The head's tree (its commit is read from the store)."""
        ds = validate_dataset_id(ds)
        ref, index = self._require(ds)
        data = self.read_objects(ds, index, [ref.head])[ref.head][1]
        return peercheck.commit_links(data, f"commit {ref.head}")[0]

    def log(self, ds: str, limit: int | None = None) -> list[dict[str, Any]]:
        """The remote history from its head, newest first (``id``, ``parents``, ``tree``)."""
        ds = validate_dataset_id(ds)
        ref, index = self._require(ds)
        commits = [o for o, e in index.objects.items() if e[0] == "commit"]
        got = self.read_objects(ds, index, commits)
        out, todo, seen = [], [ref.head], set()
        while todo and (limit is None or len(out) < limit):
            oid = todo.pop(0)
            if oid in seen:
                continue
            seen.add(oid)
            tree, parents = peercheck.commit_links(got[oid][1], f"commit {oid}")
            out.append({"id": oid, "parents": parents, "tree": tree})
            todo.extend(parents)
        return out

    def probe(self) -> dict[str, Any]:
        self.bucket.probe()
        return {"root": self.bucket.label, "root_exists": True, "root_writable": None}

    # -- file mode -------------------------------------------------------------------------
    def file_stat(self, root: str, path: str) -> dict[str, Any]:
        raise UsageError(
            f"file mode is not available for {self.name}: an object store holds datasets only",
            "sync the dataset (usr pull|push DATASET REMOTE), or use an ssh or local remote",
        )

    file_get = file_put = file_stat

    # -- fetch -----------------------------------------------------------------------------
    def read_objects(self, ds: str, index: Index, oids: list[str]) -> dict[str, tuple[str, bytes]]:
        """``oid -> (type, bytes)`` read from the packs, each checked against its id."""
        got = read_spans(self.bucket, ds, index, oids, chunks=False)
        out = {}
        for oid, data in got.items():
            kind = index.objects[oid][0]
            if git_object_id(kind, data) != oid:
                raise VerifyError(f"object {oid} from {self.name}: bytes hash differently")
            out[oid] = (kind, data)
        return out

    def fetch(
        self,
        ds: str,
        store: Any,
        wants: list[str],
        haves: list[str] | None = None,
        blobs: bool = True,
        stage: Any = None,
    ) -> TransferStats:
        """Bring ``wants`` (commits or trees) and what is below them into ``store``; only
        what it lacks moves, all verified before it is written. Refs are not touched.
        ``stage`` is accepted as :meth:`usr.sync.session.Session.fetch` takes it and left
        unused: from a bucket nothing is staged while it lands (the checkout writes)."""
        start = time.monotonic()
        ds = validate_dataset_id(ds)
        wants = [p.check_oid(w, "caller") for w in wants]
        _ref, index = self._require(ds)
        in0 = self.fio.bytes_in
        if haves is None:
            haves = local_heads(store)
        walk = _Walk(self, ds, store, index, [h for h in haves if store.has_object(h)])
        walk.run(wants)
        stats = TransferStats(sizes={bytes.fromhex(o): n for o, n in walk.sizes.items()})
        if blobs:
            total = sum(walk.sizes.values())
            with self.bucket.metered("pull", total or None, outgoing=False):
                self._land_blobs(ds, store, index, walk.blobs, stats)
        with store.object_writer() as objects:
            for oid in walk.seen:
                if oid not in walk.fetched:
                    continue
                kind, data = walk.fetched[oid]
                if objects.add(kind, oid, data):
                    stats.objects += 1
                    stats.payload_bytes += len(data)
        stats.wire_bytes_in = self.fio.bytes_in - in0
        stats.seconds = time.monotonic() - start
        return stats

    def fetch_trees(self, ds: str, store: Any, wants: list[str]) -> TransferStats:
        return self.fetch(ds, store, wants, blobs=False)

    def fetch_tree(self, ds: str, store: Any, tree: str) -> TransferStats:
        return self.fetch(ds, store, [tree], haves=[], blobs=False)

    def fetch_blobs(self, ds: str, store: Any, blob_ids: list[str]) -> TransferStats:
        """Particular files' contents by blob id (with their chunks if they are manifests)."""
        start = time.monotonic()
        ds = validate_dataset_id(ds)
        _ref, index = self._require(ds)
        in0 = self.fio.bytes_in
        need = [p.check_oid(b, "caller") for b in blob_ids]
        stats = TransferStats()
        self._land_blobs(ds, store, index, [b for b in need if not store.has_object(b)], stats)
        stats.wire_bytes_in = self.fio.bytes_in - in0
        stats.seconds = time.monotonic() - start
        return stats

    def _land_blobs(
        self, ds: str, store: Any, index: Index, need: list[str], stats: TransferStats
    ) -> None:
        """Blobs ``need`` into ``store``: chunks first (blake3 and length checked), then
        the manifests naming them (``packstream.write_held`` refuses one with a chunk
        missing), then plain blobs."""
        need = list(dict.fromkeys(need))
        got = self.read_objects(ds, index, need)
        held: dict[str, bytes] = {}
        lengths: dict[str, int] = {}
        plain: dict[str, bytes] = {}
        for oid, (kind, data) in got.items():
            if kind != "blob":
                raise VerifyError(f"{self.name}: {oid} is a {kind}, a blob was asked for")
            entries = packstream.manifest_entries(data, f"blob {oid}")
            if entries:
                held[oid] = data
                lengths.update(entries)
            else:
                plain[oid] = data
        cids = store.chunks.missing(lengths)
        chunks = read_spans(self.bucket, ds, index, cids, chunks=True)
        with store.chunks.writer() as writer:
            for cid, data in chunks.items():
                if chunk_id(data) != cid or len(data) != lengths[cid]:
                    raise VerifyError(f"chunk {cid} from {self.name}: bytes hash differently")
                if writer.add(cid, data):
                    stats.chunks += 1
                    stats.payload_bytes += len(data)
        if chunks:
            faults.point(FAULT_CHUNKS_LANDED)
        stats.objects += packstream.write_held(store, held)
        with store.object_writer() as objects:
            for oid, data in plain.items():
                if objects.add("blob", oid, data):
                    stats.objects += 1
                    stats.payload_bytes += len(data)

    # -- push ------------------------------------------------------------------------------
    def push(
        self,
        ds: str,
        store: Any,
        new: str,
        old: str | None,
        create: bool | None = None,
        file_sizes: Mapping[str, int] | None = None,
        validate: bool = True,
        before_update: Callable[[], None] | None = None,
    ) -> TransferStats:
        """Write what the store lacks of commit ``new`` (packs, then a new index), then move
        the ref ``old`` -> ``new`` by compare-and-swap. The head read must still be ``old``
        and ``new`` must contain it; ``new`` passes the gate first unless ``validate`` is
        false. Of two racing pushes exactly one moves the ref; the other gets
        ConflictError "remote moved" and its packs stay unnamed (garbage, never read)."""
        del create
        start = time.monotonic()
        ds = validate_dataset_id(ds)
        p.check_oid(new, "caller")
        in0, out0 = self.fio.bytes_in, self.fio.bytes_out
        ref = self._ref(ds, fresh=True)
        head = None if ref is None else ref.head
        require_fast_forward(
            store, head, old, new, "someone else pushed; rerun to see the new state"
        )
        if validate:
            from usr.sync.gate import check_state

            check_state(store, new, old, f"the push of state {new[:12]}")
        index = self._index(ds, ref).copy()
        stats = TransferStats()
        builder = PackBuilder(self.bucket, ds, index)
        haves = [old] if old and store.has_object(old) else []
        oids = store.missing_objects([new], haves)
        plan = pushplan.plan_push(store, oids, file_sizes)
        total = sum(plan.sizes) + sum(plan.chunk_sizes.values())
        with self.bucket.metered("push", total or None, outgoing=True):
            _pack_missing(store, builder, plan, stats)
            name = builder.finish()
        if before_update is not None:
            before_update()
        faults.point(FAULT_BEFORE_REF)
        self.bucket.swap_ref(ds, new, name, ref)
        faults.point(FAULT_REF_MOVED)
        self._refs[ds] = Ref(new, name, None)
        self._indexes[name] = index
        stats.wire_bytes_in = self.fio.bytes_in - in0
        stats.wire_bytes_out = self.fio.bytes_out - out0
        stats.seconds = time.monotonic() - start
        return stats


def _pack_missing(
    store: Any, builder: PackBuilder, plan: pushplan.PushPlan, stats: TransferStats
) -> None:
    """Add to the packs every object of ``plan`` and every chunk their manifests name that
    the index lacks (chunks before the manifests naming them). The order is the plan's, so
    a rerun of a cut-off push cuts the same packs and finds those already written."""
    index = builder.index
    for oid in plan.oids():
        if oid in index.objects:
            continue
        kind, data = packstream.read_for_send(store, oid)
        size = 0
        if kind == "blob":
            entries = packstream.manifest_entries(data, f"blob {oid}")
            size = sum(n for _, n in entries) if entries else len(data)
            for cid, _n in entries:
                if cid not in index.chunks and cid not in builder.pending_chunks:
                    chunk = store.chunks.get(cid)
                    builder.add_chunk(cid, chunk)
                    stats.chunks += 1
                    stats.payload_bytes += len(chunk)
        builder.add_object(oid, kind, data, size)
        stats.objects += 1
        stats.payload_bytes += len(data)


class _Walk:
    """The commits and trees below some wants that the local store lacks, read from the
    packs level by level (all missing commits of the index in the first request), and the
    blobs their trees name: ``fetched`` (verified, to write), ``blobs`` (ids the store
    lacks), ``sizes`` (whole-file sizes of the blobs named)."""

    def __init__(self, session: Any, ds: str, store: Any, index: Index, haves: list[str]):
        self.session, self.ds, self.store, self.index = session, ds, store, index
        self.haves = haves
        self.fetched: dict[str, tuple[str, bytes]] = {}
        self.blobs: list[str] = []
        self.sizes: dict[str, int] = {}
        self.seen: set[str] = set()

    def _known(self, oid: str) -> bool:
        """Complete below: a local commit that a have contains."""
        return self.store.has_object(oid) and any(
            self.store.is_ancestor(oid, h) for h in self.haves
        )

    def _get(self, oids: list[str]) -> None:
        need = [o for o in oids if o not in self.fetched and not self.store.has_object(o)]
        extra = [
            o
            for o, e in self.index.objects.items()
            if e[0] == "commit" and o not in self.fetched and not self.store.has_object(o)
        ]
        for oid, (kind, data) in self.session.read_objects(
            self.ds, self.index, list(dict.fromkeys(need + extra))
        ).items():
            self.fetched[oid] = (kind, data)

    def _read(self, oid: str) -> tuple[str, bytes]:
        if oid in self.fetched:
            return self.fetched[oid]
        return self.store.read_object(oid)

    def run(self, wants: list[str]) -> None:
        level = list(wants)
        while level:
            self._get(level)
            nxt: list[str] = []
            for oid in level:
                if oid in self.seen:
                    continue
                self.seen.add(oid)
                kind, data = self._read(oid)
                if kind == "commit" and self._known(oid):
                    continue
                if kind == "commit":
                    tree, parents = peercheck.commit_links(data, f"commit {oid}")
                    nxt += [tree, *parents]
                elif kind == "tree":
                    nxt += self._tree(oid, data)
                else:
                    raise VerifyError(f"{oid} is a {kind}, not a commit or tree")
            level = nxt

    def _tree(self, oid: str, data: bytes) -> list[str]:
        subtrees = []
        for kind, _name, child in peercheck.parse_tree(data, f"tree {oid}"):
            if kind == "tree":
                subtrees.append(child)
            elif child not in self.sizes:
                entry = self.index.objects.get(child)
                if self.store.has_object(child):
                    continue
                if entry is None:
                    raise VerifyError(f"{self.session.name}: {child} is not in the remote index")
                self.sizes[child] = int(entry[4])
                self.blobs.append(child)
        return subtrees


def local_heads(store: Any) -> list[str]:
    """Every commit a local ref names (what a fetch may assume is complete here)."""
    refs = getattr(store, "refs", None)
    names = refs.names() if refs is not None and hasattr(refs, "names") else ["refs/heads/main"]
    return list(dict.fromkeys(h for h in (store.head(n) for n in names) if h))
