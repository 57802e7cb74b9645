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

This module holds the stream itself (the sender's frames, the receiver's loop). What a
fetch is told it lacks is :mod:`usr.sync.listing`; what a push offers is
:mod:`usr.sync.pushplan`; the locked step that moves a pushed ref is
:mod:`usr.sync.refupdate`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from usr import faults
from usr.errors import TransportError, UsrError, VerifyError
from usr.store import presence
from usr.store.chunks import chunk_id
from usr.store.objects import Manifest, git_object_id, is_manifest_bytes
from usr.store.packread import PackedObjects
from usr.sync import peercheck
from usr.sync import protocol as p
from usr.sync.peercheck import parse_tree

#: Received chunks are sealed into a pack after the first SEAL_BYTES, then after twice as
#: many each time up to SEAL_MAX_BYTES, so even a receiver killed outright (SIGKILL, not
#: just a dropped connection, which seals what it has) keeps most of what it was sent.
#: Each seal costs two fsyncs and a journal commit: sealing every 4 MiB, a 256 MiB push made
#: 64 packs and the receiver waited on the disk ~1,000 times; growing to 32 MiB, ~250.
SEAL_BYTES = 4 * 1024 * 1024

SEAL_MAX_BYTES = 32 * 1024 * 1024

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
        self.chunks += more.chunks
        self.bytes += more.bytes
        self.manifest_chunks.extend(more.manifest_chunks)
        self.held.update(more.held)


def has_object(store: Any, oid: str) -> bool:
    return bool(store.has_object(oid))


def lacking(store: Any, oids: Iterable[str]) -> list[str]:
    """The ids of ``oids`` (checked ids) that are not stored, in their order, the pack
    lists read once for all of them (usr/store/presence.py): what a push's ``have`` and
    a fetch's listing ask, nearly all misses. Asked outside any object writer."""
    return presence.lacking(store.repo, oids)


def read_for_send(store: Any, oid: str) -> tuple[str, bytes]:
    """``(type name, bytes)`` of an object to send, read once and verified once: libgit2
    checks every object it reads against its id (strict hash verification, its default;
    ``tests/test_sync_push_reads.py`` holds it), where ``Store.read_object`` hashed the
    bytes a second time in Python. The receiver verifies them again before writing."""
    return store.read_stored(oid)


def read_many_for_send(
    store: Any, oids: Iterable[str], packed: PackedObjects | None = None
) -> Iterator[tuple[str, str, bytes]]:
    """``(oid, type name, bytes)`` of each of ``oids`` to send, in their order, each read
    once and hashed once: from the packs directly, checked with one SHA-1 (libgit2's
    collision-detecting one cost 30 of the 38 µs of a 10 KB object), else through libgit2
    (:func:`read_for_send`). ``packed``: the store's pack reader, if one is held (see
    usr/store/packread.py)."""
    if packed is None:
        packed = packed_objects(store)
    return packed.read_many(store, oids)


def packed_objects(store: Any) -> PackedObjects:
    """A reader of ``store``'s packs as they are now."""
    return PackedObjects(store.gitdir / "objects" / "pack")


def send_objects(
    store: Any, fio: p.FrameIO, oids: Iterable[str], packed: PackedObjects | None = None
) -> int:
    """Queue ``oids`` as ``O`` frames (flushed in 1 MiB batches: no round trip per object)."""
    n = 0
    for oid, kind, data in read_many_for_send(store, oids, packed):
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
