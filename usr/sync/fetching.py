"""The fetch side of a session: ``want``, then ``get`` in batches, objects then chunks.

A fetch asks the server what it lacks of some commits or trees (``want``: the listing, in
batches of at most :data:`usr.sync.protocol.MAX_IDS` ids), keeps only the ids the local
store lacks (20 raw bytes each), then asks for them in batches (``get``); manifests are
held back until the chunks they name have landed. See docs/protocol.md, "Fetch".
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from usr.errors import TransportError
from usr.layout import validate_dataset_id
from usr.sync import packstream, peercheck
from usr.sync import protocol as p
from usr.sync.conversation import Conversation, TransferStats


class Fetching(Conversation):
    """The fetch requests of :class:`usr.sync.session.Session`."""

    def fetch(
        self,
        ds: str,
        store: Any,
        wants: list[str],
        haves: list[str] | None = None,
        blobs: bool = True,
        stage: Any = None,
    ) -> TransferStats:
        """Bring commits (or trees) ``wants`` and everything below them into ``store``.

        Only objects the local store lacks move (by git id), then only chunks it lacks (by
        blake3). Objects are verified and written as they arrive; manifests are written
        only after their chunks, so a cut fetch resumes where it stopped. ``haves`` are
        local commits the server may assume the client has (default: every local ref).
        Refs and working files are not touched; ``stage`` (a
        :class:`usr.store.streamstage.StreamStager`) may stage files for the checkout.
        """
        start = time.monotonic()
        ds = validate_dataset_id(ds)
        wants = [p.check_oid(w, "caller") for w in wants]
        if not blobs and _complete_locally(store, wants):
            # Nothing to ask for (the no-op case): no round trip at all.
            return TransferStats(seconds=time.monotonic() - start)
        if haves is None:
            haves = _local_haves(store)
        haves = [h for h in haves if h and packstream.has_object(store, h)]
        in0, out0 = self.fio.bytes_in, self.fio.bytes_out
        need = bytearray()  # the raw ids this store lacks, 20 bytes each
        stats = TransferStats()
        for part in self._listing(ds, wants, haves, blobs):
            listed = [p.check_oid(o, self.name) for o in p.require(part, "oids", list, self.name)]
            for oid in packstream.lacking(store, listed):
                need += bytes.fromhex(oid)
            for oid, size in peercheck.check_sizes(part.get("sizes"), self.name).items():
                stats.sizes[bytes.fromhex(oid)] = size
        if need:
            self._get(ds, store, _hex_ids(need), stats, stage)
        stats.wire_bytes_in = self.fio.bytes_in - in0
        stats.wire_bytes_out = self.fio.bytes_out - out0
        stats.seconds = time.monotonic() - start
        return stats

    def _listing(
        self, ds: str, wants: list[str], haves: list[str], blobs: bool
    ) -> Iterator[dict[str, Any]]:
        """The ``objects`` messages answering one ``want``, read one at a time: each names
        at most :func:`usr.sync.protocol.batch_size` ids and sizes (a peer sending more is
        refused), until one says ``more: false``. A message without ``more`` is a whole
        listing (a server from before batched listings)."""
        batch = p.batch_size()
        with self._exchange():
            self.fio.send_message("want", ds=ds, wants=wants, haves=haves, blobs=blobs, batch=batch)
            self.fio.flush()
            while True:
                part = self.fio.read_message("objects")
                more = _check_part(part, batch, self.name)
                yield part
                if not more:
                    return

    def _get(
        self, ds: str, store: Any, need: Iterable[str], stats: TransferStats, stage: Any = None
    ) -> None:
        """Fetch the objects ``need`` (at least one), then the chunks their manifests name
        that are missing here, then write the held-back manifests: two round trips per batch
        of :func:`usr.sync.protocol.batch_size` ids, whatever the count."""
        got = self._get_batches(
            ds,
            store,
            need,
            "fetch",
            None,
            # No chunk was asked for yet: any chunk frame is refused.
            lambda batch: {"asked": set(batch), "chunk_lengths": {}, "hold_manifests": True},
            stage,
        )
        stats.objects += got.objects
        stats.payload_bytes += got.bytes
        cids = store.chunks.missing(dict.fromkeys(got.manifest_chunks))
        if cids:
            lengths = {
                cid: n
                for oid, data in got.held.items()
                for cid, n in packstream.manifest_entries(data, f"blob {oid}")
            }
            chunks = self._get_batches(
                ds,
                store,
                cids,
                "fetch chunks",
                sum(lengths.get(c, 0) for c in cids) or None,
                # Each chunk checked against the length its manifest claims.
                lambda batch: {
                    "asked": set(),
                    "chunk_lengths": {c: lengths.get(c, -1) for c in batch},
                },
                stage,
            )
            stats.chunks += chunks.chunks
            stats.payload_bytes += chunks.bytes
        stats.objects += packstream.write_held(store, got.held)

    def _get_batches(
        self,
        ds: str,
        store: Any,
        ids: Iterable[str],
        what: str,
        total: int | None,
        checks: Callable[[list[str]], dict[str, Any]],
        stage: Any,
    ) -> packstream.Received:
        """``get`` the object ids or chunk ids ``ids`` (chunks when ``what`` names them), one
        batch after another, each received with the ``checks`` made for its batch (what was
        asked, the chunk lengths claimed) and folded into one :class:`Received`.

        One object writer takes every batch: its packs grow to their largest size and its
        lookups ask only the packs stored before the fetch. A writer a batch started each
        over at the smallest pack and asked every pack the earlier batches sealed (a
        million files: 16 batches, some 80 packs, each miss trying them all)."""
        chunks = what == "fetch chunks"
        got = packstream.Received()
        with (
            self._exchange(),
            self._meter(what, self.fio.bytes_in, total) as meter,
            store.object_writer(),
        ):
            for batch in p.batches(ids):
                oids, cids = ([], batch) if chunks else (batch, [])
                self.fio.send_message("get", ds=ds, oids=oids, cids=cids)
                self.fio.flush()
                got.add(
                    packstream.receive(
                        store,
                        self.fio,
                        self.name,
                        end="done",
                        meter=meter,
                        stage=stage,
                        **checks(batch),
                    )
                )
        return got

    def fetch_trees(self, ds: str, store: Any, wants: list[str]) -> TransferStats:
        """The commits and trees of ``wants`` and their history (no file contents), plus
        ``sizes`` of the blobs they name: enough for a tree comparison, log and ancestry."""
        return self.fetch(ds, store, wants, blobs=False)

    def fetch_tree(self, ds: str, store: Any, tree: str) -> TransferStats:
        """The trees below one tree id (e.g. from :meth:`working_tree`), no file contents."""
        return self.fetch(ds, store, [tree], haves=[], blobs=False)

    def fetch_blobs(self, ds: str, store: Any, blob_ids: list[str]) -> TransferStats:
        """Particular files' contents by blob id (with their chunks if they are manifests)."""
        stats = TransferStats()
        start = time.monotonic()
        need = [p.check_oid(b, "caller") for b in blob_ids]
        need = packstream.lacking(store, need)
        if need:
            self._get(ds, store, need, stats)
        stats.seconds = time.monotonic() - start
        return stats


def _complete_locally(store: Any, wants: list[str]) -> bool:
    """True when every want and every file its tree names is already here (sizes known).

    Walks the trees with libgit2 directly: listing them validated every path first, three
    times the cost (10,000 files: 0.09 -> 0.03 s of every no-op diff)."""
    repo = store.repo
    seen: set[Any] = set()

    def complete(tree_id: Any) -> bool:
        for entry in repo[tree_id]:
            if entry.type_str != "tree":
                if not repo.odb.exists(entry.id):
                    return False
            elif entry.id not in seen:
                seen.add(entry.id)
                if not repo.odb.exists(entry.id) or not complete(entry.id):
                    return False
        return True

    for want in wants:
        if not packstream.has_object(store, want):
            return False
        if not complete(store.tree_of(want)):
            return False
    return True


def _local_haves(store: Any) -> list[str]:
    refs = getattr(store, "refs", None)
    names = refs.names() if refs is not None and hasattr(refs, "names") else ["refs/heads/main"]
    haves = []
    for name in names:
        oid = store.head(name)
        if oid:
            haves.append(oid)
    return list(dict.fromkeys(haves))


def _hex_ids(raw: bytearray) -> Iterator[str]:
    """The hex ids of packed raw 20-byte ids, made one at a time."""
    return (raw[i : i + 20].hex() for i in range(0, len(raw), 20))


def _check_part(part: dict[str, Any], batch: int, peer: str) -> bool | None:
    """``more`` of one ``objects`` message: a bool, or None for a whole listing (a server
    from before batched listings). A piece of a listing naming more than ``batch`` ids or
    sizes is refused."""
    more = part.get("more")
    if more is None:
        return None
    if not isinstance(more, bool):
        raise TransportError(f"bad objects reply from {peer}: more is {str(more)[:20]!r}")
    if len(part.get("oids") or ()) > batch or len(part.get("sizes") or ()) > batch:
        raise TransportError(f"bad objects reply from {peer}: more than {batch} ids in a piece")
    return more
