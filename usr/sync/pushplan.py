"""What a push offers: each object's size in sending order and its manifests' chunks.

The plan is made once, before negotiation, reading only what may be a manifest; the
session negotiates it in batches (``have``) and streams what the remote lacks.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from usr.errors import NotFoundError
from usr.store.objects import inline_limit
from usr.sync import protocol as p
from usr.sync.packstream import manifest_entries, read_for_send


@dataclass
class PushPlan:
    """What a push offers: each object's raw id and size in sending order, and the chunks
    of the manifests among them.

    Ids and sizes are parallel arrays (20 + 8 bytes an object), where a map of hex id to
    size held ~160 bytes a file for a bootstrap: the plan lives from before negotiation to
    the end of the stream. Objects are named by their position in the plan; ``oid(i)``
    makes the hex id when one is sent."""

    ids: bytearray = field(default_factory=bytearray)
    sizes: array = field(default_factory=lambda: array("Q"))
    chunks_of: dict[str, list[str]] = field(default_factory=dict)
    chunk_sizes: dict[str, int] = field(default_factory=dict)
    #: Ids of the commits and trees among the objects (the rest are blobs): a few per
    #: directory, where a set of the blobs held one entry per file.
    others: set[str] = field(default_factory=set)
    #: Their positions in the plan, in plan order.
    other_at: list[int] = field(default_factory=list)
    #: The position of the blob sent before the others (the records table), or -1.
    first_at: int = -1

    def add(self, oid: str, size: int, other: bool = False, first: bool = False) -> None:
        """Append one object (``other``: a commit or tree, not a blob; ``first``: the blob
        to send before the other blobs)."""
        self.ids += bytes.fromhex(oid)
        self.sizes.append(size)
        if other:
            self.others.add(oid)
            self.other_at.append(len(self.sizes) - 1)
        elif first:
            self.first_at = len(self.sizes) - 1

    def __len__(self) -> int:
        return len(self.sizes)

    def oid(self, i: int) -> str:
        """Hex id of the ``i``-th object."""
        return self.ids[20 * i : 20 * i + 20].hex()

    def oids(self, start: int = 0, stop: int | None = None) -> Iterator[str]:
        """Hex ids of the objects ``start`` to ``stop``, in plan order, one at a time."""
        return map(self.oid, range(start, len(self) if stop is None else stop))

    def is_blob(self, oid: str) -> bool:
        return oid not in self.others

    def trees_first(self, oids: Iterable[str]) -> list[str]:
        """``oids`` with commits and trees first, then blobs, each in the given order: the
        receiver knows the pushed tree before any file content, to stage the files as
        they land (:mod:`usr.store.streamstage`)."""
        oids = list(oids)
        return [o for o in oids if o in self.others] + [o for o in oids if o not in self.others]

    def sending_order(self, chosen: bytearray) -> Iterator[int]:
        """Positions of the objects flagged in ``chosen`` (one byte each, nonzero: send),
        commits and trees first, then the first blob (the records table, whose check the
        receiver starts once it has it whole), then the other blobs in plan order."""
        firsts = set(self.other_at)
        yield from (i for i in self.other_at if chosen[i])
        if self.first_at >= 0:
            firsts.add(self.first_at)
            if chosen[self.first_at]:
                yield self.first_at
        yield from (i for i in range(len(self)) if chosen[i] and i not in firsts)

    def cids(self) -> list[str]:
        """Every chunk the manifests name, once each, in manifest order."""
        return list(self.chunk_sizes)

    def total(self, chosen: bytearray, cids: Iterable[str]) -> int:
        """Payload bytes of the flagged objects and these chunks (the meter's total)."""
        objects = sum(s for s, c in zip(self.sizes, chosen, strict=True) if c)
        return objects + sum(self.chunk_sizes[c] for c in cids)


def plan_push(
    store: Any,
    oids: Iterable[str],
    file_sizes: Mapping[str, int] | None,
    limit: int | None = None,
    first: str | None = None,
) -> PushPlan:
    """Size each object and find the manifests' chunks, reading only what may be a manifest.

    A blob that is the entry of a working file of at most ``limit`` bytes (the inline
    limit; ``file_sizes``: whole-file sizes by blob id, e.g. the stat cache's) holds that
    file's bytes, so its size is the file's and nothing is read: for small files a header
    read costs about as much as the whole read that sends them. Other objects are sized
    from their headers, and every other blob is read to look for a manifest. If one taken
    for plain bytes is a manifest after all (a small file that began with the manifest
    magic), the sender finds out when it reads the blob to send it and sends every chunk it
    names first (see ``RemoteSession.push``). ``first``: a blob to send before the others
    (the records table), when it is one read to look for a manifest; a file within the
    inline limit, sized from ``file_sizes``, keeps its place in plan order (it is never
    chunked, so the receiver would not check it early anyway)."""
    known: Mapping[str, int] = {} if file_sizes is None else file_sizes
    limit = inline_limit() if limit is None else limit
    odb = store.repo.odb
    plan = PushPlan()
    for oid in oids:
        size = known.get(oid)
        if size is not None and size <= limit:
            plan.add(oid, size)
            continue
        try:
            obj_type, size = odb.read_header(oid)
        except KeyError:
            raise NotFoundError(f"object {oid} is not in the store") from None
        if int(obj_type) != p.OBJECT_TYPES["blob"]:
            plan.add(oid, size, other=True)
            continue
        plan.add(oid, size, first=oid == first)
        _, data = read_for_send(store, oid)
        entries = manifest_entries(data, f"blob {oid}")
        if entries:
            plan.chunks_of[oid] = [cid for cid, _ in entries]
            plan.chunk_sizes.update(entries)
    return plan
