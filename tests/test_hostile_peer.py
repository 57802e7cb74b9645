"""Hostile peers: a server answering ``usr diff``/``usr pull`` and a client pushing to the
real ``usr plumbing serve``, both speaking usr's wire protocol (tests/hostile_peer.py frames
through ``usr.sync.protocol``) and then lying on purpose.

Every refusal is checked the same way (:func:`assert_unharmed`): one ``usr: error:`` line
with the expected exit code; every file that existed on either side byte-for-byte as before
(refs, objects, chunk packs, working files); nothing new outside the receiving store's
object and chunk directories; every object or chunk that did land verifies against its id
and passes the receiver's checks (verified content is kept, unreferenced, so a rerun
resumes; see docs/protocol.md); and nothing in the sentinel directory next to both roots,
where each path attack aims.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import tomli_w

from tests.conftest import REPO, run_usr, usr_env
from tests.hostile_peer import CONTENT_ATTACKS, ESCAPING_IDS, TREE_ATTACKS, build
from tests.test_sync_scenarios import DS, make_dataset
from usr.store import Store, gitpack
from usr.store.objects import MAGIC, Manifest
from usr.sync import peercheck

HOSTILE = REPO / "tests" / "hostile_peer.py"
INPUT, VERIFY, TRANSPORT, AUTH = 3, 5, 6, 7

#: Exit code of ``usr pull`` against each hostile server (trees refused as they land are
#: verify errors; a broken conversation is a transport error).
SERVER_EXPECT: dict[str, tuple[int, str]] = {
    "dotdot": (VERIFY, "refused entry name b'..'"),
    "absolute": (VERIFY, "refused entry name b'/"),
    "empty-name": (VERIFY, "refused entry name b''"),
    "dot-usr": (VERIFY, "refused entry name b'.usr'"),
    "runtime-lock": (VERIFY, "refused entry name b'.usr.lock'"),
    "symlink": (VERIFY, "refused mode 120000"),
    "submodule": (VERIFY, "refused mode 160000"),
    "duplicate": (VERIFY, "duplicate entry"),
    "bad-tree": (VERIFY, "malformed tree"),
    "bad-commit": (VERIFY, "malformed commit"),
    "commit-bad-tree-line": (VERIFY, "malformed commit"),
    "type-confusion": (VERIFY, "names tree"),
    "huge-manifest": (VERIFY, "its manifest claims 1125899906842624"),
    "chunk-mismatch": (VERIFY, "bytes hash differently"),
    "chunk-length-lie": (VERIFY, "its manifest claims 60000"),
    "object-mismatch": (VERIFY, "hash to a different id"),
    "tag-object": (VERIFY, "object type not used by usr"),
    "unasked": (VERIFY, "which was not asked for"),
    "unasked-chunk": (VERIFY, "which was not asked for"),
    "truncated": (TRANSPORT, "closed mid-frame"),
    "oversized": (TRANSPORT, "exceeds the 67108864 limit"),
    "unknown-kind": (TRANSPORT, "unknown kind"),
    "bad-sizes": (TRANSPORT, "bad objects reply"),
    "bad-head": (TRANSPORT, "bad object id"),
    # The error class is the server's to name (docs/protocol.md "Errors"); its words are
    # cut to one bounded line with no terminal control characters.
    "error-flood": (AUTH, "remote says: spam line"),
}
#: Attacks refused before any commit is accepted: the tracking ref must not move either.
REFUSED_BEFORE_TRACKING = set(TREE_ATTACKS) | {
    "bad-commit",
    "commit-bad-tree-line",
    "type-confusion",
    "tag-object",
    "bad-sizes",
    "bad-head",
    "error-flood",
}


@dataclass
class World:
    """A cluster root holding DS, a laptop root holding a clone of it, a sentinel directory
    next to both (where an escape would land), and a remotes.toml."""

    top: Path

    cluster = property(lambda self: self.top / "cluster")
    laptop = property(lambda self: self.top / "laptop")
    sentinel = property(lambda self: self.top / "sentinel")
    config = property(lambda self: self.top / "remotes.toml")

    def add_remote(self, name: str, **table: object) -> str:
        doc = tomllib.loads(self.config.read_text()) if self.config.exists() else {}
        doc.setdefault("remotes", {})[name] = table
        self.config.write_text(tomli_w.dumps(doc))
        self.config.chmod(0o600)
        return name

    def hostile_server(self, attack: str) -> str:
        """A local remote whose serve command is the hostile server."""
        cmd = shlex.join([sys.executable, str(HOSTILE), "server", attack])
        return self.add_remote(
            f"hostile-{attack}", type="local", base_dir=str(self.cluster), remote_usr=cmd
        )

    def usr(self, *args: str):
        return run_usr(
            "--root", str(self.laptop), *args, env={"USR_REMOTES_PATH": str(self.config)}
        )


def snapshot(top: Path) -> dict[str, str]:
    """Every file and directory under ``top``: the hash of its bytes, ``dir`` or its link."""
    out = {}
    for path in sorted(top.rglob("*")):
        rel = path.relative_to(top).as_posix()
        if path.is_symlink():
            out[rel] = "link:" + str(path.readlink())
        elif path.is_dir():
            out[rel] = "dir"
        elif path.name.endswith(".lock") or rel.endswith((".usr/stat-cache", ".usr/index.json")):
            continue  # lock files are created empty and kept; the stat cache is a cache
        else:
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def assert_unharmed(
    world: World, before: dict[str, str], receiver: Path, attack: str | None = None
) -> None:
    """See the module docstring. ``receiver`` is the dataset directory that was sent to."""
    after = snapshot(world.top)
    changed = [k for k in before if after.get(k) != before[k]]
    assert changed == [], changed
    store_dir = (receiver / ".usr").relative_to(world.top).as_posix()
    allowed = tuple(f"{store_dir}/{d}" for d in ("objects/", "chunks/"))
    if attack is not None and attack not in REFUSED_BEFORE_TRACKING:
        allowed += (f"{store_dir}/refs/remotes/hostile-{attack}",)
    new = [k for k in after if k not in before]
    assert [k for k in new if not k.startswith(allowed)] == []
    assert list(world.sentinel.iterdir()) == []
    store = Store.open(receiver, create=False)
    for rel in new:
        parts = rel.split("/")
        if rel.startswith(f"{store_dir}/objects/") and len(parts[-2]) == 2 and after[rel] != "dir":
            _assert_sound(store, parts[-2] + parts[-1])
        elif rel.startswith(f"{store_dir}/objects/pack/") and rel.endswith(".idx"):
            for oid in gitpack.iter_pack_objects(world.top / rel):  # a pack a receive wrote
                _assert_sound(store, oid)
    if attack is not None:  # whatever the attack offered and did land is exactly its bytes
        u = build(attack, Store.open(world.cluster / DS, create=False), str(world.sentinel))
        for oid in u.objects:
            if store.has_object(oid):
                _assert_sound(store, oid)
        for cid in [*u.chunks, *u.forged]:
            if len(cid) == 64 and store.chunks.has(cid):
                store.chunks.get(cid)  # raises VerifyError unless the bytes hash to cid


def _assert_sound(store: Store, oid: str) -> None:
    """A stored object hashes to its id and passes the checks a receiver makes."""
    kind, data = store.read_object(oid)  # verifies the id
    if kind == "tree":
        peercheck.parse_tree(data)
    elif kind == "commit":
        peercheck.commit_links(data, oid)
    elif data.startswith(MAGIC):
        manifest = Manifest.decode(data)
        assert store.chunks.missing([c for c, _ in manifest.chunks]) == []
    assert kind in ("tree", "commit", "blob")


def assert_one_line(r, code: int, words: str) -> None:
    assert r.returncode == code, (r.returncode, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("usr: error: "), r.stderr
    assert words in lines[0], lines[0]
    assert len(lines[0]) < 2000 and not any(ord(c) < 32 or 127 <= ord(c) < 160 for c in lines[0])


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> World:
    world = World(tmp_path_factory.mktemp("hostile-template"))
    for d in (world.cluster, world.laptop, world.sentinel):
        d.mkdir()
    make_dataset(world.cluster)
    world.add_remote("honest", type="local", base_dir=str(world.cluster))
    r = world.usr("pull", DS, "honest", "-y")
    assert r.returncode == 0, r.stderr
    return world


@pytest.fixture
def world(template, tmp_path) -> World:
    copy = World(tmp_path / "w")
    shutil.copytree(template.top, copy.top, symlinks=True)
    copy.add_remote("honest", type="local", base_dir=str(copy.cluster))
    return copy


# -- a hostile server ---------------------------------------------------------------------------


@pytest.mark.parametrize("attack", sorted(SERVER_EXPECT))
def test_pull_refuses_hostile_server(world, attack):
    """``usr pull`` from a server that lies: refused, nothing of the laptop changed."""
    name = world.hostile_server(attack)
    before = snapshot(world.top)
    r = world.usr("pull", DS, name, "-y")
    assert_one_line(r, *SERVER_EXPECT[attack])
    assert_unharmed(world, before, world.laptop / DS, attack)


@pytest.mark.parametrize("attack", ["dotdot", "bad-sizes"])
def test_diff_refuses_hostile_server(world, attack):
    """``usr diff`` moves trees only; the same lies are refused the same way."""
    name = world.hostile_server(attack)
    before = snapshot(world.top)
    r = world.usr("diff", DS, name)
    assert_one_line(r, *SERVER_EXPECT[attack])
    assert_unharmed(world, before, world.laptop / DS, attack)


def test_push_refuses_server_asking_for_what_was_not_offered(world):
    """A server answering ``have`` with ids the push did not offer gets nothing: only the
    objects of the states being pushed ever leave the laptop."""
    name = world.hostile_server("have-unoffered")
    (world.laptop / DS / "meta.md").write_text("# changed on the laptop\n")
    before = snapshot(world.cluster)
    r = world.usr("push", DS, name, "-y")
    assert_one_line(r, TRANSPORT, "did not offer")
    assert snapshot(world.cluster) == before


def test_after_a_refusal_the_honest_remote_still_syncs(world):
    """A refused pull leaves a dataset that syncs normally: an honest pull is a NO-OP and a
    rerun of the hostile one is refused again with the same words."""
    name = world.hostile_server("chunk-mismatch")
    first = world.usr("pull", DS, name, "-y")
    assert first.returncode == VERIFY
    again = world.usr("pull", DS, name, "-y")
    assert again.returncode == VERIFY and again.stderr == first.stderr
    r = world.usr("pull", DS, "honest", "-y")
    assert r.returncode == 0 and r.stdout.startswith("PULL audit: NO-OP"), r.stderr


# -- a hostile client ---------------------------------------------------------------------------


def hostile_client(world: World, attack: str, ds: str = DS, serve: list[str] | None = None):
    """Run the hostile client against a real serve command: its replies and the server's
    exit status."""
    serve = serve or [sys.executable, "-m", "usr", "plumbing", "serve"]
    argv = [sys.executable, str(HOSTILE), "client", attack, ds, "--"]
    argv += [*serve, "--root", str(world.cluster)]
    proc = subprocess.run(argv, capture_output=True, text=True, env=usr_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    replies = [json.loads(line) for line in proc.stdout.splitlines()]
    assert replies[0]["t"] == "hello" and replies[-1]["t"] == "exit"
    return replies[1:-1], replies[-1]["status"]


PUSH_ATTACKS = sorted(
    {*TREE_ATTACKS, *CONTENT_ATTACKS, "bad-commit", "commit-bad-tree-line"}
    - {"unasked", "unasked-chunk"}  # a pusher may send what it likes; it is verified
)


@pytest.mark.parametrize("attack", PUSH_ATTACKS)
def test_serve_refuses_hostile_push(world, attack):
    """A push whose objects lie: the stream is refused, the ref update after it too, and
    the served dataset (ref, working files, stored objects) is as it was."""
    before = snapshot(world.top)
    replies, status = hostile_client(world, attack)
    errors = [m for m in replies if m["t"] == "error"]
    assert errors and all(m["kind"] in ("verify", "transport") for m in errors), replies
    assert not any(m["t"] == "updated" for m in replies)
    if errors[0]["kind"] == "transport":  # the stream itself broke: the session ends
        assert status == 1
    else:
        assert "refusing to move the ref" in errors[-1]["message"], replies
    assert all("\n" not in m["message"] for m in errors)
    assert_unharmed(world, before, world.cluster / DS, None)


@pytest.mark.parametrize("attack", ["huge-manifest", "chunk-length-lie"])
def test_manifest_lying_about_a_chunk_already_stored_is_refused(world, attack):
    """The chunk is honest and already in the receiver's store (an earlier transfer, another
    file); the manifest lies about its length. Refused before the manifest is stored,
    both ways, instead of failing in the middle of a checkout."""
    u = build(attack, Store.open(world.cluster / DS, create=False), str(world.sentinel))
    laptop = Store.open(world.laptop / DS, create=False)
    for cid, data in u.chunks.items():
        laptop.chunks.put(cid, data)
    name = world.hostile_server(attack)
    before = snapshot(world.top)
    r = world.usr("pull", DS, name, "-y")
    assert_one_line(r, VERIFY, "bytes for chunk")
    assert_unharmed(world, before, world.laptop / DS, attack)

    before = snapshot(world.top)
    replies, _ = hostile_client(world, f"{attack}-stored")
    assert replies[0]["t"] == "received" and replies[0]["chunks"] == len(u.chunks), replies
    errors = [m for m in replies if m["t"] == "error"]
    assert [m["kind"] for m in errors] == ["verify", "verify"], replies
    assert "bytes for chunk" in errors[0]["message"]
    assert_unharmed(world, before, world.cluster / DS, None)


def test_serve_refuses_update_to_incomplete_commit(world):
    """A commit whose tree names a file that never arrived: the ref does not move."""
    before = snapshot(world.top)
    replies, _ = hostile_client(world, "update-missing")
    assert replies[-1]["t"] == "error" and replies[-1]["kind"] == "verify"
    assert "did not arrive" in replies[-1]["message"]
    assert_unharmed(world, before, world.cluster / DS, None)


def test_serve_answers_unknown_ids_without_reading_elsewhere(world):
    before = snapshot(world.top)
    replies, status = hostile_client(world, "get-unknown")
    assert [m["kind"] for m in replies] == ["not-found", "verify", "not-found"], replies
    assert status == 0
    assert snapshot(world.top) == before


def _escaping_ids(world: World) -> list[str]:
    """Ids that name something outside the root: by syntax, or through symlinked
    namespace and dataset directories that point at the sentinel."""
    (world.cluster / "evil").symlink_to(world.sentinel)
    (world.cluster / "densegen" / "evil").symlink_to(world.sentinel)
    return [*ESCAPING_IDS, "evil/x", "densegen/evil", "evil"]


def test_serve_refuses_ids_outside_root(world):
    """Every request that names a dataset, with ids escaping ``--root``: each refused
    (input), nothing created or read outside the root, and the session goes on."""
    ids = _escaping_ids(world)
    before = snapshot(world.top)
    replies, status = hostile_client(world, "escape-id", json.dumps(ids))
    assert [m.get("kind") for m in replies] == ["input"] * 9 * len(ids), replies
    assert status == 0
    assert snapshot(world.top) == before


def test_serve_file_requests_stay_inside_root(world):
    """file-stat/file-get/file-put with paths that leave ``--root`` by syntax or through a
    symlink (a linked file, a linked directory): refused, a file outside is neither read
    nor written, nothing is created outside the root."""
    secret = world.sentinel / "secret"
    secret.write_bytes(b"outside the served root\n")
    (world.cluster / "link").symlink_to(secret)
    (world.cluster / "linkdir").symlink_to(world.sentinel)
    before = snapshot(world.top)
    paths = [
        "../sentinel/secret",
        "/etc/passwd",
        "a/../../sentinel/secret",
        "link",
        "linkdir/secret",
        "linkdir/new",
        f"{DS}/.usr/HEAD",
        "",
    ]
    replies, status = hostile_client(world, "escape-file", json.dumps(paths))
    assert [m.get("kind") for m in replies] == ["input"] * 3 * len(paths), replies
    assert "outside the served root" not in json.dumps(replies)
    assert status == 0
    assert snapshot(world.top) == before


# -- the same over the real sshd ----------------------------------------------------------------


@pytest.mark.ssh
@pytest.mark.parametrize("attack", ["chunk-mismatch"])
def test_pull_over_ssh_refuses_hostile_server(world, sshd, attack):
    """The hostile server as the profile's remote usr, reached through OpenSSH."""
    cmd = shlex.join([sys.executable, str(HOSTILE), "server", attack])
    table = sshd.profile(world.cluster, remote_usr=cmd)
    name = world.add_remote(f"hostile-{attack}", **table)
    before = snapshot(world.top)
    r = world.usr("pull", DS, name, "-y")
    assert_one_line(r, *SERVER_EXPECT[attack])
    assert_unharmed(world, before, world.laptop / DS, attack)


@pytest.mark.ssh
def test_serve_over_ssh_refuses_hostile_client(world, sshd):
    """The hostile client reaching ``usr plumbing serve`` through OpenSSH's ssh client."""
    ssh = [
        "ssh",
        "-F",
        str(sshd.ssh_config),
        "-p",
        str(sshd.port),
        "-i",
        str(sshd.user_key),
        "-o",
        f"UserKnownHostsFile={sshd.known_hosts}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "BatchMode=yes",
        f"{sshd.user}@{sshd.host}",
        sshd.remote_usr,
        "plumbing",
        "serve",
    ]
    ids = _escaping_ids(world)
    before = snapshot(world.top)
    replies, _ = hostile_client(world, "escape-id", json.dumps(ids), serve=ssh)
    assert [m.get("kind") for m in replies] == ["input"] * 9 * len(ids), replies
    replies, _ = hostile_client(world, "dotdot", serve=ssh)
    assert [m["kind"] for m in replies if m["t"] == "error"] == ["verify", "verify"]
    assert_unharmed(world, before, world.cluster / DS, None)
    assert os.listdir(world.sentinel) == []
