"""The working files of a dataset, as the store sees them: scanning, hashing, writing back.

Scanning walks the dataset directory, skips runtime paths (:func:`usr.layout.is_runtime_path`)
and refuses anything that is not a regular file or directory (symlinks, devices, fifos,
sockets) with an :class:`InputError` naming the path. Hashing turns a file into a tree entry
id (an inline blob, or a manifest plus chunks, see :mod:`usr.store.objects`), streaming so
memory stays bounded whatever the file size. Materialising does the reverse, verifying
every byte it writes against the ids it was asked for.
"""

from __future__ import annotations

import contextlib
import operator
import os
import stat as statmod
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import blake3
import pygit2
from pyfastcdc import FastCDC

from usr.errors import InputError, NotFoundError, VerifyError
from usr.layout import (
    MAX_RELPATH,
    RUNTIME_NAMES,
    RUNTIME_PREFIXES,
    TEMP_PREFIXES,
    check_relpath,
)
from usr.store.chunks import WRITEBACK_BYTES, ChunkStore, PackWriter, chunk_id, start_writeback
from usr.store.objects import CHUNK_AVG, CHUNK_MAX, CHUNK_MIN, MAGIC, Manifest, git_object_id

#: Children sort by their first field, the name with "/" after a directory's (git's order).
_first = operator.itemgetter(0)

MODE_FILE = 0o100644
MODE_EXEC = 0o100755
MODE_TREE = 0o040000
FILE_MODES = (MODE_FILE, MODE_EXEC)

#: How often a file that keeps changing while it is hashed is retried before giving up.
_STABLE_TRIES = 5


def chunker() -> FastCDC:
    """The one FastCDC configuration every machine must use (see docs/format.md)."""
    return FastCDC(avg_size=CHUNK_AVG, min_size=CHUNK_MIN, max_size=CHUNK_MAX)


class ScannedFile(NamedTuple):
    """One regular file found by :func:`scan` (a tuple: scans build 100,000s of them)."""

    relpath: str
    abspath: str
    st: os.stat_result

    @property
    def mode(self) -> int:
        return MODE_EXEC if self.st.st_mode & 0o100 else MODE_FILE


def scan(dataset_dir: Path) -> Iterator[ScannedFile]:
    """Every recordable regular file under ``dataset_dir`` (runtime paths skipped), in
    git's order (full paths in byte order).

    Raises :class:`InputError` for a symlink, device, fifo or socket, or a name usr cannot
    record, naming the path: silently skipping it would let a state look recorded when it
    is not.
    """
    stack = [iter(list_dir("", str(dataset_dir)))]
    dirs = [("", str(dataset_dir))]
    while stack:
        prefix, directory = dirs[-1]
        for key, name, st in stack[-1]:
            if st is None:  # a directory: its files before the parent's next ones
                dirs.append((prefix + key, f"{directory}/{name}"))
                stack.append(iter(list_dir(*dirs[-1])))
                break
            yield ScannedFile(prefix + key, f"{directory}/{name}", st)
        else:
            stack.pop()
            dirs.pop()


#: One child of a directory: sort key (the name, with "/" after a directory's), name, and
#: its lstat (None for a directory).
Child = tuple[str, str, "os.stat_result | None"]


def list_dir(prefix: str, directory: str) -> list[Child]:
    """The recordable children of ``directory`` (relative path ``prefix``, "" or ending in
    "/"), sorted in git's tree order: by name, a directory compared as ``name/``.

    Runtime names are skipped at the top and refused below it. Raises :class:`InputError`
    for a symlink, device, fifo or socket, or a name usr cannot record, naming the path.
    The children are stat'ed relative to the directory's descriptor (``fstatat``): a
    full-path ``lstat`` walks every component again, 30% of a no-op scan at 1M files.
    The names come from ``listdir`` and are sorted before the stats, with no ``DirEntry``
    per file and no sort key: a quarter of the listing's own CPU at 1M files.
    """
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        names = os.listdir(fd)
        names.sort()  # a files-only directory's tree order (a subdirectory's is "name/")
        joined = "\0" + "\0".join(names)
        # Every rule below, checked for the whole directory at once (the runtime names
        # all start with ".usr"): a directory that fails any goes through the rules one
        # entry at a time, which name the entry.
        if (
            "\0.usr" not in joined
            and "\\" not in joined
            and len(prefix) + max(map(len, names), default=0) <= MAX_RELPATH // 4
            and _utf8(joined)
        ):
            lstat = os.lstat
            sts = [lstat(name, dir_fd=fd) for name in names]
            kinds = {st.st_mode & 0o170000 for st in sts}
            if kinds <= {statmod.S_IFREG}:  # files only: the usual leaf directory
                return list(zip(names, names, sts, strict=True))
            if kinds <= {statmod.S_IFREG, statmod.S_IFDIR}:
                out = [
                    (name, name, st) if statmod.S_ISREG(st.st_mode) else (name + "/", name, None)
                    for name, st in zip(names, sts, strict=True)
                ]
                out.sort(key=_first)
                return out
        return _list_checked(prefix, fd, names)  # refused, by name (or a runtime name)
    finally:
        os.close(fd)


def _list_checked(prefix: str, fd: int, names: list[str]) -> list[Child]:
    """:func:`list_dir` one name at a time (``fd`` is the directory's descriptor),
    raising for the first one that breaks a rule."""
    out: list[Child] = []
    for name in names:
        # The same rules as usr.layout.is_runtime_path / check_relpath, applied to one
        # name at a time (its parents were checked already): pathlib per file costs
        # more than the stat itself on a 100,000-file dataset.
        rel = f"{prefix}{name}"
        if name in RUNTIME_NAMES or name.startswith(RUNTIME_PREFIXES):
            if not prefix or name.startswith(TEMP_PREFIXES):
                continue
            raise InputError(
                f"bad path {rel!r}: {name!r} is a name usr keeps for its own state",
                "rename it; a dataset's store and locks live only at its top",
            )
        st = os.lstat(name, dir_fd=fd)
        if "\\" in name:
            raise InputError(f"bad path {rel!r}: cannot record a name with a backslash")
        if len(rel) > MAX_RELPATH // 4:
            check_relpath(rel)  # the length rule (the rest was checked part by part)
        if not _utf8(name):
            raise InputError(
                f"bad path {rel!r}: the name is not UTF-8",
                "rename it: usr records names as UTF-8 text, the same on every machine",
            )
        if statmod.S_ISDIR(st.st_mode):
            out.append((name + "/", name, None))
        elif statmod.S_ISREG(st.st_mode):
            out.append((name, name, st))
        else:
            kind = "symlink" if statmod.S_ISLNK(st.st_mode) else "special file"
            raise InputError(
                f"refusing to record {rel!r}: it is a {kind}",
                "usr records regular files only; replace it with a copy of the data",
            )
    out.sort(key=_first)
    return out


def _utf8(name: str) -> bool:
    """A name the OS gave as text is UTF-8 unless it holds an undecodable byte (Python
    carries those as lone surrogates, which no tree, protocol or audit can encode)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _same_content_stat(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_size, a.st_mtime_ns, a.st_ino) == (b.st_size, b.st_mtime_ns, b.st_ino)


Progress = Callable[[int], None]


def _chunk_stream(
    fh, writer: PackWriter | None, first: bytes = b"", progress: Progress | None = None
) -> tuple[Manifest, int]:
    """Cut an open file into chunks, store them (unless ``writer`` is None), build a manifest."""
    whole = blake3.blake3()
    chunks: list[tuple[str, int]] = []
    size = 0

    class _Prefixed:
        """The file with ``first`` (already read) in front, as a readinto stream."""

        def __init__(self) -> None:
            self.pending = memoryview(first)

        def readinto(self, buf: memoryview) -> int:
            if self.pending:
                n = min(len(buf), len(self.pending))
                buf[:n] = self.pending[:n]
                self.pending = self.pending[n:]
                return n
            return fh.readinto(buf)

    for piece in chunker().cut_stream(_Prefixed()):
        data = piece.data
        cid = chunk_id(data)
        whole.update(data)
        if writer is not None:
            writer.add(cid, data)
        if progress is not None:
            progress(piece.length)
        chunks.append((cid, piece.length))
        size += piece.length
    manifest = Manifest(size=size, blake3=whole.hexdigest(), chunks=tuple(chunks))
    return manifest, size


def hash_file(
    path: str,
    limit: int,
    store_blob: Callable[[bytes], str] | None,
    writer: PackWriter | None,
    progress: Progress | None = None,
    stored: str | None = None,
) -> tuple[str, os.stat_result]:
    """The entry id of the file at ``path`` and the stat it is valid for.

    With ``store_blob`` (bytes -> blob id, e.g. ``Store.write_blob``) and ``writer`` the
    blob or manifest and the chunks are written to the store (like ``git add``); with None
    nothing is written (used to check staged files).
    ``stored`` is an id the store keeps anyway (one the stat cache names: gc keeps those):
    an inline file that hashes to it is not written again, which for a racy file costs a
    SHA-1 instead of libgit2's hash, lookup and object write (or freshen).
    ``progress(n)`` is called as each chunk of a large file is done. A file
    that changes while it is read is re-read; one that never holds still is an InputError.
    """
    for _ in range(_STABLE_TRIES):
        with open(path, "rb") as fh:
            before = os.fstat(fh.fileno())
            if before.st_size <= limit:
                data = fh.read(limit + 1)
                if not data.startswith(MAGIC) and len(data) <= limit:
                    after = os.fstat(fh.fileno())
                    if not _same_content_stat(before, after):
                        continue
                    if store_blob is None:
                        return git_object_id("blob", data), after
                    if stored is not None and git_object_id("blob", data) == stored:
                        return stored, after
                    return store_blob(data), after
                first = data  # starts with the magic (or grew): store it chunked
            else:
                first = b""
            manifest, _ = _chunk_stream(fh, writer, first, progress)
            after = os.fstat(fh.fileno())
            if not _same_content_stat(before, after):
                continue
            encoded = manifest.encode()
            if store_blob is not None:
                return store_blob(encoded), after
            return git_object_id("blob", encoded), after
    raise InputError(
        f"{path} kept changing while usr read it",
        "stop the writer, or retry when it has finished",
    )


#: Read size when hashing a file that is already on disk.
_HASH_READ = 8 << 20


def _hash_fd(fd: int, hasher: blake3.blake3, length: int | None = None) -> int:
    """Feed ``hasher`` the bytes of ``fd`` from offset 0 up to ``length`` (or to its end);
    the number of bytes read."""
    buf = bytearray(_HASH_READ)
    view = memoryview(buf)
    pos = 0
    while length is None or pos < length:
        want = len(buf) if length is None else min(len(buf), length - pos)
        n = os.preadv(fd, [view[:want]], pos)
        if n <= 0:
            break
        hasher.update(view[:n])
        pos += n
    return pos


def confirm_entry(
    repo: pygit2.Repository, path: str, oid: str, key: tuple[int, int, int, int]
) -> os.stat_result | None:
    """The stat of the file at ``path`` if its bytes are exactly those of the chunked entry
    ``oid`` (the manifest's size and whole-file blake3) and its stat is still ``key`` before
    and after the read; None otherwise (or if ``oid`` is not a manifest).

    Why: a file written moments before the stat cache was saved (a checkout's output, a
    batch job's append) is racy, and re-chunking it costs FastCDC plus a blake3 per chunk.
    One blake3 pass over the file proves the same thing, since the manifest's whole-file
    hash fixes the content and the chunking of that content is deterministic.
    """
    try:
        data = read_blob(repo, oid)
    except VerifyError:
        return None
    if not data.startswith(MAGIC):
        return None  # an inline blob: hashing it again is as cheap as checking it
    try:
        manifest = Manifest.decode(data, where=oid)
    except VerifyError:
        return None
    if manifest.size != key[0]:
        return None
    whole = blake3.blake3()
    try:
        with open(path, "rb", buffering=0) as fh:
            before = os.fstat(fh.fileno())
            if (before.st_size, before.st_mtime_ns, before.st_ctime_ns, before.st_ino) != key:
                return None
            _hash_fd(fh.fileno(), whole)
            after = os.fstat(fh.fileno())
    except OSError:
        return None
    if not _same_content_stat(before, after) or after.st_ctime_ns != before.st_ctime_ns:
        return None
    return after if whole.hexdigest() == manifest.blake3 else None


def build_tree(
    repo: pygit2.Repository, files: dict[str, tuple[str, int]], strict: bool = True
) -> str:
    """Write the trees for ``{relpath: (entry_id, mode)}`` and return the root tree id.

    With ``strict`` (the default) every entry id must be in the store, as libgit2 checks.
    ``strict=False`` is for previews (a merge of trees whose blobs were never fetched): the
    trees are written anyway; they must not be committed until their blobs are present.
    """
    root: dict = {}
    for rel, (oid, mode) in files.items():
        node = root
        parts = rel.split("/")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = (oid, mode)

    def write(node: dict) -> pygit2.Oid:
        tb = repo.TreeBuilder()
        for name, value in node.items():
            if isinstance(value, dict):
                tb.insert(name, write(value), MODE_TREE)
            else:
                try:
                    tb.insert(name, pygit2.Oid(hex=value[0]), value[1])
                except pygit2.GitError:
                    raise NotFoundError(
                        f"cannot write a tree naming {name!r}: object {value[0]} is not in "
                        "the store",
                        "fetch its objects first",
                    ) from None
        return tb.write()

    if strict:
        return str(write(root))
    # libgit2's check is a process-wide switch; usr runs one store operation per thread.
    pygit2.settings.enable_strict_object_creation(False)
    try:
        return str(write(root))
    finally:
        pygit2.settings.enable_strict_object_creation(True)  # libgit2's default


def walk_tree(repo: pygit2.Repository, tree_id: str | None) -> Iterator[tuple[str, str, int]]:
    """``(relpath, entry_id, mode)`` for every file in a tree, recursively, sorted by path.

    Every path is checked with :func:`usr.layout.check_relpath` and every mode must be a
    regular file or directory: a tree from a peer naming ``..``, ``.usr`` or a symlink is
    refused before any path touches disk.
    """
    if tree_id is None:
        return
    stack: list[tuple[str, pygit2.Tree]] = [("", repo[tree_id])]
    out: list[tuple[str, str, int]] = []
    while stack:
        prefix, tree = stack.pop()
        for entry in tree:
            rel = f"{prefix}{entry.name}"
            check_relpath(rel)
            if entry.filemode == MODE_TREE:
                stack.append((rel + "/", repo[entry.id]))
            elif entry.filemode in FILE_MODES:
                out.append((rel, str(entry.id), entry.filemode))
            else:
                raise InputError(f"tree entry {rel!r} has mode {entry.filemode:o}; refused")
    out.sort()
    yield from out


def read_blob(repo: pygit2.Repository, oid: str) -> bytes:
    """A blob's bytes, verified against its id (a corrupt object is never returned)."""
    try:
        obj_type, data = repo.odb.read(oid)
    except KeyError:
        raise VerifyError(f"object {oid} is missing from the store") from None
    except pygit2.GitError as exc:
        raise VerifyError(f"object {oid} is corrupt: {exc}") from None
    if git_object_id("blob", data) != oid or int(obj_type) != int(pygit2.enums.ObjectType.BLOB):
        raise VerifyError(f"object {oid} is corrupt: its bytes hash differently")
    return data


def _verified_chunks(
    chunks: ChunkStore, listed: Iterable[tuple[str, int]], whole: blake3.blake3, where: str
) -> Iterator[bytes]:
    """The chunks a manifest lists, each verified by the store and against its listed
    length, fed to ``whole`` (the whole-file hasher) as they are yielded."""
    for cid, length in listed:
        try:
            piece = chunks.get(cid)
        except VerifyError as exc:
            raise VerifyError(f"{where}: {exc.message}") from None
        if len(piece) != length:
            raise VerifyError(f"{where}: chunk {cid} has length {len(piece)}, manifest {length}")
        whole.update(piece)
        yield piece


def stream_entry(
    repo: pygit2.Repository, chunks: ChunkStore, oid: str, where: str
) -> Iterator[bytes]:
    """The file content behind a tree entry, piece by piece, every piece verified.

    For a manifest, each chunk is checked by its blake3 and the whole by the manifest's
    size and blake3; a failure raises :class:`VerifyError` naming ``where`` (the path).
    """
    data = read_blob(repo, oid)
    if not data.startswith(MAGIC):
        yield data
        return
    yield from _stream_manifest(chunks, oid, data, where)


def _stream_manifest(chunks: ChunkStore, oid: str, data: bytes, where: str) -> Iterator[bytes]:
    """The file behind manifest blob ``data`` (already read and verified as ``oid``)."""
    manifest = Manifest.decode(data, where=f"{where} (manifest {oid})")
    whole = blake3.blake3()
    yield from _verified_chunks(chunks, manifest.chunks, whole, where)
    if whole.hexdigest() != manifest.blake3:
        raise VerifyError(f"{where}: content does not match manifest {oid} blake3")


#: Reuse a previous version's bytes only when they share at least this much (below it the
#: plain write from chunks costs next to nothing).
REUSE_MIN = 8 << 20


def _write_reusing(
    repo: pygit2.Repository, chunks: ChunkStore, oid: str, base: tuple[str, str], fh, where: str
) -> bool:
    """Write entry ``oid`` into the empty ``fh`` (opened ``w+b``) by copying, in the kernel,
    the leading chunks it shares with ``base`` = ``(path, entry id)`` (the file as it is
    now, e.g. before a 1% append) and appending the rest from the chunk store. True if
    done; False (``fh`` to be reset by the caller) if not worth it or anything differs.

    Every byte is still verified: the copied prefix is read back from ``fh`` itself and
    the whole file must hash to the manifest's blake3, so a base file that changed since
    it was recorded only costs the fallback, never wrong content.
    """
    try:
        new = Manifest.decode(read_blob(repo, oid), where=where)
        old = Manifest.decode(read_blob(repo, base[1]), where=where)
    except VerifyError:
        return False  # not both chunked (or unreadable): the normal path decides
    shared = 0
    count = 0
    for a, b in zip(old.chunks, new.chunks, strict=False):
        if a != b:
            break
        shared += a[1]
        count += 1
    if shared < REUSE_MIN or not hasattr(os, "copy_file_range"):  # Linux only
        return False
    out = fh.fileno()
    try:
        with open(base[0], "rb", buffering=0) as src:
            if os.fstat(src.fileno()).st_size < shared:
                return False
            done = 0
            while done < shared:
                n = os.copy_file_range(src.fileno(), out, shared - done, done, done)
                if n == 0:
                    return False
                done += n
                start_writeback(out, done - n, n)
    except OSError:
        return False  # no copy_file_range here, or the base went away: write from chunks
    whole = blake3.blake3()
    if _hash_fd(out, whole, shared) != shared:
        return False
    fh.seek(shared)
    written = flushed = shared
    for piece in _verified_chunks(chunks, new.chunks[count:], whole, where):
        fh.write(piece)
        written += len(piece)
        if written - flushed >= WRITEBACK_BYTES:
            fh.flush()
            start_writeback(out, flushed, written - flushed)
            flushed = written
    fh.flush()
    return written == new.size and whole.hexdigest() == new.blake3


def write_entry(
    repo: pygit2.Repository,
    chunks: ChunkStore,
    oid: str,
    mode: int,
    dest: str | os.PathLike[str],
    where: str,
    fsync: bool = True,
    base: tuple[str, str] | None = None,
) -> None:
    """Create ``dest`` (a staging path; its directory must exist, the name must not)
    holding the verified content of an entry, with mode 644 or 755 exactly.

    ``dest`` is created exclusively and not through a symlink, and removed on any failure.
    A kill -9 can still leave it half-written: staged files are only ever trusted after
    they hash to their id (checkout re-verifies leftovers before reuse).
    ``fsync=False`` leaves the flush to the caller (one filesystem flush for many files).
    ``base`` = ``(path, entry id)`` names the current version of the file, whose shared
    leading chunks are copied from it (verified) instead of rewritten from the store.
    """
    data = read_blob(repo, oid)
    perm = 0o755 if mode == MODE_EXEC else 0o644
    fd = os.open(dest, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, perm)
    try:
        # Exactly, whatever the umask, and before any byte: a staged file that holds its
        # content (reusable after a kill) always has its mode too.
        os.fchmod(fd, perm)
        if data.startswith(MAGIC):
            with open(fd, "w+b", closefd=False) as fh:
                _write_chunked(repo, chunks, oid, data, fh, where, base)
        else:
            view = memoryview(data)  # an inline blob: already read and verified, one write
            while view:
                view = view[os.write(fd, view) :]
        if fsync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(dest)
        raise
    os.close(fd)


def _write_chunked(
    repo: pygit2.Repository,
    chunks: ChunkStore,
    oid: str,
    data: bytes,
    fh,
    where: str,
    base: tuple[str, str] | None,
) -> None:
    """Write the file behind manifest ``data`` (entry ``oid``) into the empty ``fh``,
    reusing ``base``'s shared prefix when worth it, every byte verified."""
    if base is not None and _write_reusing(repo, chunks, oid, base, fh, where):
        return
    fh.seek(0)
    fh.truncate()
    written = flushed = 0
    for piece in _stream_manifest(chunks, oid, data, where):
        fh.write(piece)
        written += len(piece)
        if written - flushed >= WRITEBACK_BYTES:
            fh.flush()  # start the disk now, so the fsync waits for the tail only
            start_writeback(fh.fileno(), flushed, written - flushed)
            flushed = written
    fh.flush()
