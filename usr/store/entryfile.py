"""A seekable, read-only file over one store entry, for readers that seek (Parquet).

Parquet reads its footer first, then only the column chunks asked for; over a chunked file
that means only the chunks covering those byte ranges are read (each verified by blake3
as it is read), never the whole file. The gate reads ``records.parquet`` this way, and so
does the record diff (:mod:`usr.record_diff`). Reads the store only through
``manifest_of``, ``chunks.get`` and ``read_object``; imports nothing else of ours.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any


class EntryFile(io.RawIOBase):
    """A seekable, read-only file over a store entry, reading only the chunks asked for
    (Parquet reads its footer, then one column): the bytes are verified as they are read."""

    def __init__(self, store: Any, blob_id: str) -> None:
        super().__init__()
        self._pos = 0
        manifest = store.manifest_of(blob_id)
        if manifest is None:
            data = store.read_object(blob_id)[1]
            self._size = len(data)
            self._spans: list[tuple[int, int, Callable[[], bytes]]] = [(0, len(data), lambda: data)]
            self._cids: list[str] | None = None
        else:
            self._size = manifest.size
            self._spans = []
            self._cids = [cid for cid, _ in manifest.chunks]
            pos = 0
            for cid, length in manifest.chunks:
                self._spans.append((pos, length, lambda c=cid: store.chunks.get(c)))
                pos += length
        self._cache: dict[int, bytes] = {}

    @property
    def size(self) -> int:
        """The whole file's size."""
        return self._size

    def chunks_covering(self, start: int, end: int) -> list[tuple[int, str]] | None:
        """``(offset, chunk id)`` of the chunks holding bytes ``[start, end)``, or None for an
        inline entry. Two entries whose lists are equal for a range hold the same bytes
        there, which a reader can tell without reading them."""
        if self._cids is None:
            return None
        first = self._span_at(start)
        out = []
        for index in range(first, len(self._spans)):
            pos = self._spans[index][0]
            if pos >= end:
                break
            out.append((pos, self._cids[index]))
        return out

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self._pos < self._size:
            index = self._span_at(self._pos)
            start, length, _ = self._spans[index]
            data = self._chunk(index)
            take = data[self._pos - start : min(length, self._pos - start + len(view) - done)]
            view[done : done + len(take)] = take
            done += len(take)
            self._pos += len(take)
        return done

    def _span_at(self, pos: int) -> int:
        lo, hi = 0, len(self._spans) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self._spans[mid][0] <= pos:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def _chunk(self, index: int) -> bytes:
        if index not in self._cache:
            if len(self._cache) >= 4:
                self._cache.pop(next(iter(self._cache)))
            self._cache[index] = self._spans[index][2]()
        return self._cache[index]
