"""Safety gates: a sync never promotes a broken dataset (docs/reliability.md, "The gate").

Every refusal is checked the same way: a fingerprint of both roots (every working file's
bytes and both ``refs/heads/main``) before and after is identical, the error is a
:class:`VerifyError` (exit 5) naming the file and the check, and after the damage is
repaired the same command completes. Each family runs over the real OpenSSH sshd and over
a ``local`` remote.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import run_usr
from tests.reliability_helpers import sweep
from tests.test_sync_scenarios import DS, Env, make_dataset, make_env
from usr.dataset import Dataset
from usr.errors import ConflictError, VerifyError
from usr.layout import EVENTS_FILE, RECORDS_FILE
from usr.store import Store
from usr.store.objects import is_manifest_bytes
from usr.sync import engine
from usr.sync.engine import SyncOptions


@pytest.fixture(params=["local", "ssh"])
def env(request, tmp_path) -> Env:
    return make_env(request.param, tmp_path, request)


def fingerprint(env: Env, heads: bool = True) -> dict[str, str]:
    """Every working file under both roots (not the stores, nor staging: a transfer killed
    after its files were staged as they arrived leaves them there, never promoted) and
    both branch heads."""
    out: dict[str, str] = {}
    for side, root in (("laptop", env.local_root), ("cluster", env.remote_root)):
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root).as_posix()
            if ".usr" in rel.split("/") or rel.startswith(".usr-cache") or not path.is_file():
                continue
            if any(part.startswith(".usr-staging-") for part in rel.split("/")):
                continue
            if rel.endswith(".lock") or "/.usr." in f"/{rel}":
                continue
            out[f"{side}:{rel}"] = hashlib.sha1(path.read_bytes()).hexdigest()
        store_dir = root / DS
        if heads and (store_dir / ".usr").is_dir():
            out[f"{side}:HEAD"] = str(Store.open(store_dir, create=False).head())
    return out


def _parquet(table: pa.Table) -> bytes:
    out = io.BytesIO()
    pq.write_table(table, out)
    return out.getvalue()


def _good_records(directory: Path) -> pa.Table:
    return pq.read_table(directory / RECORDS_FILE)


#: name -> how to break a dataset directory; what the refusal names (file, check).
Damage = Callable[[Path], None]
DAMAGE: dict[str, tuple[Damage, str, str]] = {
    "truncated": (
        lambda d: (d / RECORDS_FILE).write_bytes((d / RECORDS_FILE).read_bytes()[:-40]),
        RECORDS_FILE,
        "parquet",
    ),
    "empty": (lambda d: (d / RECORDS_FILE).write_bytes(b""), RECORDS_FILE, "parquet"),
    "not-parquet": (
        lambda d: (d / RECORDS_FILE).write_bytes(b"id,sequence\nx,ACGT\n"),
        RECORDS_FILE,
        "parquet",
    ),
    "wrong-schema": (
        lambda d: (d / RECORDS_FILE).write_bytes(_parquet(pa.table({"id": ["a", "b"]}))),
        RECORDS_FILE,
        "schema",
    ),
    "extra-column": (
        lambda d: (d / RECORDS_FILE).write_bytes(
            _parquet(_good_records(d).append_column("infer__x", pa.array([1.0] * 2)))
        ),
        RECORDS_FILE,
        "schema",
    ),
    "duplicate-ids": (
        lambda d: (d / RECORDS_FILE).write_bytes(
            _parquet(pa.concat_tables([_good_records(d), _good_records(d).slice(0, 1)]))
        ),
        RECORDS_FILE,
        "unique-ids",
    ),
    "events-not-json": (
        lambda d: (d / EVENTS_FILE).open("ab").write(b"not json\n"),
        EVENTS_FILE,
        "event-lines",
    ),
    "events-partial-line": (
        lambda d: (d / EVENTS_FILE).open("ab").write(b'{"action": "cut'),
        EVENTS_FILE,
        "event-lines",
    ),
    "events-not-object": (
        lambda d: (d / EVENTS_FILE).open("ab").write(b"[1, 2]\n"),
        EVENTS_FILE,
        "event-lines",
    ),
}


#: Over sshd the families run one case each (the transport is the same code for all);
#: every case runs over the local remote.
SSH_CASES = ("truncated", "duplicate-ids", "events-partial-line")
#: CI runs 5 of the 9 damages over the local remote (a window that rotates with
#: USR_SWEEP_SEED, as the crash sweep's does; USR_FULL_SWEEP=1 runs all) and 3 over sshd.
MATRIX = [("local", d) for d in sweep(sorted(DAMAGE), 4, salt=21)] + [("ssh", d) for d in SSH_CASES]


@pytest.fixture
def kind_env(request, tmp_path) -> Env:
    return make_env(request.param, tmp_path, request)


def _repair(directory: Path, good: dict[str, bytes]) -> None:
    for name, data in good.items():
        (directory / name).write_bytes(data)


def _synced(env: Env) -> dict[str, bytes]:
    make_dataset(env.remote_root)
    env.pull()
    return {n: (env.local_dir / n).read_bytes() for n in (RECORDS_FILE, EVENTS_FILE)}


def _refused(env: Env, action: str, path: str, check: str, **kw) -> VerifyError:
    before = fingerprint(env)
    with pytest.raises(VerifyError) as exc:
        getattr(env, action)(**kw)
    assert fingerprint(env) == before, "a refusal changed a working file or a branch"
    assert exc.value.exit_code == 5
    assert f"{path} fails the {check} check" in exc.value.message
    assert "\n" not in exc.value.one_line()
    return exc.value


@pytest.mark.parametrize(("kind_env", "damage"), MATRIX, indirect=["kind_env"])
def test_a_pull_never_promotes_a_broken_state(kind_env: Env, damage: str) -> None:
    env = kind_env
    good = _synced(env)
    breaks, path, check = DAMAGE[damage]
    breaks(env.remote_dir)
    _refused(env, "pull", path, check)  # unrecorded on the cluster: refused before its record
    _repair(env.remote_dir, good)
    env.pull()  # repaired before anything was recorded: the pull completes (a no-op)
    breaks(env.remote_dir)
    Store.open(env.remote_dir).record("a batch that broke it")
    _refused(env, "pull", path, check)  # recorded there: refused before the checkout here
    if path == RECORDS_FILE:
        _repair(env.remote_dir, good)  # the fix is a new state; the pull now completes
        env.pull()
        assert (env.local_dir / RECORDS_FILE).read_bytes() == good[RECORDS_FILE]
    else:
        # A recorded log line cannot be taken back (the log is append-only along history):
        # the documented way on is to accept it, named.
        env.pull(no_validate=True)
        assert (env.local_dir / EVENTS_FILE).read_bytes() == (
            env.remote_dir / EVENTS_FILE
        ).read_bytes()


@pytest.mark.parametrize(("kind_env", "damage"), MATRIX, indirect=["kind_env"])
def test_a_push_never_promotes_a_broken_state(kind_env: Env, damage: str) -> None:
    env = kind_env
    good = _synced(env)
    breaks, path, check = DAMAGE[damage]
    breaks(env.local_dir)
    _refused(env, "push", path, check)
    _repair(env.local_dir, good)
    env.push()
    assert (env.remote_dir / RECORDS_FILE).read_bytes() == good[RECORDS_FILE]


@pytest.mark.parametrize("verify", ["hash", "size", "parquet", "auto"])
def test_the_gate_holds_under_every_verify_mode(env: Env, verify: str) -> None:
    _synced(env)
    DAMAGE["truncated"][0](env.remote_dir)
    _refused(env, "pull", RECORDS_FILE, "parquet", verify=verify)
    DAMAGE["duplicate-ids"][0](env.local_dir)
    _refused(env, "push", RECORDS_FILE, "unique-ids", verify=verify)


def test_a_bootstrap_push_refuses_a_malformed_event_log(env: Env) -> None:
    make_dataset(env.local_root)
    DAMAGE["events-partial-line"][0](env.local_dir)
    before = fingerprint(env)
    with pytest.raises(VerifyError, match=r"\.events\.log fails the event-lines check"):
        env.push()
    assert fingerprint(env) == before
    assert not env.remote_dir.exists()


def _broken_here(env: Env, damage: str) -> tuple[Store, str, str | None]:
    """Both sides synced, then ``damage`` done and recorded here (a client that skips its
    own gate): the local store, the broken commit, and the remote's head to push over."""
    _synced(env)
    DAMAGE[damage][0](env.local_dir)
    store = Store.open(env.local_dir)
    new = store.record("broken here").commit
    return store, new, Store.open(env.remote_dir, create=False).head()


def test_a_push_to_a_clean_remote_checks_beside_its_transfer(env: Env) -> None:
    """Against a remote that exists with nothing unrecorded, the local check runs while the
    push sends (objects reach the remote before the check answers), and its refusal still
    moves no ref on either side: the local record's commit was written, never named."""
    _synced(env)
    remote = Store.open(env.remote_dir, create=False)
    sent_before = sum(1 for _ in remote.repo.odb)
    local_head = Store.open(env.local_dir, create=False).head()
    DAMAGE["duplicate-ids"][0](env.local_dir)
    _refused(env, "push", RECORDS_FILE, "unique-ids")
    assert Store.open(env.local_dir, create=False).head() == local_head
    remote = Store.open(env.remote_dir, create=False)
    assert sum(1 for _ in remote.repo.odb) > sent_before, "nothing was sent before the check"


def test_push_y_checks_beside_its_transfer(env: Env) -> None:
    """``usr push -y`` asks nobody, so its local check runs beside the transfer (objects
    reach the remote before the refusal); the refusal is the gate's one line, exit 5, and
    no ref moves on either side."""
    _synced(env)
    local_head = Store.open(env.local_dir, create=False).head()
    sent_before = sum(1 for _ in Store.open(env.remote_dir, create=False).repo.odb)
    DAMAGE["duplicate-ids"][0](env.local_dir)
    before = fingerprint(env)
    r = _cli(env, "push", DS, "bu-scc", "-y")
    assert r.returncode == 5, r.stderr
    assert f"{RECORDS_FILE} fails the unique-ids check" in r.stderr
    assert fingerprint(env) == before
    assert Store.open(env.local_dir, create=False).head() == local_head
    remote = Store.open(env.remote_dir, create=False)
    assert sum(1 for _ in remote.repo.odb) > sent_before, "-y checked before it sent"


def test_a_refused_bootstrap_push_leaves_no_dataset_on_the_remote(env: Env) -> None:
    """A bootstrap also checks beside its transfer: the remote dataset (and its namespace
    directory) is created and sent to, and the refusal has the remote remove both
    (``abandon``), so the remote root is as it was."""
    make_dataset(env.local_root)
    local_head = Store.open(env.local_dir, create=False).head()
    DAMAGE["duplicate-ids"][0](env.local_dir)
    _refused(env, "push", RECORDS_FILE, "unique-ids")
    assert list(env.remote_root.iterdir()) == []
    assert Store.open(env.local_dir, create=False).head() == local_head


def _refuse_at_update() -> None:
    raise VerifyError("refused by the caller before the update")


def test_abandon_removes_only_what_this_connection_made(env: Env) -> None:
    """Through the session API: a bootstrap refused before its ``update`` leaves nothing;
    the same refusal over a dataset that was already there leaves it, and its head, alone
    (objects sent meanwhile are unnamed)."""
    from usr.sync import client

    make_dataset(env.local_root)
    store = Store.open(env.local_dir)
    new = store.record("first").commit
    (env.remote_root / "densegen").mkdir()
    (env.remote_root / "densegen" / "other").mkdir()  # a neighbour: the namespace stays
    with client.open_session("bu-scc", str(env.config)) as session, pytest.raises(VerifyError):
        session.push(DS, store, new, None, before_update=_refuse_at_update)
    assert not env.remote_dir.exists()
    assert (env.remote_root / "densegen" / "other").is_dir()
    with client.open_session("bu-scc", str(env.config)) as session:
        session.push(DS, store, new, None)
    (env.local_dir / "notes.txt").write_text("a later state\n")
    newer = store.record("second").commit
    with client.open_session("bu-scc", str(env.config)) as session, pytest.raises(VerifyError):
        session.push(DS, store, newer, new, before_update=_refuse_at_update)
    remote = Store.open(env.remote_dir, create=False)
    assert remote.head() == new
    assert remote.repo.get(newer) is not None  # sent before the refusal, never named


def test_the_receiving_server_gates_what_a_client_sends(env: Env) -> None:
    """A client that skips its own gate (an old or a hostile one) is refused by the server
    before its ref moves: the state is recorded here, sent, and refused there."""
    store, new, old = _broken_here(env, "wrong-schema")
    _server_refuses(env, store, new, old, "schema")


def _server_refuses(env: Env, store: Store, new: str, old: str | None, check: str) -> dict:
    """A push of ``new`` through the session API (no client gate) is refused by the
    server's ``check`` of records.parquet: nothing changed on either side, no remote ref
    moved, nothing staged left there. Returns the fingerprint of both roots."""
    from usr.sync import client

    before = fingerprint(env)
    refused = pytest.raises(VerifyError, match=f"records.parquet fails the {check} check")
    with client.open_session("bu-scc", str(env.config)) as session, refused:
        session.push(DS, store, new, old)
    assert fingerprint(env) == before
    assert Store.open(env.remote_dir, create=False).head() == old
    assert not [p for p in env.remote_dir.iterdir() if ".usr-staging-" in p.name]
    return before


def test_the_servers_gate_refusal_wins_over_the_checkout_it_runs_beside(env: Env) -> None:
    """The server checks a pushed state on a thread while its checkout stages; the
    checkout fails here too (unrecorded changes on the cluster), yet the answer is the
    gate's refusal, as when the gate ran first, and nothing staged is promoted. Then the
    same push without the gate fails on the checkout, as it would have."""
    from usr.sync import client

    store, new, old = _broken_here(env, "duplicate-ids")
    (env.remote_dir / "notes.txt").write_text("unrecorded on the cluster\n")
    before = _server_refuses(env, store, new, old, "unique-ids")
    conflict = pytest.raises(ConflictError, match="unrecorded changes")
    with client.open_session("bu-scc", str(env.config)) as session, conflict:
        session.push(DS, store, new, old, validate=False)
    assert fingerprint(env) == before


def test_the_server_checks_a_chunked_table_on_its_staged_copy(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A table above the inline limit is a chunked file: the push sends it before the
    other files, and the server checks its staged copy while the rest streams. The
    refusal is the gate's, with nothing moved and nothing staged left; the repaired table
    passes, and is the file promoted there."""
    from usr.sync import client

    monkeypatch.setenv("USR_INLINE_LIMIT", "1024")  # the few-KB table is chunked
    store, new, old = _broken_here(env, "duplicate-ids")
    table = store.repo[store.tree_of(new)][RECORDS_FILE]
    assert is_manifest_bytes(store.repo[table.id].data), "the table is not a chunked file"
    _server_refuses(env, store, new, old, "unique-ids")
    (env.local_dir / RECORDS_FILE).write_bytes((env.remote_dir / RECORDS_FILE).read_bytes())
    grown = Dataset.open(env.local_root, DS)
    grown.append_records([{"sequence": "ACGTTGCAAC"}], bio_type="dna", alphabet="dna_4")
    fixed = store.record("repaired and grown").commit
    with client.open_session("bu-scc", str(env.config)) as session:
        session.push(DS, store, fixed, old)
    assert Store.open(env.remote_dir, create=False).head() == fixed
    table = (env.local_dir / RECORDS_FILE).read_bytes()
    assert (env.remote_dir / RECORDS_FILE).read_bytes() == table


def test_no_validate_transfers_and_the_audit_says_so(env: Env, tmp_path: Path) -> None:
    _synced(env)
    DAMAGE["duplicate-ids"][0](env.remote_dir)
    out = tmp_path / "audit.json"
    target = env.target()
    engine.pull(target, "bu-scc", env.opts(no_validate=True), audit_json_out=out)
    gate = json.loads(out.read_text())["data"]["gate"]
    assert gate == {"validated": False, "override": True, "checked": []}
    assert (env.local_dir / RECORDS_FILE).read_bytes() == (
        env.remote_dir / RECORDS_FILE
    ).read_bytes()


def test_a_gated_pull_lists_what_it_checked(env: Env, tmp_path: Path) -> None:
    _synced(env)
    (env.remote_dir / EVENTS_FILE).open("ab").write(b'{"action": "more"}\n')
    out = tmp_path / "audit.json"
    engine.pull(env.target(), "bu-scc", env.opts(), audit_json_out=out)
    gate = json.loads(out.read_text())["data"]["gate"]
    assert gate == {"validated": True, "override": False, "checked": [EVENTS_FILE]}


def test_the_cli_refusal_is_one_line_with_exit_5(env: Env) -> None:
    _synced(env)
    DAMAGE["not-parquet"][0](env.remote_dir)
    r = run_usr(
        "--root",
        str(env.local_root),
        "pull",
        DS,
        "bu-scc",
        "-y",
        "--remotes-config",
        str(env.config),
    )
    assert r.returncode == 5
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("usr: error: ")
    assert "records.parquet fails the parquet check" in lines[0]
    assert "--no-validate" in lines[0]


def test_sync_options_default_to_the_gate() -> None:
    assert SyncOptions().no_validate is False


# -- store damage: every command names it, exit 5 ------------------------------------------


def _cli(env: Env, *args: str):
    return run_usr("--root", str(env.local_root), *args, "--remotes-config", str(env.config))


def _cli_local(env: Env, *args: str):
    return run_usr("--root", str(env.local_root), *args)


def _one_line_damage(r, where: str) -> None:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 5, r.stderr
    assert len(lines) == 1 and lines[0].startswith("usr: error: "), r.stderr
    assert "usr fsck DATASET" in lines[0] and where in lines[0], lines[0]


def _point_main_at_nothing(directory: Path) -> None:
    (directory / ".usr" / "refs" / "heads" / "main").write_text("1" * 40 + "\n")


def test_a_local_ref_naming_a_missing_commit_is_named_by_every_command(env: Env) -> None:
    _synced(env)
    _point_main_at_nothing(env.local_dir)
    before = fingerprint_files(env)
    for args in (("status", DS), ("log", DS), ("snapshot", DS)):
        _one_line_damage(_cli_local(env, *args), "refs/heads/main names 1111")
    for verb in ("push", "pull", "diff"):
        extra = ("-y",) if verb != "diff" else ()
        _one_line_damage(_cli(env, verb, DS, "bu-scc", *extra), "refs/heads/main names 1111")
    assert fingerprint_files(env) == before


def test_remote_store_damage_is_named_by_every_sync_command(env: Env) -> None:
    _synced(env)
    remote_store = Store.open(env.remote_dir, create=False)
    head = remote_store.head()
    _point_main_at_nothing(env.remote_dir)
    for verb in ("push", "pull", "diff"):
        extra = ("-y",) if verb != "diff" else ()
        r = _cli(env, verb, DS, "bu-scc", *extra)
        _one_line_damage(r, "remote bu-scc: refs/heads/main names 1111")
    # The ref back, its commit object damaged on disk: read errors are named the same way.
    (env.remote_dir / ".usr" / "refs" / "heads" / "main").write_text(head + "\n")
    loose = env.remote_dir / ".usr" / "objects" / head[:2] / head[2:]
    loose.chmod(0o644)
    loose.write_bytes(b"garbage")
    before = fingerprint_files(env)
    for verb in ("push", "pull", "diff"):
        extra = ("-y",) if verb != "diff" else ()
        _one_line_damage(_cli(env, verb, DS, "bu-scc", *extra), "remote bu-scc")
    _one_line_damage(_cli(env, "status", DS, "bu-scc"), "remote bu-scc")
    assert fingerprint_files(env) == before


def fingerprint_files(env: Env) -> dict[str, str]:
    """The working files of both roots (branch heads left out: they are what is damaged)."""
    return fingerprint(env, heads=False)


# -- paths: every write stays inside its root ----------------------------------------------


def test_a_symlinked_namespace_or_dataset_directory_is_refused(env: Env, tmp_path: Path) -> None:
    make_dataset(env.remote_root)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (env.local_root / "densegen").symlink_to(elsewhere)
    r = _cli(env, "pull", DS, "bu-scc", "-y")
    assert r.returncode == 3 and "is a symlink" in r.stderr
    assert list(elsewhere.iterdir()) == []  # a first pull created nothing there
    (env.local_root / "densegen").unlink()
    (env.local_root / "densegen").mkdir()
    (env.local_root / DS).symlink_to(elsewhere)
    r = _cli(env, "pull", DS, "bu-scc", "-y")
    assert r.returncode == 3 and "is a symlink" in r.stderr
    assert list(elsewhere.iterdir()) == []


def test_the_server_refuses_a_symlinked_dataset_directory(env: Env, tmp_path: Path) -> None:
    make_dataset(env.local_root)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (env.remote_root / "densegen").symlink_to(elsewhere)
    r = _cli(env, "push", DS, "bu-scc", "-y")
    assert r.returncode == 3 and "is a symlink" in r.stderr, r.stderr
    assert list(elsewhere.iterdir()) == []


def test_a_dataset_id_cannot_shadow_the_roots_registry(env: Env) -> None:
    (env.remote_root / "registry.toml").write_text("")
    before = (env.remote_root / "registry.toml").read_bytes()
    for ds in ("registry.toml", "Registry.TOML", "registry.toml/x"):
        r = _cli(env, "push", ds, "bu-scc", "-y")
        assert r.returncode == 3 and "is a file of the datasets root" in r.stderr, r.stderr
    assert (env.remote_root / "registry.toml").read_bytes() == before


def test_file_mode_never_writes_what_a_dataset_tracks(env: Env, tmp_path: Path) -> None:
    _synced(env)
    loose = tmp_path / "loose.parquet"
    loose.write_bytes(b"not the table")
    before = fingerprint(env)
    for remote_path in (f"{DS}/records.parquet", f"{DS}/.events.log", f"{DS}/_derived/x"):
        r = _cli(env, "push", str(loose), "bu-scc", "-y", "--remote-path", remote_path)
        assert r.returncode == 3 and "file mode never reads or writes" in r.stderr, r.stderr
    r = _cli(env, "pull", str(env.local_dir / "meta.md"), "bu-scc", "-y", "--remote-path", "m")
    assert r.returncode == 3 and "file mode never reads or writes" in r.stderr, r.stderr
    assert fingerprint(env) == before


# -- flags ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pair",
    [
        ("--verify-sidecars", "--no-verify-sidecars"),
        ("--no-verify-derived-hashes", "--verify-derived-hashes"),
    ],
)
def test_a_flag_and_its_negation_together_are_refused(root: Path, pair: tuple[str, str]) -> None:
    r = run_usr("--root", str(root), "push", DS, "nowhere", "-y", *pair)
    assert r.returncode == 2
    assert "cannot be combined with" in r.stderr and "\n" not in r.stderr.strip()


@pytest.mark.parametrize(
    "flag",
    [
        ("--verify-sidecars",),
        ("--no-verify-sidecars",),
        ("--verify", "hash"),
        ("--no-validate",),
        ("--strict-bootstrap-id",),
    ],
)
def test_file_mode_refuses_every_dataset_flag_named(tmp_path: Path, flag: tuple[str]) -> None:
    f = tmp_path / "x.txt"
    f.write_text("x")
    r = run_usr("push", str(f), "nowhere", "-y", "--remote-path", "y.txt", *flag)
    assert r.returncode == 2 and "does not apply to file mode" in r.stderr


def test_a_file_mode_audit_states_the_profile_it_used(env: Env, tmp_path: Path) -> None:
    f = tmp_path / "x.txt"
    f.write_text("x")
    out = tmp_path / "audit.json"
    r = _cli(
        env, "push", str(f), "bu-scc", "-y", "--remote-path", "y.txt", "--audit-json-out", str(out)
    )
    assert r.returncode == 0, r.stderr
    verify = json.loads(out.read_text())["data"]["verify"]
    assert verify == {"primary": "hash", "sidecars": "none", "content_hashes": "none"}


# -- names and depth -----------------------------------------------------------------------

#: Each name either round-trips byte for byte or is refused in one line, nothing moved
#: (docs/format.md, "Names").
NAMES: dict[str, tuple[bytes, bool]] = {
    "newline": (b"new\nline", True),
    "tab and carriage return": (b"t\tc\rr", True),
    "unicode, spaces, punctuation": ("sp ace é 😀 -dash #h :c".encode(), True),
    "decomposed unicode": ("e\u0301".encode(), True),
    "255-byte name": (b"n" * 255, True),
    "300 levels": (b"/".join([b"d"] * 300) + b"/f", True),
    "backslash": (b"back\\slash", False),
    "not UTF-8": (b"bad\xffbyte", False),
    "path over 1024 bytes": (b"/".join([b"d" * 200] * 6) + b"/f", False),
    "store name below the top": (b"sub/.usr", False),
    "lock name below the top": (b"sub/.usr.lock", False),
}


def _artifacts(directory: Path) -> dict[bytes, bytes]:
    base = os.fsencode(directory / "_artifacts")
    out = {}
    for dirpath, _dirs, names in os.walk(base):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, base)] = fh.read()
    return out


NAME_MATRIX = [("local", c) for c in sweep(sorted(NAMES), 6, salt=22)] + [
    ("ssh", c) for c in ("newline", "not UTF-8", "300 levels")
]


@pytest.mark.parametrize(("kind_env", "case"), NAME_MATRIX, indirect=["kind_env"])
def test_a_name_round_trips_or_is_refused_before_anything_moves(kind_env: Env, case: str) -> None:
    env = kind_env
    name, travels = NAMES[case]
    _synced(env)
    path = os.path.join(os.fsencode(env.local_dir / "_artifacts"), name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(b"payload\n")
    before = fingerprint(env)
    r = _cli(env, "push", DS, "bu-scc", "-y")
    if travels:
        assert r.returncode == 0, r.stderr
        assert _artifacts(env.remote_dir) == _artifacts(env.local_dir)
        env.pull()  # and back: a second copy made from the remote's tree is the same
        assert _artifacts(env.local_dir)[name] == b"payload\n"
    else:
        assert r.returncode == 3, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "bad path" in r.stderr
        assert fingerprint(env) == before


# -- a crash, then the gate ----------------------------------------------------------------


def test_a_killed_pull_then_a_refusal_at_the_gate_then_a_fix_completes(env: Env) -> None:
    """The crash sweep's promise with the gate in the way: a pull killed once everything
    is fetched leaves the laptop as it was; the cluster then records a broken table; the
    rerun is refused at the gate with nothing promoted; after the cluster repairs it, the
    same command completes."""
    from usr.dataset import Dataset

    good = _synced(env)
    Dataset.open(env.remote_root, DS).append_records(
        [{"sequence": "GGGGAAAACCCCTTTT"}], bio_type="dna"
    )
    before = fingerprint(env, heads=False)
    killed = run_usr(
        "--root",
        str(env.local_root),
        "pull",
        DS,
        "bu-scc",
        "-y",
        "--remotes-config",
        str(env.config),
        env={"USR_FAULT_POINT": "pull.fetched"},
    )
    assert killed.returncode == -9, killed.stderr
    local_files = {
        k: v for k, v in fingerprint(env, heads=False).items() if k.startswith("laptop:")
    }
    assert local_files == {k: v for k, v in before.items() if k.startswith("laptop:")}
    appended = (env.remote_dir / RECORDS_FILE).read_bytes()
    DAMAGE["duplicate-ids"][0](env.remote_dir)
    Store.open(env.remote_dir).record("a batch that broke it")
    _refused(env, "pull", RECORDS_FILE, "unique-ids")
    (env.remote_dir / RECORDS_FILE).write_bytes(appended)
    env.pull()
    assert (env.local_dir / RECORDS_FILE).read_bytes() == appended != good[RECORDS_FILE]
    assert run_usr("--root", str(env.local_root), "fsck", DS).returncode == 0
