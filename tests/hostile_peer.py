"""A hostile usr peer for the security tests: it speaks usr's wire protocol through the
framing of ``usr.sync.protocol`` (never a copy of it) and then deviates on purpose.

Server side — a profile's ``remote_usr`` (local remote, or through the real sshd)::

    python tests/hostile_peer.py server ATTACK plumbing serve --root BASE

It answers like the real ``usr plumbing serve`` (it *is* ``usr.sync.server.Server``) for
one dataset whose real history lives under BASE, except that the history it offers ends in
one crafted commit on top of the real head, carrying ATTACK (see :data:`SERVER_ATTACKS`).

Client side — pushes crafted data to a real serve command given after ``--``::

    python tests/hostile_peer.py client ATTACK DATASET -- usr plumbing serve --root BASE

It prints each reply of the server as one JSON line, then ``{"t": "exit", "status": N}``
with the server's exit status (see :data:`CLIENT_ATTACKS`). The pushed commit sits on top of
the served dataset's real head, so only the attack can be the reason for a refusal.
"""

from __future__ import annotations

import contextlib
import json
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from usr.store.chunks import chunk_id  # noqa: E402
from usr.store.objects import Manifest, git_object_id  # noqa: E402
from usr.sync import protocol as p  # noqa: E402

FILE, DIR, LINK, GITLINK = b"100644", b"40000", b"120000", b"160000"


# -- crafting objects -------------------------------------------------------------------------
@dataclass
class Universe:
    """Objects (and chunks) a hostile peer offers on top of a real head, and how it lies."""

    objects: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)  # writable order: children first
    chunks: dict[str, bytes] = field(default_factory=dict)
    head: str = ""
    #: Bytes sent instead of the true ones, by object or chunk id.
    forged: dict[str, bytes] = field(default_factory=dict)
    #: Raw bytes written to the wire after the frames of the first ``get`` that names them.
    tail: bytes = b""
    end_after_tail: bool = False
    #: Valid objects sent that nobody asked for.
    unasked: list[tuple[str, bytes]] = field(default_factory=list)
    #: Chunks sent with the objects, before any chunk was asked for.
    unasked_chunks: list[bytes] = field(default_factory=list)
    #: Type code put on the wire for an object, when it lies about the type.
    wire_type: dict[str, str] = field(default_factory=dict)

    def add(self, kind: str, data: bytes) -> str:
        oid = git_object_id(kind, data)
        if oid not in self.objects:
            self.objects[oid] = (kind, data)
            self.order.append(oid)
        return oid

    def blob(self, data: bytes) -> str:
        return self.add("blob", data)

    def tree(self, entries: list[tuple[bytes, bytes, str]]) -> str:
        return self.add("tree", tree_bytes(entries))

    def commit(self, tree: str, parents: list[str], message: str = "hostile") -> str:
        return self.add("commit", commit_bytes(tree, parents, message))


def tree_bytes(entries: list[tuple[bytes, bytes, str]]) -> bytes:
    """Raw git tree bytes, entries exactly as given (no sorting, no checks)."""
    return b"".join(
        mode + b" " + name + b"\x00" + bytes.fromhex(oid) for mode, name, oid in entries
    )


def commit_bytes(tree: str, parents: list[str], message: str) -> bytes:
    lines = [f"tree {tree}"] + [f"parent {x}" for x in parents]
    who = "hostile <hostile@example.invalid> 1700000000 +0000"
    lines += [f"author {who}", f"committer {who}", "", message, ""]
    return "\n".join(lines).encode()


def real_entries(tree_data: bytes) -> list[tuple[bytes, bytes, str]]:
    """The entries of a real (well-formed) tree, as ``(mode, name, oid)``."""
    out, i = [], 0
    while i < len(tree_data):
        sp = tree_data.index(b" ", i)
        nul = tree_data.index(b"\x00", sp)
        out.append((tree_data[i:sp], tree_data[sp + 1 : nul], tree_data[nul + 1 : nul + 21].hex()))
        i = nul + 21
    return out


def _nested(u: Universe, names: list[bytes], leaf: bytes) -> str:
    """A chain of trees ``names[0]/names[1]/.../pwned`` ending in a blob: a path attack."""
    oid = u.tree([(FILE, b"pwned", u.blob(leaf))])
    for name in reversed(names):
        oid = u.tree([(DIR, name, oid)])
    return oid


# Each attack takes the real head's tree entries and a sentinel path (where a successful
# escape would write) and fills the universe; the crafted commit is added by the caller.
Attack = Callable[[Universe, list[tuple[bytes, bytes, str]], str], list[tuple[bytes, bytes, str]]]


def _dotdot(u, base, sentinel):
    # ../../sentinel/pwned seen from the dataset directory (each ".." is one tree level).
    chain = _nested(u, [b"..", b".."], b"escaped\n")
    return base + [(DIR, b"..", chain)]


def _absolute(u, base, sentinel):
    return base + [(FILE, (sentinel + "/pwned").encode(), u.blob(b"absolute\n"))]


def _empty_name(u, base, sentinel):
    return base + [(FILE, b"", u.blob(b"empty name\n"))]


def _dot_usr(u, base, sentinel):
    refs = u.tree([(FILE, b"main", u.blob(b"0" * 40 + b"\n"))])
    heads = u.tree([(DIR, b"heads", refs)])
    return base + [(DIR, b".usr", u.tree([(DIR, b"refs", heads)]))]


def _runtime_lock(u, base, sentinel):
    return base + [(FILE, b".usr.lock", u.blob(b"held forever\n"))]


def _symlink(u, base, sentinel):
    return base + [(LINK, b"link", u.blob(sentinel.encode()))]


def _submodule(u, base, sentinel):
    return base + [(GITLINK, b"sub", git_object_id("commit", b"elsewhere"))]


def _duplicate(u, base, sentinel):
    name = base[0][1]
    return base + [(FILE, name, u.blob(b"second copy with other bytes\n"))]


def _type_confusion(u, base, sentinel):
    # A directory entry that names a blob.
    return base + [(DIR, b"_derived", u.blob(b"i am not a tree\n"))]


def _huge_manifest(u, base, sentinel):
    # A file claiming 1 PiB in one chunk; the chunk itself is small and honest.
    data = b"small honest chunk" * 100
    cid = chunk_id(data)
    u.chunks[cid] = data
    size = 1 << 50
    manifest = Manifest(size=size, blake3=chunk_id(b"whatever"), chunks=((cid, size),))
    return _replace(base, b"records.parquet", u.blob(manifest.encode()))


def _chunk_mismatch(u, base, sentinel):
    pieces = [bytes([i]) * 40_000 for i in range(3)]
    cids = [chunk_id(x) for x in pieces]
    u.chunks.update(zip(cids, pieces, strict=True))
    whole = b"".join(pieces)
    manifest = Manifest(
        len(whole), chunk_id(whole), tuple((c, len(x)) for c, x in zip(cids, pieces, strict=True))
    )
    u.forged[cids[1]] = b"\xff" * 40_000  # sent under the id of the second chunk
    return _replace(base, b"records.parquet", u.blob(manifest.encode()))


def _chunk_length_lie(u, base, sentinel):
    # The chunk's bytes match its id, but not the length its manifest claims for it.
    real = b"a" * 30_000
    cid = chunk_id(real)
    u.chunks[cid] = real
    manifest = Manifest(60_000, chunk_id(b"a" * 60_000), ((cid, 60_000),))
    return _replace(base, b"records.parquet", u.blob(manifest.encode()))


def _object_mismatch(u, base, sentinel):
    oid = u.blob(b"the honest bytes of meta.md\n")
    u.forged[oid] = b"tampered bytes sent under the honest id\n"
    return _replace(base, b"meta.md", oid)


def _bad_tree(u, base, sentinel):
    sub = u.add("tree", b"100644 no-nul-and-no-id")
    return base + [(DIR, b"_derived", sub)]


def _tag_object(u, base, sentinel):
    tag = u.add("tag", b"object " + b"0" * 40 + b"\ntype commit\ntag t\n\nx\n")
    return base + [(FILE, b"tagged", tag)]


def _unasked(u, base, sentinel):
    data = b"an object nobody asked for\n"
    u.unasked.append(("blob", data))
    return _replace(base, b"meta.md", u.blob(b"# meta, new\n"))


def _unasked_chunk(u, base, sentinel):
    data = b"a chunk nobody asked for" * 50
    u.unasked_chunks.append(data)
    return _replace(base, b"meta.md", u.blob(b"# meta, new again\n"))


def _truncated(u, base, sentinel):
    u.tail = p.HEADER.pack(p.OBJECT, 5000) + b"\x03" + b"\x00" * 40
    u.end_after_tail = True
    return _replace(base, b"meta.md", u.blob(b"# meta, truncated\n"))


def _oversized(u, base, sentinel):
    u.tail = p.HEADER.pack(p.OBJECT, p.MAX_FRAME + 1)
    u.end_after_tail = True
    return _replace(base, b"meta.md", u.blob(b"# meta, oversized\n"))


def _unknown_kind(u, base, sentinel):
    u.tail = b"Z" + struct.pack(">I", 3) + b"abc"
    u.end_after_tail = True
    return _replace(base, b"meta.md", u.blob(b"# meta, unknown kind\n"))


def _replace(base, name: bytes, oid: str, mode: bytes = FILE):
    return [(m, n, o) for m, n, o in base if n != name] + [(mode, name, oid)]


#: Attacks on the tree (refused as soon as the tree arrives: diff, pull and push alike).
TREE_ATTACKS: dict[str, Attack] = {
    "dotdot": _dotdot,
    "absolute": _absolute,
    "empty-name": _empty_name,
    "dot-usr": _dot_usr,
    "runtime-lock": _runtime_lock,
    "symlink": _symlink,
    "submodule": _submodule,
    "duplicate": _duplicate,
    "bad-tree": _bad_tree,
}
#: Attacks on file contents and on the stream (refused while contents move).
CONTENT_ATTACKS: dict[str, Attack] = {
    "type-confusion": _type_confusion,
    "huge-manifest": _huge_manifest,
    "chunk-mismatch": _chunk_mismatch,
    "chunk-length-lie": _chunk_length_lie,
    "object-mismatch": _object_mismatch,
    "tag-object": _tag_object,
    "unasked": _unasked,
    "unasked-chunk": _unasked_chunk,
    "truncated": _truncated,
    "oversized": _oversized,
    "unknown-kind": _unknown_kind,
}
ATTACKS: dict[str, Attack] = {**TREE_ATTACKS, **CONTENT_ATTACKS}
#: Attacks on the commit itself (built by :func:`build`, not from a tree).
COMMIT_ATTACKS = ("bad-commit", "commit-bad-tree-line")
SERVER_ATTACKS = (*ATTACKS, *COMMIT_ATTACKS, "error-flood", "bad-sizes", "bad-head")
#: Attacks on a push (the server lies in its answers to ``have``).
PUSH_SERVER_ATTACKS = ("have-unoffered",)


def build(attack: str, store: Any, sentinel: str) -> Universe:
    """The crafted commit (on top of ``store``'s head) that carries ``attack``."""
    u = Universe()
    head = store.head()
    _, commit = store.read_object(head)
    tree = commit.split(b"\n", 1)[0].split(b" ", 1)[1].decode()
    base = real_entries(store.read_object(tree)[1])
    if attack == "have-unoffered":  # the real head: the lie is in the push negotiation
        u.head = head
    elif attack == "bad-commit":
        u.head = u.add("commit", b"this is not a commit at all\n")
    elif attack == "commit-bad-tree-line":
        u.head = u.add("commit", commit_bytes("../../../etc/passwd" + "0" * 21, [head], "x"))
    else:
        entries = ATTACKS[attack](u, base, sentinel) if attack in ATTACKS else base
        if attack not in ATTACKS:  # an honest-looking commit; the lie is elsewhere
            entries = _replace(base, b"meta.md", u.blob(f"# {attack}\n".encode()))
        u.head = u.commit(u.tree(entries), [head], f"hostile: {attack}")
    return u


# -- the hostile server ---------------------------------------------------------------------------
def run_server(attack: str, root: Path) -> int:
    """``usr plumbing serve`` that offers a crafted head for every dataset it is asked about."""
    from usr.sync.server import Server

    sentinel = str(root.parent / "sentinel")

    class HostileServer(Server):
        universe: Universe | None = None

        def _universe(self, msg: dict[str, Any]) -> Universe:
            if self.universe is None:
                self.universe = build(attack, self._store(msg), sentinel)
            return self.universe

        def _lookup(self, msg: dict[str, Any], oid: str) -> tuple[str, bytes]:
            u = self._universe(msg)
            if oid in u.objects:
                return u.objects[oid]
            return self._store(msg).read_object(oid)

        def op_heads(self, msg: dict[str, Any]) -> None:
            if attack == "error-flood":
                flood = "\x1b[2J\x1b[31mremote says:\n" + "spam line\r\n" * 20_000
                self.fio.send_message("error", kind="auth", message=flood, hint=flood)
                return
            head = "../../etc/passwd" if attack == "bad-head" else self._universe(msg).head
            self.fio.send_message("heads", exists=True, head=head, refs={"refs/heads/main": head})

        def op_record(self, msg: dict[str, Any]) -> None:
            self.fio.send_message("recorded", commit=self._universe(msg).head, created=False)

        def op_working_tree(self, msg: dict[str, Any]) -> None:
            u = self._universe(msg)
            kind, data = u.objects[u.head]
            tree = data[5:45].decode() if kind == "commit" and data.startswith(b"tree ") else u.head
            self.fio.send_message("working-tree", tree=tree)

        def op_have(self, msg: dict[str, Any]) -> None:
            if attack != "have-unoffered":
                return super().op_have(msg)
            # Ask for more than was offered: an object id the client did not list.
            oids = [*msg.get("oids", []), git_object_id("blob", b"not offered\n")]
            self.fio.send_message("have", oids=oids, cids=msg.get("cids", []))

        def op_want(self, msg: dict[str, Any]) -> None:
            u = self._universe(msg)
            blobs = bool(msg.get("blobs", True))
            oids = [o for o in u.order if blobs or u.objects[o][0] != "blob"]
            sizes: dict[str, Any] = {
                o: len(u.objects[o][1]) for o in u.order if u.objects[o][0] == "blob"
            }
            if attack == "bad-sizes":
                sizes = {"not-an-id": "lots", u.head: None}
            types = [u.objects[o][0] for o in oids]
            self.fio.send_message("objects", oids=oids, types=types, sizes=sizes)

        def op_get(self, msg: dict[str, Any]) -> None:
            u = self._universe(msg)
            oids, cids = msg.get("oids", []), msg.get("cids", [])
            for oid in oids:
                kind, data = self._lookup(msg, oid)
                kind = u.wire_type.get(oid, kind)
                self.fio.send_object(kind, oid, u.forged.get(oid, data))
            for kind, data in u.unasked:
                self.fio.send_object(kind, git_object_id(kind, data), data)
            for data in u.unasked_chunks if oids else ():
                self.fio.send_chunk(chunk_id(data), data)
            for cid in cids:
                data = u.chunks.get(cid)
                if data is None:
                    data = self._store(msg).chunks.get(cid)
                self.fio.send_chunk(cid, u.forged.get(cid, data))
            if u.tail and (oids or cids):
                self.fio.flush()
                self.fio.channel.write(u.tail)
                self.fio.channel.flush()
                if u.end_after_tail:
                    raise SystemExit(0)
            self.fio.send_message("done", sent=len(oids) + len(cids))

    fio = p.FrameIO(p.FileChannel(sys.stdin.buffer, sys.stdout.buffer), peer="client")
    return HostileServer(root, fio).run()


# -- the hostile client ---------------------------------------------------------------------------
#: Dataset ids that name something outside the served root (or nothing at all).
ESCAPING_IDS = ("../x", "/etc", "a/../../b", "..", "ns/../../x", "a/b/c", "", ".usr")


def run_client(attack: str, ds: str, serve_argv: list[str]) -> int:
    """Push ``attack`` to a real serve process and print its replies, one JSON per line."""
    proc = subprocess.Popen(serve_argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    fio = p.FrameIO(p.FileChannel(proc.stdout, proc.stdin), peer="server")
    replies: list[dict[str, Any]] = []

    def say(t: str, **fields: Any) -> None:
        fio.send_message(t, **fields)

    def collect(n: int) -> None:
        if not proc.stdin.closed:
            fio.flush()
        for _ in range(n):
            try:
                frame = fio.read_frame(eof_ok=True)
            except p.TransportError as exc:
                replies.append({"t": "client-saw", "message": exc.message})
                return
            if frame is None:
                return
            replies.append(json.loads(frame[1]) if frame[0] == p.JSON else {"t": "frame"})
            print(json.dumps(replies[-1]), flush=True)

    fio.read_magic()
    say("hello", usr_version="hostile", protocol=p.PROTOCOL_VERSION, lock_timeout=5)
    collect(1)
    with contextlib.suppress(BrokenPipeError, ConnectionError):
        # A JSON list of ids (or paths) runs the attack once per item, in one session.
        for one in json.loads(ds) if ds.startswith("[") else [ds]:
            _client_attack(attack, one, fio, say, collect, proc)
    with contextlib.suppress(OSError):
        proc.stdin.close()
    status = proc.wait(timeout=60)
    print(json.dumps({"t": "exit", "status": status}), flush=True)
    return 0


def _client_attack(attack: str, ds: str, fio: p.FrameIO, say, collect, proc) -> None:
    if attack == "escape-id":
        # Every request that names a dataset, with an id the server must refuse. ``pack``
        # goes last: once it is refused, frames after it would be read as requests.
        blob = git_object_id("blob", b"x\n")
        say("heads", ds=ds)
        say("have", ds=ds, oids=[blob], cids=[], create=True)
        say("record", ds=ds, action="hostile", actor=None)
        say("working-tree", ds=ds)
        say("log", ds=ds, limit=5)
        say("want", ds=ds, wants=[blob], haves=[], blobs=True)
        say("get", ds=ds, oids=[blob], cids=[])
        say("update", ds=ds, new=blob, old=None)
        say("pack", ds=ds, create=True)
        collect(9)
        return
    if attack == "escape-file":
        # File mode's three requests with a path (here ``ds``) that must stay under --root.
        payload = b"written by a hostile client\n"
        digest = chunk_id(payload)
        say("file-stat", root="base", path=ds)
        say("file-get", root="base", path=ds)
        say("file-put", root="base", path=ds, blake3=digest, expect=None)
        fio.send_chunk(digest, payload)
        say("file-end", size=len(payload), blake3=digest)
        collect(3)
        return
    if attack == "get-unknown":
        say("get", ds=ds, oids=["0" * 40], cids=[])
        collect(1)
        say("get", ds=ds, oids=[], cids=["0" * 64])
        collect(1)
        say("want", ds=ds, wants=["0" * 40], haves=[], blobs=True)
        collect(1)
        return
    if attack == "update-missing":
        # A commit whose tree names a file that is never sent, then the ref move.
        from usr.store import Store

        store = Store.open(_served_dir(proc, ds), create=False)
        head = store.head()
        u = Universe()
        base = real_entries(store.read_object(store.tree_of(head))[1])
        missing = git_object_id("blob", b"never sent\n")
        tree = u.tree(_replace(base, b"meta.md", missing))
        new = u.commit(tree, [head], "missing blob")
        say("pack", ds=ds, create=False)
        for oid in (tree, new):
            fio.send_object(u.objects[oid][0], oid, u.objects[oid][1])
        say("end")
        say("update", ds=ds, new=new, old=head)
        collect(2)
        return
    from usr.store import Store

    store = Store.open(_served_dir(proc, ds), create=False)
    sentinel = str(_served_dir(proc, ds).parent.parent / "sentinel")
    stored_first = attack.endswith("-stored")  # the chunks land in an earlier, honest pack
    u = build(attack.removesuffix("-stored"), store, sentinel)
    head = store.head()
    sent: set[str] = set()
    if stored_first:
        say("pack", ds=ds, create=False)
        for cid, data in u.chunks.items():
            fio.send_chunk(cid, data)
            sent.add(cid)
        say("end")
        collect(1)
    say("have", ds=ds, oids=list(u.order), cids=list(u.chunks), create=False)
    collect(1)
    say("pack", ds=ds, create=False)
    for oid in u.order:
        kind, data = u.objects[oid]
        if kind == "blob" and data.startswith(b"\x00usr-manifest"):
            for cid, _n in Manifest.decode(data).chunks:
                if cid in u.chunks and cid not in sent:
                    fio.send_chunk(cid, u.forged.get(cid, u.chunks[cid]))
                    sent.add(cid)
        fio.send_object(u.wire_type.get(oid, kind), oid, u.forged.get(oid, data))
    for kind, data in u.unasked:
        fio.send_object(kind, git_object_id(kind, data), data)
    if u.tail:
        fio.flush()
        fio.channel.write(u.tail)
        fio.channel.flush()
        if u.end_after_tail:
            proc.stdin.close()
            collect(2)
            return
    say("end")
    say("update", ds=ds, new=u.head, old=head)
    collect(2)


def _served_dir(proc: subprocess.Popen, ds: str) -> Path:
    argv = proc.args
    return Path(argv[argv.index("--root") + 1]) / ds


def main(argv: list[str]) -> int:
    role, attack = argv[0], argv[1]
    if role == "server":
        rest = argv[2:]
        root = Path(rest[rest.index("--root") + 1]).expanduser().absolute()
        return run_server(attack, root)
    ds = argv[2]
    serve_argv = argv[argv.index("--") + 1 :]
    return run_client(attack, ds, serve_argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
