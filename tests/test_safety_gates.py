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
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import run_usr
from tests.test_sync_scenarios import DS, Env, make_dataset, make_env
from usr.errors import VerifyError
from usr.layout import EVENTS_FILE, RECORDS_FILE
from usr.store import Store
from usr.sync import engine
from usr.sync.engine import SyncOptions


@pytest.fixture(params=["local", "ssh"])
def env(request, tmp_path) -> Env:
    return make_env(request.param, tmp_path, request)


def fingerprint(env: Env) -> dict[str, str]:
    """Every working file under both roots (not the stores) and both branch heads."""
    out: dict[str, str] = {}
    for side, root in (("laptop", env.local_root), ("cluster", env.remote_root)):
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root).as_posix()
            if ".usr" in rel.split("/") or rel.startswith(".usr-cache") or not path.is_file():
                continue
            if rel.endswith(".lock") or "/.usr." in f"/{rel}":
                continue
            out[f"{side}:{rel}"] = hashlib.sha1(path.read_bytes()).hexdigest()
        store_dir = root / DS
        if (store_dir / ".usr").is_dir():
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
MATRIX = [("local", d) for d in sorted(DAMAGE)] + [("ssh", d) for d in SSH_CASES]


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


def test_the_receiving_server_gates_what_a_client_sends(env: Env) -> None:
    """A client that skips its own gate (an old or a hostile one) is refused by the server
    before its ref moves: the state is recorded here, sent, and refused there."""
    from usr.sync import client

    _synced(env)
    DAMAGE["wrong-schema"][0](env.local_dir)
    store = Store.open(env.local_dir)
    new = store.record("broken here").commit
    old = Store.open(env.remote_dir, create=False).head()
    before = fingerprint(env)
    refused = pytest.raises(VerifyError, match="records.parquet fails the schema check")
    with client.open_session("bu-scc", str(env.config)) as session, refused:
        session.push(DS, store, new, old)
    assert fingerprint(env) == before
    assert Store.open(env.remote_dir, create=False).head() == old


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
