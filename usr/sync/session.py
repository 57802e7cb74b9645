"""One protocol session with a server: :class:`Session`.

A session speaks to ``usr plumbing serve`` over any byte channel — a local subprocess, an
SSH exec channel, or the warm-auth connection holder — with the same methods, so the sync
engine never knows which. The transports wrap their channels in it (:mod:`usr.ssh`,
:mod:`usr.sync.connholder`); :mod:`usr.sync.client` opens one by profile name, as its
subclass ``RemoteSession``::

    with open_session("bu-scc", remotes_config=None) as remote:
        heads = remote.heads("densegen/my_dataset")

Every method is one request and one reply (bulk transfers stream many frames each way
without waiting), so a no-op sync costs a handful of round trips whatever the dataset size.
The handshake, the queries and file mode are here; the fetch and push requests are
:mod:`usr.sync.fetching` and :mod:`usr.sync.pushing`, the channel and its failures
:mod:`usr.sync.conversation`. Imports the protocol and those modules, never a transport.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from usr import __version__
from usr.errors import TransportError
from usr.layout import validate_dataset_id
from usr.store.objects import inline_limit
from usr.sync import protocol as p
from usr.sync.fetching import Fetching
from usr.sync.pushing import Pushing


class Session(Fetching, Pushing):
    """One protocol session with a server. Use as a context manager; see docs/protocol.md.

    Constructed as :class:`usr.sync.conversation.Conversation` is (``channel``, ``name``,
    ``closer``, ``stderr``, ``lock_timeout``).
    """

    def hello(self) -> dict[str, Any]:
        """Exchange versions; refuses a server speaking another protocol version."""
        start = time.monotonic()
        with self._exchange():
            self.fio.read_magic()
        offer = p.manifest_first_enabled()
        caps: dict[str, Any] = {p.MANIFEST_FIRST: True} if offer else {}
        reply = self._request(
            "hello",
            "hello",
            usr_version=__version__,
            protocol=p.PROTOCOL_VERSION,
            lock_timeout=self.lock_timeout,
            inline_limit=inline_limit(),
            **caps,
        )
        if reply.get("protocol") != p.PROTOCOL_VERSION:
            raise TransportError(
                f"{self.name} speaks protocol {reply.get('protocol')!r}, this usr "
                f"{__version__} speaks {p.PROTOCOL_VERSION}",
                "install the same usr version on both machines",
            )
        self.server = reply
        self.manifest_first = offer and reply.get(p.MANIFEST_FIRST) is True
        self.handshake_seconds = time.monotonic() - start
        return reply

    def heads(self, ds: str, scan: str | None = None) -> dict[str, Any]:
        """``{"exists": bool, "head": commit | None, "refs": {name: commit}, "tree": id |
        None}`` of ``ds``.

        ``exists`` says the dataset directory is there; ``head`` is None until it has a
        recorded state. ``scan``: the remote also walks its working files and replies their
        ``tree`` (None when it has no store): ``"record"`` walks under its dataset lock and
        keeps the walk for the ``record(..., scanned=True)`` that follows, ``"look"`` (a
        diff) takes no lock and keeps nothing."""
        fields: dict[str, Any] = {} if scan is None else {"scan": scan}
        r = self._request("heads", "heads", ds=validate_dataset_id(ds), **fields)
        refs = r.get("refs") or {}
        if not isinstance(refs, dict):
            raise TransportError(f"bad heads reply from {self.name}")
        tree = r.get("tree")
        return {
            "exists": bool(r.get("exists")),
            "head": _oid_or_none(r.get("head"), self.name),
            "refs": {str(k): _oid_or_none(v, self.name) for k, v in refs.items()},
            "tree": None if tree is None else p.check_oid(tree, self.name),
        }

    def record(
        self,
        ds: str,
        action: str,
        actor: str | None = None,
        gate: bool = False,
        scanned: bool = False,
    ) -> dict[str, Any]:
        """Have the remote record its working state under its dataset lock (the one
        ``Store.record``) -> ``{"commit": head after, "created": bool}``. ``gate``: the
        remote first checks the working files it would record (:mod:`usr.sync.gate`).
        ``scanned``: take the walk of ``heads(ds, scan="record")`` if its HEAD is unmoved."""
        fields: dict[str, Any] = {"gate": True} if gate else {}
        if scanned:
            fields["scanned"] = True
        r = self._request(
            "record", "recorded", ds=validate_dataset_id(ds), action=action, actor=actor, **fields
        )
        return {
            "commit": _oid_or_none(r.get("commit"), self.name),
            "created": bool(r.get("created")),
        }

    def working_tree(self, ds: str) -> str:
        """Tree id of the remote's working files now, without committing (diff, dry-run).

        Fetch its objects with ``fetch_trees(store, ds, tree_id)`` to compare it locally."""
        r = self._request("working-tree", "working-tree", ds=validate_dataset_id(ds))
        return p.check_oid(r.get("tree"), self.name)

    def log(self, ds: str, limit: int | None = None) -> list[dict[str, Any]]:
        """The remote history from its head, newest first: dicts with at least ``id``."""
        r = self._request("log", "log", ds=validate_dataset_id(ds), limit=limit)
        commits = r.get("commits")
        if not isinstance(commits, list):
            raise TransportError(f"bad log reply from {self.name}")
        return commits

    def probe(self) -> dict[str, Any]:
        """Doctor facts about the served root: exists, writable, free disk, a test lock."""
        return self._request("probe", "probe")

    # -- file mode (one plain file; see usr/sync/files.py) ---------------------------------
    def file_stat(self, root: str, path: str) -> dict[str, Any]:
        """``{"exists", "size", "blake3"}`` of ``path`` under the served ``root`` ("base":
        base_dir, "repo": repo_root); size and blake3 are None when it is absent."""
        r = self._request("file-stat", "file-stat", root=root, path=path)
        exists = p.require(r, "exists", bool, self.name)
        size = p.require(r, "size", int, self.name) if exists else None
        digest = p.check_cid(r.get("blake3"), self.name) if exists else None
        return {"exists": exists, "size": size, "blake3": digest}

    def file_get(
        self, root: str, path: str, dest: Path, expect_current: str | None, want: str
    ) -> dict[str, Any]:
        """Bring ``path`` into ``dest`` (temp, verified piece by piece and whole, then
        renamed) if the remote file hashes to ``want`` and ``dest`` still hashes to
        ``expect_current`` (None: still absent). Returns ``{"size", "blake3"}``."""
        from usr.sync import files

        with self._exchange(), self._meter("file get", self.fio.bytes_in) as meter:
            self.fio.send_message("file-get", root=root, path=path)
            self.fio.flush()
            return files.receive(self.fio, dest, self.name, expect_current, want, meter)

    def file_put(
        self, root: str, path: str, source: Path, want: str, expect: str | None
    ) -> dict[str, Any]:
        """Send ``source`` to ``path``; the remote replaces its file atomically only if the
        bytes hash to ``want`` and its file still hashes to ``expect`` (None: absent)."""
        from usr.sync import files

        with self._exchange():
            self.fio.send_message("file-put", root=root, path=path, blake3=want, expect=expect)
            files.send(self.fio, source, str(source))
            self.fio.flush()
            r = self.fio.read_message("file-put")
        return {
            "size": p.require(r, "size", int, self.name),
            "blake3": p.check_cid(r.get("blake3"), self.name),
        }


def _oid_or_none(value: Any, peer: str) -> str | None:
    return None if value is None else p.check_oid(value, peer)
