"""Checks on what a peer sends that hashing alone does not cover.

An object that hashes to its id can still be a commit that does not parse, a tree whose
directory entry names a file, or a manifest that lies about its chunks' lengths; a reply can
carry objects nobody asked for, sizes that are not numbers, or an error message built to
flood or repaint a terminal. Each check here refuses such input with one line (a
:class:`VerifyError` for content, a :class:`TransportError` for the conversation) before it
reaches the store, the working files or the user's screen.
"""

from __future__ import annotations

import re
from typing import Any

from usr.errors import InputError, TransportError, VerifyError
from usr.layout import check_relpath

_HEX40 = re.compile(rb"^[0-9a-f]{40}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")
#: Longest text of a peer's (error message, stderr line) shown to the user.
TEXT_LIMIT = 500

_TREE_MODES = {b"40000": "tree", b"100644": "blob", b"100755": "blob"}


def parse_tree(data: bytes, where: str = "tree") -> list[tuple[str, str, str]]:
    """``(kind, name, oid)`` of each entry of raw git tree bytes, refusing what usr never
    writes: escaping or runtime names, symlinks, submodules, duplicates."""
    out: list[tuple[str, str, str]] = []
    seen: set[bytes] = set()
    i = 0
    while i < len(data):
        sp = data.find(b" ", i)
        nul = data.find(b"\x00", sp + 1)
        if sp < 0 or nul < 0 or nul + 21 > len(data):
            raise VerifyError(f"{where}: malformed tree object")
        mode, name = data[i:sp], data[sp + 1 : nul]
        kind = _TREE_MODES.get(mode)
        if kind is None:
            raise VerifyError(f"{where}: entry {name[:60]!r} has refused mode {mode.decode()}")
        if name in seen:
            raise VerifyError(f"{where}: duplicate entry {name[:60]!r}")
        seen.add(name)
        try:
            text = name.decode("utf-8")
            if "/" in text:
                raise InputError("slash in name")
            check_relpath(text)
        except (UnicodeDecodeError, InputError):
            raise VerifyError(f"{where}: refused entry name {name[:60]!r}") from None
        out.append((kind, text, data[nul + 1 : nul + 21].hex()))
        i = nul + 21
    return out


def commit_links(data: bytes, where: str) -> tuple[str, list[str]]:
    """``(tree, parents)`` of raw commit bytes; refuses anything git would not parse.

    The header must be ``tree`` then any ``parent`` lines (40 lowercase hex each), then
    ``author`` and ``committer``, then a blank line before the message.
    """
    header, sep, _ = data.partition(b"\n\n")
    lines = header.split(b"\n")
    if not sep or len(lines) < 3 or not lines[0].startswith(b"tree "):
        raise VerifyError(f"{where}: malformed commit object")
    tree = lines[0][5:]
    parents = []
    i = 1
    while i < len(lines) and lines[i].startswith(b"parent "):
        parents.append(lines[i][7:])
        i += 1
    ids = [tree, *parents]
    if not all(_HEX40.match(x) for x in ids):
        raise VerifyError(f"{where}: malformed commit object (bad tree or parent id)")
    rest = lines[i : i + 2]
    if len(rest) < 2 or not rest[0].startswith(b"author ") or not rest[1].startswith(b"committer "):
        raise VerifyError(f"{where}: malformed commit object (no author or committer)")
    return tree.decode(), [x.decode() for x in parents]


def check_links(store: Any, types: dict[str, str], links: list[tuple[str, str, str]]) -> None:
    """Every ``(parent, child, kind)`` link a received commit or tree made must resolve to a
    stored object of that kind (subtrees and commit trees; file contents may come later).

    Run once a stream ended: objects arrive children first, so a child is either in the
    stream (``types``) or was stored before. A peer that names a missing subtree, or a file
    where a directory should be, is refused here rather than failing a later checkout."""
    for parent, child, kind in links:
        found = types.get(child)
        if found is None and store.has_object(child):
            found = store.read_object(child)[0]
        if found is None:
            raise VerifyError(f"{parent}: names {kind} {child}, which was not sent")
        if found != kind:
            raise VerifyError(f"{parent}: names {child} as a {kind}, but it is a {found}")


def check_sizes(sizes: Any, peer: str) -> dict[str, int]:
    """The ``sizes`` of an ``objects`` reply: object id -> non-negative integer."""
    if not isinstance(sizes, dict):
        raise TransportError(f"bad objects reply from {peer}: sizes is not a mapping")
    out: dict[str, int] = {}
    for key, value in sizes.items():
        if not isinstance(key, str) or not _HEX40.match(key.encode()):
            raise TransportError(f"bad objects reply from {peer}: size of {key[:80]!r}")
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise TransportError(f"bad objects reply from {peer}: size {str(value)[:40]!r}")
        out[key] = value
    return out


def peer_text(text: Any, limit: int = TEXT_LIMIT) -> str:
    """A peer's words made safe to print on one line: control characters (newlines,
    terminal escapes) become one space, and the text is cut to ``limit`` characters."""
    clean = _CONTROL.sub(" ", str(text)).strip()
    return clean if len(clean) <= limit else clean[:limit] + " ...[cut]"
