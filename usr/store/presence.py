"""Which git objects a store holds, asked of libgit2's backends directly.

``odb.exists`` re-reads the pack directory and looks for the loose file twice on every
miss (26-57 µs a miss here), and a pack backend's lookup tries its packs one by one (about
0.4 µs a pack: 12.6 µs a miss among the 33 packs a 1 GB receive leaves). A receive and a
push's negotiation ask about every object they move, nearly all misses. So the pack lists
are read once per question (:class:`Backends`, :func:`lacking`), and an object writer
answers for the packs it sealed itself from its own table (:class:`SealedIds`), so its
lookups cost what the packs that were there before it cost, not one step more per pack
it wrote.

A pack another process writes after the lists were read is not seen: an object in it is
reported missing, and is received or stored again, which is harmless (git reads the first
copy it finds). Nothing is ever reported present that is not stored.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any


class Backends:
    """The store's object backends (packs, loose objects, alternates) with their pack
    lists read once, at creation; none at all when the store then held no object (a
    bootstrap's receive, a pull into a fresh root): its misses skip libgit2's two backends
    (5.5 -> 0.7 µs a miss, ``benchmarks/percall.py presence``)."""

    def __init__(self, repo: Any) -> None:
        self._backends = [] if holds_nothing(repo.path) else list(repo.odb.backends)
        for backend in self._backends:
            backend.refresh()  # the loose backend has none: a no-op

    def has(self, oid: str) -> bool:
        return any(backend.exists(oid) for backend in self._backends)


def holds_nothing(gitdir: str) -> bool:
    """True when the store at ``gitdir`` has no object: its ``objects`` directory holds
    only an ``info`` without alternates and a ``pack`` without packs. Anything else
    (a loose object's directory, a pack, alternates, a name not expected) is False, and
    presence is asked of libgit2 as usual."""
    objects = os.path.join(gitdir, "objects")
    try:
        for name in os.listdir(objects):
            if name == "pack":
                if any(n.endswith((".pack", ".idx")) for n in os.listdir(f"{objects}/pack")):
                    return False
            elif name != "info" or os.listdir(f"{objects}/info") not in ([], ["packs"]):
                return False
    except OSError:
        return False
    return True


def lacking(repo: Any, oids: Iterable[str]) -> list[str]:
    """The ids of ``oids`` that are not stored, in their order (a push's ``have``, a
    fetch's list of what to ask for)."""
    backends = Backends(repo)
    return [oid for oid in oids if not backends.has(oid)]


class SealedIds:
    """The ids in the packs one object writer sealed: a fixed filter of 2 MiB rules out
    nearly every other id in one step; a possible hit is looked up in each pack's sorted
    ids. 20 bytes an object (a set of the ids took about 90)."""

    _BITS = 1 << 24

    def __init__(self) -> None:
        self._filter = bytearray(self._BITS // 8)
        self._tables: list[bytes] = []  # per pack: its raw ids, sorted, 20 bytes each

    def add(self, sorted_ids: bytes) -> None:
        """The raw ids of one sealed pack, sorted (as its idx lists them)."""
        bits = self._filter
        for at in range(0, len(sorted_ids), 20):
            for pos in _positions(sorted_ids[at : at + 20]):
                bits[pos >> 3] |= 1 << (pos & 7)
        self._tables.append(sorted_ids)

    def __contains__(self, oid: str) -> bool:
        if not self._tables:
            return False
        raw = bytes.fromhex(oid)
        bits = self._filter
        if not all(bits[pos >> 3] & (1 << (pos & 7)) for pos in _positions(raw)):
            return False
        return any(_search(table, raw) for table in self._tables)


def _positions(raw: bytes) -> tuple[int, int]:
    """Two filter positions of an id: its first two 24-bit groups (ids are hashes)."""
    return int.from_bytes(raw[0:3], "big"), int.from_bytes(raw[3:6], "big")


def _search(table: bytes, raw: bytes) -> bool:
    """True if ``raw`` is one of the sorted 20-byte ids of ``table``."""
    lo, hi = 0, len(table) // 20
    while lo < hi:
        mid = (lo + hi) // 2
        if table[mid * 20 : mid * 20 + 20] < raw:
            lo = mid + 1
        else:
            hi = mid
    return table[lo * 20 : lo * 20 + 20] == raw
