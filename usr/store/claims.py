"""The staged claims of a transfer, as one table of 16-byte slots.

A receive that streams files into the staging dir remembers each one it wrote as a
128-bit claim (:func:`usr.store.checkout.stat_claim`), and its checkout asks once per
file whether the file there is still the one claimed. A ``set`` of 16-byte ``bytes``
costs ~150 bytes a claim (the object, and the set's slots), held from the first blob to
the end of the checkout: ~150 MB for a million files. :class:`Claims` keeps the digests
in an open-addressing table in one ``bytearray`` instead, at most 3/4 full: 21 to 43
bytes a claim. The digests are uniform, so their first 8 bytes are the hash.

Imports nothing of usr's.
"""

from __future__ import annotations

from collections.abc import Iterator

SLOT = 16
_EMPTY = bytes(SLOT)


class Claims:
    """A set of 16-byte claims: :meth:`add`, ``in``, ``len``."""

    def __init__(self) -> None:
        self._slots = 64
        self._table = bytearray(self._slots * SLOT)
        self._count = 0
        self._zero = False  # the all-zero digest marks an empty slot, so it is kept apart

    def __len__(self) -> int:
        return self._count + self._zero

    def __contains__(self, claim: object) -> bool:
        if not isinstance(claim, bytes | bytearray) or len(claim) != SLOT:
            return False
        if claim == _EMPTY:
            return self._zero
        return self._probe(claim)[1]

    def add(self, claim: bytes) -> None:
        if len(claim) != SLOT:
            raise ValueError(f"a claim is {SLOT} bytes, not {len(claim)}")
        if claim == _EMPTY:
            self._zero = True
            return
        at, found = self._probe(claim)
        if found:
            return
        self._table[at * SLOT : at * SLOT + SLOT] = claim
        self._count += 1
        if self._count * 4 > self._slots * 3:
            self._grow()

    def __iter__(self) -> Iterator[bytes]:
        table = bytes(self._table)
        for at in range(0, len(table), SLOT):
            if table[at : at + SLOT] != _EMPTY:
                yield table[at : at + SLOT]
        if self._zero:
            yield _EMPTY

    def _probe(self, claim: bytes | bytearray) -> tuple[int, bool]:
        """The slot holding ``claim`` (True), or the empty slot where it would go."""
        mask = self._slots - 1
        at = int.from_bytes(claim[:8], "little") & mask
        table = self._table
        while True:
            here = table[at * SLOT : at * SLOT + SLOT]
            if here == claim:
                return at, True
            if here == _EMPTY:
                return at, False
            at = (at + 1) & mask

    def _grow(self) -> None:
        old = self._table
        self._slots *= 2
        self._table = bytearray(self._slots * SLOT)
        self._count = 0
        for at in range(0, len(old), SLOT):
            claim = bytes(old[at : at + SLOT])
            if claim != _EMPTY:
                slot = self._probe(claim)[0] * SLOT
                self._table[slot : slot + SLOT] = claim
                self._count += 1
