"""The push side of a session: ``have`` in batches, then one pipelined stream and ``update``.

A push plans what it offers (:mod:`usr.sync.pushplan`), negotiates it in batches of at
most :data:`usr.sync.protocol.MAX_IDS` ids, streams what the remote lacks (commits and
trees first, each manifest with the chunks it names) and queues the ref update behind the
stream. See docs/protocol.md, "Push".
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from itertools import zip_longest
from typing import Any

from usr import faults
from usr.errors import TransportError, UsrError
from usr.layout import RECORDS_FILE, validate_dataset_id
from usr.store import revlist
from usr.store.objects import is_manifest_bytes
from usr.sync import packstream, pushplan
from usr.sync import protocol as p
from usr.sync.conversation import Conversation, TransferStats
from usr.sync.trees import top_blob

FAULT_PUSH_NEGOTIATED = faults.register(
    "push.negotiated", "client: the remote said what it lacks; nothing streamed yet"
)
FAULT_PUSH_MID_STREAM = faults.register(
    "push.mid-stream", "client: some chunks of a push queued (earlier batches sent)"
)
FAULT_PUSH_SENT = faults.register(
    "push.sent", "client: the whole stream and the ref update sent; no reply read"
)


class Pushing(Conversation):
    """The push requests of :class:`usr.sync.session.Session`."""

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
        """Send what the remote lacks of commit ``new``, then move its head ``old`` -> ``new``.

        Negotiates once (which objects and chunks the remote lacks), then streams them in one
        pipelined burst (chunks before the manifests naming them); the remote verifies each
        by hash as it lands. Then, under the remote dataset lock, the remote compares its
        head with ``old`` (``ConflictError`` "remote moved" if it differs), checks ``new`` out
        into its working directory (staged, verified, promoted) and moves
        ``refs/heads/main`` in the same locked step. ``create`` makes the dataset directory
        on the remote (bootstrap); by default it is ``old is None``. ``file_sizes`` (whole-
        file sizes by blob id, e.g. from the stat cache) lets the blob of a small file go
        without a first reading to size it or look for a manifest (see
        :func:`usr.sync.pushplan.plan_push`): each such object is read once.
        """
        if create is None:
            create = old is None
        start = time.monotonic()
        ds = validate_dataset_id(ds)
        p.check_oid(new, "caller")
        in0, out0 = self.fio.bytes_in, self.fio.bytes_out
        haves = [old] if old and packstream.has_object(store, old) else []
        listed = revlist.missing_typed(store.repo, [new], haves)
        # The table first among the blobs: the remote checks its staged copy while the
        # others stream (docs/protocol.md, "Push").
        table = top_blob(store, new, RECORDS_FILE)
        plan = pushplan.plan_push(store, listed.oids(), file_sizes, first=table)
        # The sizes (the caller's only reference: one per file of a bootstrap) and the
        # walk's list are in the plan now.
        del file_sizes, listed
        chosen, send_cids = self._negotiate(ds, plan, create)
        faults.point(FAULT_PUSH_NEGOTIATED)
        stats = TransferStats()
        total = plan.total(chosen, send_cids)
        with self._exchange(), self._meter("push", self.fio.bytes_out, total) as meter:
            first = {p.MANIFEST_FIRST: True} if self.manifest_first else {}
            if not validate:
                first["validate"] = False  # the remote need not start its check early
            self.fio.send_message("pack", ds=ds, create=create, **first)
            order = (plan.oid(i) for i in plan.sending_order(chosen))
            for oid, kind, data in packstream.read_many_for_send(store, order):
                self._send_blob(store, oid, kind, data, plan, send_cids, stats, meter)
            for cid in sorted(send_cids):  # chunks of manifests the remote already has
                self._send_chunk(store, cid, stats, meter)
            self.fio.send_message("end")
            if before_update is not None:
                self.fio.flush()  # the remote stages and checks what it has meanwhile
                try:
                    before_update()
                except BaseException:
                    if create:
                        self._abandon(ds)
                    raise
            # Pipelined: the ref update is queued behind the stream, no extra round trip.
            extra: dict[str, Any] = {} if validate else {"validate": False}
            self.fio.send_message("update", ds=ds, new=new, old=old, **extra)
            self.fio.flush()
            faults.point(FAULT_PUSH_SENT)
            self.fio.read_message("received")
            self.fio.read_message("updated")
        stats.wire_bytes_in = self.fio.bytes_in - in0
        stats.wire_bytes_out = self.fio.bytes_out - out0
        stats.seconds = time.monotonic() - start
        return stats

    def _abandon(self, ds: str) -> None:
        """Ask the remote to remove the dataset this push's bootstrap created (the caller
        refused to ask for the update; docs/protocol.md, ``abandon``). Best effort: a pack
        the remote refused, a lost connection or an older server leave it in place, with
        no history, as a cut bootstrap does."""
        with contextlib.suppress(UsrError, OSError):
            self.fio.read_message("received")
            self.fio.send_message("abandon", ds=ds)
            self.fio.flush()
            self.fio.read_message("abandoned")

    def _negotiate(
        self, ds: str, plan: pushplan.PushPlan, create: bool
    ) -> tuple[bytearray, set[str]]:
        """``have`` in batches of at most :func:`usr.sync.protocol.batch_size` object ids and
        as many chunk ids (at least one request: it creates the remote dataset directory):
        which objects the remote lacks, one byte per object of the plan (nonzero: send it),
        and the chunks it lacks. A flag per object, not a list of ids: a bootstrap sends
        every file."""
        chosen = bytearray(len(plan))
        send_cids: set[str] = set()
        at = 0
        for oids, cids in _id_batches(plan):
            r = self._request("have", "have", ds=ds, oids=oids, cids=cids, create=create)
            lacks = {p.check_oid(o, self.name) for o in p.require(r, "oids", list, self.name)}
            lacks_c = {p.check_cid(c, self.name) for c in p.require(r, "cids", list, self.name)}
            if not lacks.issubset(oids) or not lacks_c.issubset(cids):
                # Only what this push offered may leave: not other states in the local store.
                raise TransportError(
                    f"{self.name} asked for objects or chunks this push did not offer"
                )
            for j, oid in enumerate(oids):
                if oid in lacks:
                    chosen[at + j] = 1
            at += len(oids)
            send_cids.update(c for c in cids if c in lacks_c)
        return chosen, send_cids

    def _send_blob(
        self,
        store: Any,
        oid: str,
        kind: str,
        data: bytes,
        plan: pushplan.PushPlan,
        send_cids: set[str],
        stats: TransferStats,
        meter: Any,
    ) -> None:
        """Queue one object of a push with the chunks of its manifest that the remote
        lacks: after them (the receiver writes a manifest once its chunks are stored), or,
        with manifests first, before them (the receiver holds it until they are sealed and
        writes the working file as they land)."""
        chunks = plan.chunks_of.get(oid)
        if chunks is None and kind == "blob" and is_manifest_bytes(data):
            # Taken for a plain blob by its size: offer every chunk it names (the
            # receiver keeps what it lacks), so the file is still complete.
            chunks = packstream.manifest_chunks(data, f"blob {oid}")
            send_cids.update(chunks)
        if self.manifest_first:
            self._send_object(kind, oid, data, stats, meter)
        for cid in chunks or ():
            if cid in send_cids:
                self._send_chunk(store, cid, stats, meter)
                send_cids.discard(cid)
                faults.point(FAULT_PUSH_MID_STREAM)
        if not self.manifest_first:
            self._send_object(kind, oid, data, stats, meter)

    def _send_object(
        self, kind: str, oid: str, data: bytes, stats: TransferStats, meter: Any
    ) -> None:
        self.fio.send_object(kind, oid, data)
        stats.objects += 1
        stats.payload_bytes += len(data)
        meter.update(self.fio.bytes_out)

    def _send_chunk(self, store: Any, cid: str, stats: TransferStats, meter: Any) -> None:
        data = store.chunks.get(cid)
        self.fio.send_chunk(cid, data)
        stats.chunks += 1
        stats.payload_bytes += len(data)
        meter.update(self.fio.bytes_out)


def _id_batches(plan: pushplan.PushPlan) -> Iterator[tuple[list[str], list[str]]]:
    """The plan's object and chunk ids side by side in batches; at least one (empty) pair."""
    pairs = zip_longest(p.batches(plan.oids()), p.batches(plan.chunk_sizes), fillvalue=[])
    yield next(pairs, ([], []))
    yield from pairs
