"""Row counts of Parquet files in the store, read from the footer alone.

``usr log --stat`` reports how many records each state added or removed. Reading that from
the Parquet footer (the last ``8 + footer_len`` bytes) touches a few KiB per state, however
large records.parquet is — for a chunked file, only the chunks that hold the tail.
"""

from __future__ import annotations

import struct

from usr.errors import UsrError

_MAGIC = b"PAR1"


def num_rows(store, blob_id: str) -> int | None:
    """Rows in the Parquet file behind ``blob_id``, or None if it is not a readable Parquet."""
    import pyarrow as pa  # imported here: most commands never need it
    import pyarrow.parquet as pq

    try:
        size = store.entry_size(blob_id)
        if size < 12:
            return None
        tail = store.read_range(blob_id, size - 8, 8)
        if tail[4:] != _MAGIC:
            return None
        (footer_len,) = struct.unpack("<I", tail[:4])
        if footer_len + 12 > size:
            return None
        footer = store.read_range(blob_id, size - 8 - footer_len, footer_len)
        fake = _MAGIC + footer + tail  # a file that is only a footer parses the same
        return pq.ParquetFile(pa.BufferReader(fake)).metadata.num_rows
    except (UsrError, OSError, pa.ArrowException, struct.error):
        return None
