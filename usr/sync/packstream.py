"""Moving objects and chunks between two stores over frames, in an order that resumes.

Both directions use the same rules, so a cut transfer leaves a store a rerun can finish:

* presence is decided per object and per chunk, never "has X so has all below X";
* a manifest blob is written only once every chunk it names is stored (a push sends the
  chunks first; a fetch holds the manifests back until their chunks have landed), so a
  stored manifest always means a complete large file;
* every object is checked against its git id and every chunk against its blake3 *before*
  anything is written, so a hostile or broken peer cannot plant bytes under a false name;
* chunks land in chunk packs and objects in git packs (:mod:`usr.store.gitpack`), both
  sealed at size thresholds and again when the stream ends or breaks, so whatever arrived
  is kept and the next negotiation skips it; objects pending in an unsealed git pack count
  as present for the rest of the receive only (a killed receiver loses them).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from usr import faults
from usr.errors import (
    InputError,
    NotFoundError,
    TransportError,
    UsrError,
    VerifyError,
)
from usr.layout import check_relpath
from usr.locks import events_lock
from usr.store import revlist
from usr.store.checkout import checkout
from usr.store.chunks import chunk_id
from usr.store.objects import Manifest, git_object_id, inline_limit, is_manifest_bytes
from usr.sync import peercheck
from usr.sync import protocol as p
from usr.sync.history import require_fast_forward

#: Received chunks are sealed into a pack after the first SEAL_BYTES, then after twice as
#: many each time up to SEAL_MAX_BYTES, so even a receiver killed outright (SIGKILL, not
#: just a dropped connection, which seals what it has) keeps most of what it was sent.
#: Each seal costs two fsyncs and a journal commit: sealing every 4 MiB, a 256 MiB push made
#: 64 packs and the receiver waited on the disk ~1,000 times; growing to 32 MiB, ~250.
SEAL_BYTES = 4 * 1024 * 1024
SEAL_MAX_BYTES = 32 * 1024 * 1024

_TREE_MODES = {b"40000": "tree", b"100644": "blob", b"100755": "blob"}

FAULT_SENT_OBJECT = faults.register(
    "packstream.sent-object", "sender: an object frame queued (earlier batches written)"
)
FAULT_SENT_CHUNK = faults.register(
    "packstream.sent-chunk", "sender: a chunk frame queued (earlier batches written)"
)
FAULT_RECEIVED_OBJECT = faults.register(
    "packstream.received-object", "receiver: an object verified and written (or held back)"
)
FAULT_RECEIVED_CHUNK = faults.register(
    "packstream.received-chunk", "receiver: a chunk verified and added to an unsealed pack"
)
FAULT_MANIFESTS_HELD = faults.register(
    "packstream.manifests-held", "fetch: every chunk stored; held-back manifests not written"
)


@dataclass
class Received:
    """What a receive loop wrote (objects, chunks, payload bytes) and the chunks it learned
    manifests need."""

    objects: int = 0
    chunks: int = 0
    bytes: int = 0
    manifest_chunks: list[str] = field(default_factory=list)
    held: dict[str, bytes] = field(default_factory=dict)
    #: Types of the commits, trees and held manifests in the stream (not of every blob:
    #: only these can be named by a link) and the links the commits and trees make
    #: (checked once the stream ends; a child not typed here is looked up in the store).
    types: dict[str, str] = field(default_factory=dict)
    links: list[tuple[str, str, str]] = field(default_factory=list)

    def add(self, more: Received) -> None:
        """Fold in the receive of a later batch: counts, needed chunks, held manifests."""
        self.objects += more.objects
        self.bytes += more.bytes
        self.manifest_chunks.extend(more.manifest_chunks)
        self.held.update(more.held)


def has_object(store: Any, oid: str) -> bool:
    return bool(store.has_object(oid))


def parse_tree(data: bytes, where: str = "tree") -> list[tuple[str, str, str]]:
    """``(kind, name, oid)`` of each entry of raw git tree bytes, refusing what usr never
    writes: escaping or runtime names, symlinks, submodules, duplicates."""
    out: list[tuple[str, str, str]] = []
    seen: set[bytes] = set()
    i = 0
    while i < len(data):
        sp = data.find(b" ", i)
        nul = data.find(b"\x00", sp + 1)
        if sp < 0 or nul < 0 or nul + 21 > len(data):
            raise VerifyError(f"{where}: malformed tree object")
        mode, name = data[i:sp], data[sp + 1 : nul]
        kind = _TREE_MODES.get(mode)
        if kind is None:
            raise VerifyError(f"{where}: entry {name[:60]!r} has refused mode {mode.decode()}")
        if name in seen:
            raise VerifyError(f"{where}: duplicate entry {name[:60]!r}")
        seen.add(name)
        try:
            text = name.decode("utf-8")
            if "/" in text:
                raise InputError("slash in name")
            check_relpath(text)
        except (UnicodeDecodeError, InputError):
            raise VerifyError(f"{where}: refused entry name {name[:60]!r}") from None
        out.append((kind, text, data[nul + 1 : nul + 21].hex()))
        i = nul + 21
    return out


def _walk(store: Any, oid: str, types: dict[str, str], order: list[str]) -> None:
    """Post-order walk (children first) of a tree want, typing what it meets (listed
    whole: the requester skips what it has)."""
    if oid in types:
        return
    types[oid] = "tree"
    _, data = store.read_object(oid)
    for child_kind, _name, child in parse_tree(data, f"tree {oid}"):
        if child_kind == "tree":
            _walk(store, child, types, order)
        elif child not in types:
            types[child] = "blob"
            order.append(child)
    order.append(oid)


def list_objects(store: Any, wants: list[str], haves: list[str], blobs: bool = True) -> dict:
    """The ``objects`` reply: ids the requester lacks (in writable order) with their types.

    ``wants`` are commits (negotiated against ``haves`` top-down, see
    :func:`usr.store.revlist.missing_typed`: equal subtrees are skipped unread) or trees
    (a working tree for a diff: listed whole; the requester skips what it has). Types come
    from the walk over commits and trees, never from reading blobs. With ``blobs`` false
    only commits and trees are listed, plus the size of every blob they name (``sizes``):
    enough to compare trees without moving file contents.
    """
    order: list[str] = []
    kinds: list[str] = []  # beside ``order``: no map of every id for a bootstrap
    commit_wants, tree_wants = [], []
    for oid in wants:
        kind, _ = store.read_object(oid)
        if kind not in ("commit", "tree"):
            raise InputError(f"cannot fetch {oid}: a {kind}, not a commit or tree")
        (commit_wants if kind == "commit" else tree_wants).append(oid)
    if commit_wants:
        for oid, kind in revlist.missing_typed(store.repo, commit_wants, haves):
            order.append(oid)
            kinds.append(kind)
    if tree_wants:
        types = dict(zip(order, kinds, strict=True))
        walked: list[str] = []
        for oid in tree_wants:
            _walk(store, oid, types, walked)
        order.extend(walked)
        kinds.extend(types[o] for o in walked)
    sizes: dict[str, int] = {}
    if not blobs:
        sizes = _tree_blob_sizes(
            store, [o for o, k in zip(order, kinds, strict=True) if k == "tree"]
        )
        kept = [(o, k) for o, k in zip(order, kinds, strict=True) if k != "blob"]
        order, kinds = [o for o, _ in kept], [k for _, k in kept]
    return {"oids": order, "types": kinds, "sizes": sizes}


def _tree_blob_sizes(store: Any, trees: list[str]) -> dict[str, int]:
    """The whole-file size of every blob the ``trees`` name, by blob id."""
    sizes: dict[str, int] = {}
    size_of = _BlobSizes(store)
    for oid in trees:
        _, data = read_for_send(store, oid)
        for kind, _name, child in parse_tree(data):
            if kind == "blob" and child not in sizes:
                sizes[child] = size_of(child)
    return sizes


class _BlobSizes:
    """Whole-file sizes of blobs for a tree listing: from the stat cache once more than
    :attr:`CACHE_AFTER` are asked for (a working file's size is its entry's), else from
    the store, which reads every blob that might be a manifest (20,000 small files: 20,000
    whole reads for a bootstrap pull's listing, besides the reads that send them)."""

    CACHE_AFTER = 256

    def __init__(self, store: Any) -> None:
        self.store = store
        self.asked = 0
        self.cached: dict[str, int] | None = None

    def __call__(self, oid: str) -> int:
        self.asked += 1
        if self.cached is None and self.asked > self.CACHE_AFTER:
            self.cached = {}
            with suppress(OSError, AttributeError):
                for key, entry in self.store.stat_cache().entries.values():
                    self.cached.setdefault(entry, key[0])
        if self.cached is not None and oid in self.cached:
            return self.cached[oid]
        return int(self.store.entry_size(oid))


def read_for_send(store: Any, oid: str) -> tuple[str, bytes]:
    """``(type name, bytes)`` of an object to send, read once and verified once: libgit2
    checks every object it reads against its id (strict hash verification, its default;
    ``tests/test_sync_push_reads.py`` holds it), where ``Store.read_object`` hashed the
    bytes a second time in Python. The receiver verifies them again before writing."""
    return store.read_stored(oid)


@dataclass
class PushPlan:
    """What a push offers: each object's size (insertion order = sending order) and the
    chunks of the manifests among them."""

    sizes: dict[str, int] = field(default_factory=dict)
    chunks_of: dict[str, list[str]] = field(default_factory=dict)
    chunk_sizes: dict[str, int] = field(default_factory=dict)
    #: Ids of the commits and trees among the objects (the rest are blobs): a few per
    #: directory, where a set of the blobs held one entry per file.
    others: set[str] = field(default_factory=set)

    def is_blob(self, oid: str) -> bool:
        return oid not in self.others

    def trees_first(self, oids: Iterable[str]) -> list[str]:
        """``oids`` with commits and trees first, then blobs, each in the given order: the
        receiver knows the pushed tree before any file content, to stage the files as
        they land (:mod:`usr.store.streamstage`)."""
        oids = list(oids)
        return [o for o in oids if o in self.others] + [o for o in oids if o not in self.others]

    def cids(self) -> list[str]:
        """Every chunk the manifests name, once each, in manifest order."""
        return list(self.chunk_sizes)

    def total(self, oids: Iterable[str], cids: Iterable[str]) -> int:
        """Payload bytes of these objects and chunks (the progress meter's total)."""
        return sum(self.sizes[o] for o in oids) + sum(self.chunk_sizes[c] for c in cids)


def plan_push(
    store: Any,
    oids: Iterable[str],
    file_sizes: Mapping[str, int] | None,
    limit: int | None = None,
) -> PushPlan:
    """Size each object and find the manifests' chunks, reading only what may be a manifest.

    A blob that is the entry of a working file of at most ``limit`` bytes (the inline
    limit; ``file_sizes``: whole-file sizes by blob id, e.g. the stat cache's) holds that
    file's bytes, so its size is the file's and nothing is read: for small files a header
    read costs about as much as the whole read that sends them. Other objects are sized
    from their headers, and every other blob is read to look for a manifest. If one taken
    for plain bytes is a manifest after all (a small file that began with the manifest
    magic), the sender finds out when it reads the blob to send it and sends every chunk it
    names first (see ``RemoteSession.push``)."""
    known = file_sizes or {}
    limit = inline_limit() if limit is None else limit
    odb = store.repo.odb
    plan = PushPlan()
    for oid in oids:
        size = known.get(oid)
        if size is not None and size <= limit:
            plan.sizes[oid] = size
            continue
        try:
            obj_type, plan.sizes[oid] = odb.read_header(oid)
        except KeyError:
            raise NotFoundError(f"object {oid} is not in the store") from None
        if int(obj_type) != p.OBJECT_TYPES["blob"]:
            plan.others.add(oid)
            continue
        _, data = read_for_send(store, oid)
        entries = manifest_entries(data, f"blob {oid}")
        if entries:
            plan.chunks_of[oid] = [cid for cid, _ in entries]
            plan.chunk_sizes.update(entries)
    return plan


def send_objects(store: Any, fio: p.FrameIO, oids: Iterable[str]) -> int:
    """Queue ``oids`` as ``O`` frames (flushed in 1 MiB batches: no round trip per object)."""
    n = 0
    for oid in oids:
        kind, data = read_for_send(store, oid)
        fio.send_object(kind, oid, data)
        n += 1
        faults.point(FAULT_SENT_OBJECT)
    return n


def send_chunks(store: Any, fio: p.FrameIO, cids: Iterable[str]) -> int:
    n = 0
    for cid in cids:
        fio.send_chunk(cid, store.chunks.get(cid))
        n += 1
        faults.point(FAULT_SENT_CHUNK)
    return n


def manifest_chunks(data: bytes, where: str) -> list[str]:
    """Chunk ids a blob needs: none for an inline blob, the manifest's list otherwise."""
    return [cid for cid, _length in manifest_entries(data, where)]


def manifest_entries(data: bytes, where: str) -> list[tuple[str, int]]:
    """``(chunk id, length)`` of each chunk a blob needs (none for an inline blob)."""
    if not is_manifest_bytes(data):
        return []
    return list(Manifest.decode(data, where).chunks)


def receive(
    store: Any,
    fio: p.FrameIO,
    peer: str,
    end: str = "end",
    hold_manifests: bool = False,
    meter: Any = None,
    asked: set[str] | None = None,
    chunk_lengths: dict[str, int] | None = None,
    stage: Any = None,
    manifests_first: bool = False,
) -> Received:
    """Write ``O``/``K`` frames into ``store`` as they arrive, until the ``end`` message.

    Each object and chunk is verified against its id before it is written. On the first
    mismatch the rest of the stream is still read (and dropped), so the session stays in
    step, and then :class:`VerifyError` is raised: nothing unverified is ever stored. A
    broken stream (truncated, oversized, unparseable) raises :class:`TransportError` at once;
    what landed before it stays, and a rerun skips it.

    With ``hold_manifests`` (a fetch, whose chunks come in a later request) manifest blobs
    are verified and kept in ``Received.held`` instead of written; see :func:`write_held`.
    A fetch also passes the object ids it ``asked`` for and the ``chunk_lengths`` its
    manifests claim: anything else, or a chunk of another length, is refused.

    ``stage`` (a :class:`usr.store.streamstage.StreamStager`) is shown each object and
    chunk once it is verified and written, to stage the working files while the stream
    lasts.

    ``manifests_first`` (a push that sends each manifest before its chunks): manifests are
    held like a fetch's, and written when the stream ends, once the chunks are sealed and
    each has the length its manifest claims.
    """
    got = Received()
    hold = hold_manifests or manifests_first
    failure: UsrError | None = None
    # Chunks are sealed before objects (the inner block closes first): a manifest in a
    # sealed object pack never names a chunk that is not durable.
    with store.object_writer() as objects, store.chunks.writer() as packer:
        sealing = _Sealing(packer)
        while True:
            kind, payload = fio.read_frame()
            if kind == p.JSON:
                p.stream_end(payload, end, peer, "mid-stream")
                break
            if meter is not None:
                meter.update(fio.bytes_in)
            if failure is not None:
                continue
            try:
                if kind == p.OBJECT:
                    type_name, oid, data = p.decode_object(payload, peer)
                    if asked is not None and oid not in asked:
                        raise VerifyError(f"{peer} sent object {oid}, which was not asked for")
                    _land_object(store, objects, packer, type_name, oid, data, got, hold)
                    if stage is not None:
                        _show(stage, type_name, oid, data)
                    faults.point(FAULT_RECEIVED_OBJECT)
                else:
                    _land_chunk(payload, peer, chunk_lengths, stage, sealing, got)
                    faults.point(FAULT_RECEIVED_CHUNK)
            except TransportError:
                raise
            except UsrError as exc:
                failure = exc
        if manifests_first and failure is None:
            packer.close()  # the chunks are durable before any manifest naming them
            failure = _land_held(store, objects, got)
    if failure is None:
        try:
            peercheck.check_links(store, got.types, got.links)
        except UsrError as exc:
            failure = exc
    if failure is not None:
        raise failure
    return got


@dataclass
class _Sealing:
    """Seals received chunks into a pack after SEAL_BYTES, then twice as many each time
    up to SEAL_MAX_BYTES."""

    packer: Any
    unsealed: int = 0
    at: int = SEAL_BYTES

    def added(self, n: int) -> None:
        self.unsealed += n
        if self.unsealed >= self.at:
            self.at = min(2 * self.at, SEAL_MAX_BYTES)
            self.packer.close()
            self.unsealed = 0


def _land_chunk(
    payload: bytes,
    peer: str,
    lengths: dict[str, int] | None,
    stage: Any,
    sealing: _Sealing,
    got: Received,
) -> None:
    """Verify one ``K`` frame, show it to the staging, and add it to the open pack."""
    cid, data = p.decode_chunk(payload, peer)
    if chunk_id(data) != cid:
        raise VerifyError(f"chunk {cid} from {peer}: bytes hash differently")
    _check_chunk(cid, len(data), lengths, peer)
    if stage is not None:
        stage.on_chunk(cid, data)
    if sealing.packer.add(cid, data):
        got.chunks += 1
        got.bytes += len(data)
        sealing.added(len(data))


def _land_held(store: Any, objects: Any, got: Received) -> UsrError | None:
    """Write the manifests a manifests-first push held back, each after checking its
    chunks; the first that fails is returned (nothing more is written)."""
    for oid, data in got.held.items():
        where = f"blob {oid}"
        try:
            _check_manifest_chunks(store, manifest_entries(data, where), where)
        except UsrError as exc:
            return exc
        if objects.add("blob", oid, data):
            got.objects += 1
            got.bytes += len(data)
    got.held = {}
    return None


def _show(stage: Any, type_name: str, oid: str, data: bytes) -> None:
    """Hand a verified, written object to the streamed staging."""
    if type_name == "blob":
        stage.on_blob(oid, data)
    elif type_name == "tree":
        stage.on_tree(oid, data)
    else:
        stage.on_commit(peercheck.commit_links(data, f"commit {oid}")[0])


def _check_chunk(cid: str, length: int, expected: dict[str, int] | None, peer: str) -> None:
    """A fetched chunk must be one a manifest asked for, of the length it claims."""
    if expected is None:
        return
    if cid not in expected:
        raise VerifyError(f"{peer} sent chunk {cid}, which was not asked for")
    if expected[cid] != length:
        raise VerifyError(
            f"chunk {cid} from {peer}: {length} bytes, its manifest claims {expected[cid]}"
        )


def _check_manifest_chunks(store: Any, entries: list[tuple[str, int]], where: str) -> None:
    """Before a manifest is stored: every chunk it names is stored, with the length it
    claims (a manifest that lies about a length would only fail at checkout)."""
    missing = 0
    for cid, length in entries:
        stored = store.chunks.length(cid)
        if stored is None:
            missing += 1
        elif stored != length:
            raise VerifyError(f"{where}: claims {length} bytes for chunk {cid}, which has {stored}")
    if missing:
        raise VerifyError(f"{where}: {missing} of its chunks are missing")


def _land_object(
    store: Any,
    objects: Any,
    packer: Any,
    type_name: str,
    oid: str,
    data: bytes,
    got: Received,
    hold_manifests: bool,
) -> None:
    if git_object_id(type_name, data) != oid:
        raise VerifyError(f"object {oid}: bytes hash to a different id; refused")
    where = f"{type_name} {oid}"
    if type_name != "blob":
        got.types[oid] = type_name
    if type_name == "tree":
        for kind, _name, child in parse_tree(data, where):
            if kind == "tree":
                got.links.append((where, child, "tree"))
    elif type_name == "commit":
        tree, _parents = peercheck.commit_links(data, where)
        got.links.append((where, tree, "tree"))
    elif type_name == "blob":
        entries = manifest_entries(data, where)
        cids = [cid for cid, _ in entries]
        if cids:
            got.manifest_chunks.extend(cids)
            if hold_manifests:
                got.held[oid] = data
                got.types[oid] = type_name  # not in the store: typed here for the links
                return
            packer.close()  # the chunks before this manifest are durable before it is
            _check_manifest_chunks(store, entries, where)
    else:
        raise VerifyError(f"{where}: object type not used by usr")
    if objects.add(type_name, oid, data):  # checked against oid above; False if present
        got.objects += 1
        got.bytes += len(data)


def write_held(store: Any, held: dict[str, bytes]) -> int:
    """Write manifests held back by a fetch, once their chunks are stored; refuses any whose
    chunks are still missing (so a stored manifest always means a complete file)."""
    faults.point(FAULT_MANIFESTS_HELD)
    n = 0
    with store.object_writer() as objects:
        for oid, data in held.items():
            _check_manifest_chunks(store, manifest_entries(data, f"blob {oid}"), f"blob {oid}")
            if objects.add("blob", oid, data):  # each was checked against oid on arrival
                n += 1
    return n


def update_and_checkout(
    store: Any, new: str, old: str | None, validate: bool = True, staged: Any = None
) -> str:
    """The one locked step of a push: HEAD must still be ``old`` and ``new`` must contain
    it (fast-forward only); then ``new`` is checked out (staged, verified, promoted) and
    ``refs/heads/main`` moves with it. Unrecorded changes in the working directory refuse
    it (ConflictError), so nothing written there since the record is ever overwritten.
    Before any of it the state passes the gate (:mod:`usr.sync.gate`) unless the client
    named ``--no-validate``. ``staged``: the files the receive streamed into the staging
    dir (:class:`usr.store.checkout.Staged`), which the checkout takes without rereading."""
    if not store.has_object(new):
        raise VerifyError(f"commit {new} did not arrive; refusing to move the ref")
    _require_complete(store, new)
    if validate:
        from usr.sync.gate import check_state

        check_state(store, new, old, f"the push of state {new[:12]}")
    # The events lock too (after the dataset lock, the order every writer takes them): a
    # batch job's line appended while files are staged would otherwise be overwritten when
    # the pushed .events.log is promoted. With it held the line waits and lands after.
    what = "push: update ref and check out"
    with store.lock(what), events_lock(store.path, what=what):
        hint = "someone else pushed or recorded; rerun to see the new state"
        require_fast_forward(store, store.head(), old, new, hint)
        checkout(store, new, expect_head=old, staged=staged)  # Store.checkout, plus staged
    return store.head()


def _require_complete(store: Any, new: str) -> None:
    """Every file of ``new``'s tree is stored: checked for the blobs that are not at the
    same path in the stored head (complete, as it was checked out), found top-down, so a
    one-file push checks one file, not every file of the state."""
    head = store.head()
    bases = [str(store.repo[head].tree_id)] if head and store.has_object(head) else []
    try:
        listed = revlist.tree_changes(store.repo, str(store.repo[new].tree_id), bases)
    except NotFoundError as exc:
        raise VerifyError(f"commit {new} is incomplete: {exc} (did not arrive)") from None
    for oid, kind in listed:
        if kind == "blob" and not store.has_object(oid):
            raise VerifyError(f"commit {new} is incomplete: file {oid} did not arrive")


def log_entries(store: Any, head: str | None, limit: int | None) -> list[dict]:
    """``usr log``-style dicts of the history from ``head``, newest first."""
    if head is None:
        return []
    return [e.as_dict() for e in store.log(head, limit)]
