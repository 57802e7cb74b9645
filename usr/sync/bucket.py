"""The bucket layout of an object-store remote (docs/format.md §12),
and the one place that talks to the S3 client library.

Owns :class:`Bucket` (reading and writing the three kinds of keys of one remote: the ref,
immutable indexes, immutable packs; errors translated into usr's), :class:`Index` (what a
remote dataset holds: every git object and chunk, by pack, offset and length) and
:class:`PackBuilder` (the packs one push writes). A remote dataset ``DS`` is::

    <prefix>/DS/ref                     JSON {"format", "head", "index"}; moved by CAS only
    <prefix>/DS/index/<blake3>.json     JSON index, named by the blake3 of its bytes
    <prefix>/DS/packs/<blake3>.pack     raw payloads back to back, named by their blake3

A push cut off resumes: packs are content-named and written whole (an S3 PUT is atomic), so
before writing one the builder asks the bucket which packs it already holds (one LIST) and
skips those; only the ref makes anything visible. Packs of at least
:func:`multipart_threshold` bytes go up as a multipart upload.

May import :mod:`usr.errors`, :mod:`usr.faults`, :mod:`usr.progress`, the store's id
helpers and ``obstore`` (the client, imported when a bucket is opened). Knows nothing of
sessions or the sync.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from blake3 import blake3

from usr import faults
from usr.errors import AuthError, ConflictError, NotFoundError, TransportError, VerifyError

REF_FORMAT = "usr-s3-ref/1"
INDEX_FORMAT = "usr-s3-index/1"
#: A push's payload is cut into packs of at most this many bytes (``USR_S3_PACK_LIMIT``).
PACK_LIMIT = 64 << 20
#: Packs of at least this many bytes go up in parts (``USR_S3_MULTIPART_THRESHOLD``).
MULTIPART_THRESHOLD = 16 << 20
#: The part size of a multipart upload (S3 wants at least 5 MiB but for the last).
PART_SIZE = 8 << 20
FAULT_PACK_WRITTEN = faults.register(
    "s3.pack-written", "client: a pack of the push is in the bucket; no ref names it yet"
)
FAULT_PACK_READ = faults.register(
    "s3.pack-read", "client: ranges of one pack read during a fetch; nothing of it landed"
)
CREDENTIAL_HINT = (
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or the variables the profile's "
    "access_key_env / secret_key_env name) to a key allowed on the bucket"
)


@dataclass
class Counter:
    """Bytes moved to and from the store (what ``usr.sync.remote.bytes_moved`` reads)."""

    bytes_in: int = 0
    bytes_out: int = 0


@dataclass
class Ref:
    """The ref object of one dataset as read: ``head``, the index it names, its ETag."""

    head: str
    index: str
    etag: str | None


@dataclass
class Index:
    """What a remote dataset holds. ``objects``: git id -> ``[type, pack number, offset,
    length, file size]`` (file size: the whole file a blob stands for, manifests included;
    0 for commits and trees); ``chunks``: blake3 -> ``[pack number, offset, length]``;
    ``packs``: pack names, numbered from 0."""

    packs: list[str] = field(default_factory=list)
    objects: dict[str, list[Any]] = field(default_factory=dict)
    chunks: dict[str, list[int]] = field(default_factory=dict)

    def encode(self) -> bytes:
        doc = {
            "format": INDEX_FORMAT,
            "packs": self.packs,
            "objects": self.objects,
            "chunks": self.chunks,
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes, where: str) -> Index:
        try:
            doc = json.loads(data)
            if doc.get("format") != INDEX_FORMAT:
                raise ValueError(f"format {doc.get('format')!r}")
            index = cls(list(doc["packs"]), dict(doc["objects"]), dict(doc["chunks"]))
            n = len(index.packs)
            for entry in index.objects.values():
                if len(entry) != 5 or not 0 <= entry[1] < n:
                    raise ValueError("bad object entry")
            for entry in index.chunks.values():
                if len(entry) != 3 or not 0 <= entry[0] < n:
                    raise ValueError("bad chunk entry")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise VerifyError(f"{where}: unreadable index: {exc}") from None
        return index

    def copy(self) -> Index:
        return Index(list(self.packs), dict(self.objects), dict(self.chunks))


def _env_bytes(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.isdigit() and int(value) > 0 else default


#: Pack uploads in flight at once (each holds a pack of up to the pack limit in memory).
UPLOADS_IN_FLIGHT = 2


def pack_limit() -> int:
    """Bytes per pack: :data:`PACK_LIMIT` unless ``USR_S3_PACK_LIMIT`` lowers it (tests)."""
    return _env_bytes("USR_S3_PACK_LIMIT", PACK_LIMIT)


def multipart_threshold() -> int:
    """Pack size from which an upload goes in parts (``USR_S3_MULTIPART_THRESHOLD``)."""
    return _env_bytes("USR_S3_MULTIPART_THRESHOLD", MULTIPART_THRESHOLD)


def credentials(profile: Any) -> tuple[str, str]:
    """The access key pair, from the environment variables the profile names (default
    ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``); never from the profile itself."""
    key_var = profile.access_key_env or "AWS_ACCESS_KEY_ID"
    secret_var = profile.secret_key_env or "AWS_SECRET_ACCESS_KEY"
    key, secret = os.environ.get(key_var), os.environ.get(secret_var)
    if not key or not secret:
        missing = " and ".join(v for v, x in ((key_var, key), (secret_var, secret)) if not x)
        raise AuthError(
            f"remote {profile.name}: no S3 credentials ({missing} not set)", CREDENTIAL_HINT
        )
    return key, secret


class Bucket:
    """The keys of one object-store remote, through obstore. ``name`` labels errors."""

    def __init__(self, profile: Any, name: str) -> None:
        from obstore.store import S3Store

        self.name = name
        self.counter = Counter()
        self._counting = threading.Lock()  # packs upload from several threads at once
        self.meter: tuple[Any, int, bool] | None = None  # (Progress, base, outgoing)
        self.label = f"s3://{profile.bucket}/{(profile.prefix or '').strip('/')}".rstrip("/")
        key, secret = credentials(profile)
        endpoint = profile.endpoint
        config: dict[str, Any] = {
            "access_key_id": key,
            "secret_access_key": secret,
            "region": profile.region or "us-east-1",
        }
        if endpoint:
            config["endpoint"] = endpoint
            config["virtual_hosted_style_request"] = False
        client = {
            "allow_http": bool(endpoint and endpoint.startswith("http://")),
            "connect_timeout": f"{int(profile.connect_timeout)}s",
            "timeout": f"{int(profile.idle_timeout)}s",
        }
        retry = {
            "max_retries": 2,
            "retry_timeout": timedelta(seconds=profile.connect_timeout),
            "backoff": {"init_backoff": timedelta(milliseconds=100)},
        }
        prefix = (profile.prefix or "").strip("/") or None
        self.store = S3Store(
            profile.bucket, prefix=prefix, client_options=client, retry_config=retry, **config
        )

    # -- errors ----------------------------------------------------------------------------
    def error(self, exc: BaseException, what: str) -> Exception:
        """One line saying what failed and why, as the usr error of its class."""
        text = str(exc)
        first = text.splitlines()[0][:300] if text else type(exc).__name__
        kind = type(exc).__name__
        if "NoSuchBucket" in text:
            return NotFoundError(
                f"{self.name}: bucket of {self.label} does not exist",
                "create the bucket, or fix bucket/endpoint in the profile",
            )
        if kind in ("PermissionDeniedError", "UnauthenticatedError") or " 403 " in text:
            return AuthError(
                f"{self.name}: access denied to {self.label} ({what})", CREDENTIAL_HINT
            )
        return TransportError(f"{self.name}: {what} failed: {first}", "check the endpoint; rerun")

    # -- progress --------------------------------------------------------------------------
    @contextlib.contextmanager
    def metered(self, what: str, total: int | None, outgoing: bool) -> Iterator[None]:
        """A progress line (terminal only, :class:`usr.progress.Progress`) fed with the
        bytes this bucket sends (``outgoing``) or receives while the block runs."""
        from usr.progress import Progress

        meter = Progress(f"{what} {self.name}", total)
        base = self.counter.bytes_out if outgoing else self.counter.bytes_in
        self.meter = (meter, base, outgoing)
        try:
            yield
        finally:
            self.meter = None
            meter.close()

    def sent(self, n: int) -> None:
        """Count ``n`` bytes written to the bucket (from any upload thread)."""
        with self._counting:
            self.counter.bytes_out += n
        self.tick()

    def tick(self, extra: int = 0) -> None:
        """Show the bytes moved so far (plus ``extra`` in flight) on the meter, if any."""
        if self.meter is not None:
            meter, base, outgoing = self.meter
            moved = self.counter.bytes_out if outgoing else self.counter.bytes_in
            meter.update(moved - base + extra)

    # -- reading ---------------------------------------------------------------------------
    def sizes(self, prefix: str) -> dict[str, int]:
        """``name -> size`` of the keys under ``prefix`` (the last path segment as name)."""
        import obstore

        out: dict[str, int] = {}
        try:
            for batch in obstore.list(self.store, prefix=prefix):
                for meta in batch:
                    out[str(meta["path"]).rsplit("/", 1)[-1]] = int(meta["size"])
        except Exception as exc:  # noqa: BLE001
            raise self.error(exc, f"list {prefix}") from None
        return out

    def size(self, key: str) -> int | None:
        """The size of ``key`` (one HEAD), or None if there is no such key."""
        import obstore

        try:
            return int(obstore.head(self.store, key)["size"])
        except FileNotFoundError:
            return None
        except Exception as exc:  # noqa: BLE001
            raise self.error(exc, f"look up {key}") from None

    def get(self, key: str, what: str) -> tuple[bytes, str | None] | None:
        """The bytes and ETag of ``key``, or None if there is no such key."""
        import obstore

        try:
            result = obstore.get(self.store, key)
            data = bytes(result.bytes())
        except FileNotFoundError as exc:
            if "NoSuchBucket" in str(exc):
                raise self.error(exc, what) from None
            return None
        except Exception as exc:  # noqa: BLE001 - every client error becomes a usr error
            raise self.error(exc, what) from None
        self.counter.bytes_in += len(data)
        return data, result.meta.get("e_tag")

    def get_ranges(self, key: str, spans: list[tuple[int, int]]) -> list[bytes]:
        """Byte ranges ``(offset, length)`` of ``key`` (one call; the client coalesces)."""
        import obstore

        if not spans:
            return []
        starts = [o for o, _ in spans]
        ends = [o + n for o, n in spans]
        try:
            got = obstore.get_ranges(self.store, key, starts=starts, ends=ends)
        except FileNotFoundError:
            raise VerifyError(f"{self.name}: {key} is named by the index but missing") from None
        except Exception as exc:  # noqa: BLE001
            raise self.error(exc, f"read {key}") from None
        out = [bytes(b) for b in got]
        self.counter.bytes_in += sum(len(b) for b in out)
        self.tick()
        return out

    def probe(self) -> None:
        """One request that fails the way a wrong key or a missing bucket does."""
        self.get(".usr-probe", "reach the bucket")

    def conditional_writes(self) -> bool:
        """Whether the store refuses a create over an existing key and a write whose
        If-Match names another ETag (what the ref's compare-and-swap rests on). Writes, then
        deletes, one probe key ``.usr-probe-cas/<random>``."""
        import uuid

        import obstore
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        key = f".usr-probe-cas/{uuid.uuid4().hex}"
        refused = 0
        try:
            obstore.put(self.store, key, b"1", mode="create", use_multipart=False)
            for mode in ("create", {"e_tag": '"00000000000000000000000000000000"'}):
                try:
                    obstore.put(self.store, key, b"2", mode=mode, use_multipart=False)
                except (AlreadyExistsError, PreconditionError):
                    refused += 1
            obstore.delete(self.store, key)
        except Exception as exc:  # noqa: BLE001
            raise self.error(exc, "probe conditional writes") from None
        return refused == 2

    def read_ref(self, ds: str) -> Ref | None:
        got = self.get(f"{ds}/ref", f"read the ref of {ds}")
        if got is None:
            return None
        data, etag = got
        try:
            doc = json.loads(data)
            if doc.get("format") != REF_FORMAT:
                raise ValueError(f"format {doc.get('format')!r}")
            return Ref(str(doc["head"]), str(doc["index"]), etag)
        except (ValueError, KeyError, AttributeError) as exc:
            raise VerifyError(f"{self.name}: ref of {ds} is unreadable: {exc}") from None

    def read_index(self, ds: str, name: str) -> Index:
        key = f"{ds}/index/{name}.json"
        got = self.get(key, f"read the index of {ds}")
        if got is None:
            raise VerifyError(f"{self.name}: {key}, named by the ref, is missing")
        if blake3(got[0]).hexdigest() != name:
            raise VerifyError(f"{self.name}: {key}: bytes hash to another name; refused")
        return Index.decode(got[0], f"{self.name}: {key}")

    # -- writing ---------------------------------------------------------------------------
    def put_once(self, key: str, data: bytes) -> None:
        """Write an immutable, content-named key; one already there holds the same bytes."""
        import obstore
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        try:
            obstore.put(self.store, key, data, mode="create", use_multipart=False)
        except (AlreadyExistsError, PreconditionError):
            pass
        except Exception as exc:  # noqa: BLE001
            raise self.error(exc, f"write {key}") from None
        self.sent(len(data))

    def put_pack(self, key: str, data: bytes) -> None:
        """Write a content-named pack: at :func:`multipart_threshold` bytes and over in
        parts of :data:`PART_SIZE` (a multipart upload cannot be conditional, and need not
        be: a key of this name can only ever hold these bytes), else as :meth:`put_once`."""
        import obstore

        if len(data) < multipart_threshold():
            self.put_once(key, data)
            return
        try:
            obstore.put(
                self.store, key, self._parts(data), use_multipart=True, chunk_size=PART_SIZE
            )
        except Exception as exc:  # noqa: BLE001
            raise self.error(exc, f"write {key}") from None
        self.sent(len(data))

    def _parts(self, data: bytes) -> Iterator[memoryview]:
        """``data`` in parts, moving the meter as the client takes each one."""
        view = memoryview(data)
        for start in range(0, len(view), PART_SIZE):
            yield view[start : start + PART_SIZE]
            self.tick(min(start + PART_SIZE, len(view)))

    def swap_ref(self, ds: str, head: str, index: str, old: Ref | None) -> None:
        """Move the ref by compare-and-swap: If-Match the ETag read, or If-None-Match ``*``
        for a bootstrap. Losing the race is a ConflictError; nothing else changed."""
        import obstore
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        doc = {"format": REF_FORMAT, "head": head, "index": index}
        data = json.dumps(doc, sort_keys=True).encode() + b"\n"
        mode: Any = "create" if old is None else {"e_tag": old.etag}
        try:
            obstore.put(self.store, f"{ds}/ref", data, mode=mode, use_multipart=False)
        except (AlreadyExistsError, PreconditionError):
            raise ConflictError(
                f"remote moved: {self.name} changed while pushing (another push won)",
                "someone else pushed; pull first, then push again",
            ) from None
        except Exception as exc:  # noqa: BLE001
            raise self.error(exc, f"move the ref of {ds}") from None
        self.sent(len(data))


class PackBuilder:
    """The packs of one push: payloads appended to an open pack, written (content-named)
    whenever it reaches :data:`PACK_LIMIT` and at :meth:`finish`, and entered in the new
    index only then, so the index never names an unwritten pack."""

    def __init__(self, bucket: Bucket, ds: str, index: Index) -> None:
        self.bucket, self.ds, self.index = bucket, ds, index
        self.limit = pack_limit()
        self.present: dict[str, int] | None = None  # packs already in the bucket
        self.reused = 0  # bytes of packs found there and not sent again
        self.buf = bytearray()
        self.pending_objects: dict[str, list[Any]] = {}
        self.pending_chunks: dict[str, list[int]] = {}
        self.pool: ThreadPoolExecutor | None = None
        self.uploads: list[Future[None]] = []

    def add_object(self, oid: str, kind: str, data: bytes, file_size: int) -> None:
        self.pending_objects[oid] = [kind, -1, len(self.buf), len(data), file_size]
        self._append(data)

    def add_chunk(self, cid: str, data: bytes) -> None:
        self.pending_chunks[cid] = [-1, len(self.buf), len(data)]
        self._append(data)

    def _append(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) >= self.limit:
            self.flush()

    def flush(self) -> None:
        if not self.buf:
            return
        name = blake3(self.buf).hexdigest()
        if self.present is None:  # one LIST per push: what a cut-off push left behind
            self.present = self.bucket.sizes(f"{self.ds}/packs/")
        if self.present.get(f"{name}.pack") == len(self.buf):
            self.reused += len(self.buf)
        else:
            self._upload(f"{self.ds}/packs/{name}.pack", bytes(self.buf))
        number = len(self.index.packs)
        self.index.packs.append(name)
        for oid, entry in self.pending_objects.items():
            self.index.objects[oid] = [entry[0], number, *entry[2:]]
        for cid, entry in self.pending_chunks.items():
            self.index.chunks[cid] = [number, *entry[1:]]
        self.buf = bytearray()
        self.pending_objects, self.pending_chunks = {}, {}

    def _upload(self, key: str, data: bytes) -> None:
        """Write one pack while the next is cut: at most :data:`UPLOADS_IN_FLIGHT` at once
        (each holds its bytes, so memory stays bounded); a failed upload fails the push at
        the next pack or at :meth:`finish`, before any index or ref is written."""
        if self.pool is None:
            self.pool = ThreadPoolExecutor(UPLOADS_IN_FLIGHT, thread_name_prefix="usr-s3-put")
        while len(self.uploads) >= UPLOADS_IN_FLIGHT:
            self.uploads.pop(0).result()
        self.uploads.append(self.pool.submit(self._put, key, data))

    def _put(self, key: str, data: bytes) -> None:
        self.bucket.put_pack(key, data)
        faults.point(FAULT_PACK_WRITTEN)

    def wait(self) -> None:
        """Every pack submitted is in the bucket (or its error is raised here)."""
        try:
            for upload in self.uploads:
                upload.result()
        finally:
            self.uploads = []
            if self.pool is not None:
                self.pool.shutdown(wait=True)
                self.pool = None

    def finish(self) -> str:
        """Write the last pack, wait for every pack, then the new index (which names them
        all); returns the index's name."""
        self.flush()
        self.wait()
        data = self.index.encode()
        name = blake3(data).hexdigest()
        key = f"{self.ds}/index/{name}.json"
        if self.bucket.size(key) != len(data):
            self.bucket.put_once(key, data)
        return name


def read_spans(
    bucket: Bucket, ds: str, index: Index, ids: Iterable[str], chunks: bool
) -> dict[str, bytes]:
    """The payloads of ``ids`` (objects, or chunks with ``chunks``), read pack by pack in
    one ranged request each. Not verified here: the caller checks every id."""
    table = index.chunks if chunks else index.objects
    by_pack: dict[int, list[tuple[str, int, int]]] = {}
    for oid in ids:
        entry = table.get(oid)
        if entry is None:
            raise VerifyError(f"{bucket.name}: {oid} is not in the remote index")
        pack, offset, length = (entry[0], entry[1], entry[2]) if chunks else entry[1:4]
        by_pack.setdefault(pack, []).append((oid, offset, length))
    out: dict[str, bytes] = {}
    for pack, wanted in by_pack.items():
        key = f"{ds}/packs/{index.packs[pack]}.pack"
        got = bucket.get_ranges(key, [(o, n) for _, o, n in wanted])
        for (oid, _o, n), data in zip(wanted, got, strict=True):
            if len(data) != n:
                raise VerifyError(f"{bucket.name}: {key} is shorter than its index says")
            out[oid] = data
        faults.point(FAULT_PACK_READ)
    return out
