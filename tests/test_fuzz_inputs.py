"""Bad input, fuzzed: dataset ids, remote profiles, imports, overlay attaches, protocol frames
(docs/reliability.md, "Bad input").

The oracle is the same everywhere: a failure is a :class:`usr.errors.UsrError` (in process)
or one ``usr: error:`` line with a documented exit code other than 1 (through the CLI), never
a traceback, and every dataset is left exactly as it was. The library is driven in process
for volume; a representative few examples of each kind go through the real ``usr`` CLI.

Hypothesis runs derandomized (the same examples on every run, so CI is deterministic) with a
small budget by default; ``USR_FULL_SWEEP=1`` runs ten times as many.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import struct
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import run_usr
from usr import registry as reg
from usr import remotes
from usr.dataset import Dataset
from usr.errors import EXIT_CODES, UsrError
from usr.layout import dataset_path, is_runtime_path, validate_dataset_id
from usr.store import Store
from usr.sync import engine
from usr.sync import protocol as p

FULL = os.environ.get("USR_FULL_SWEEP") == "1"
#: Exit codes a refusal of bad input may have: every documented one but 1 (usr's own bug).
REFUSAL_CODES = set(EXIT_CODES.values()) - {1}
ID_GRAMMAR = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?")
DS = "fuzz/target"


def budget(examples: int) -> settings:
    """``examples`` per test by default, ten times as many under ``USR_FULL_SWEEP=1``."""
    return settings(
        max_examples=examples * (10 if FULL else 1),
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )


# -- the world every example runs against ------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A datasets root with one dataset (three rows, namespace ``infer`` registered)."""
    root = tmp_path_factory.mktemp("fuzz") / "datasets"
    ds = Dataset.init(root, DS, source="fuzz")
    ds.append_records([{"sequence": s} for s in ("ACGTACGT", "GGCCGGCC", "TTAATTAA")])
    reg.register(root, "infer", [("infer__ll", "float64"), ("infer__v", "list<float64>")])
    return root


def state_of(root: Path) -> tuple[dict[str, bytes], dict[str, str | None]]:
    """Every non-runtime file under ``root`` and the head of every dataset store."""
    files = {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and not is_runtime_path(path.relative_to(root).as_posix())
    }
    heads = {
        store_dir.parent.relative_to(root).as_posix(): Store.open(store_dir.parent).head()
        for store_dir in sorted(root.rglob(".usr"))
        if store_dir.is_dir()
    }
    return files, heads


def refused_cleanly(root: Path, call: Callable[[], object]) -> bool:
    """Run ``call``; a failure must be a UsrError with a one-line message that changed
    nothing. Returns whether it succeeded."""
    before = state_of(root)
    try:
        call()
    except UsrError as exc:
        assert "\n" not in exc.one_line()
        assert exc.exit_code in REFUSAL_CODES, exc
        assert state_of(root) == before
        return False
    return True


def cli_refused_cleanly(root: Path, *args: str, env: dict[str, str] | None = None) -> int:
    """Run the real CLI; a failure is one ``usr: error:`` line, a documented exit code other
    than 1, no traceback, and every dataset under ``root`` as it was."""
    before = state_of(root)
    # In a scratch directory: a path-like argument such as "." names the current
    # directory, which snapshot would adopt as a dataset.
    scratch = root.parent / "cwd"
    scratch.mkdir(exist_ok=True)
    r = run_usr("--root", str(root), *args, env=env, cwd=scratch)
    assert "Traceback" not in r.stderr, r.stderr
    if r.returncode != 0:
        assert r.returncode in REFUSAL_CODES, (r.returncode, r.stderr)
        errors = [ln for ln in r.stderr.splitlines() if ln.startswith("usr: error: ")]
        assert len(errors) == 1, r.stderr
        assert state_of(root) == before
    return r.returncode


# -- dataset ids -------------------------------------------------------------------------


def well_formed(ident: str) -> bool:
    """The documented id grammar: one or two parts, each at most 255 characters."""
    return bool(ID_GRAMMAR.fullmatch(ident)) and all(len(x) <= 255 for x in ident.split("/"))


id_part = st.sampled_from(
    ["a", "A1", "x.y", "x-y_z", "-x", ".x", ".", "..", "", " ", "a b", "é", "a\x00b", "a\nb"]
    + ["~", "a:b", "*", "a\\b", "a\n", "\ta", "a" * 300]
)
dataset_ids = st.one_of(
    st.text(max_size=24),
    st.lists(id_part, min_size=1, max_size=4).map("/".join),
    st.lists(id_part, min_size=1, max_size=3).map(lambda parts: "/" + "/".join(parts)),
)


@budget(150)
@given(ident=dataset_ids)
def test_dataset_ids_are_accepted_only_when_they_match_the_grammar(world, ident):
    try:
        got = validate_dataset_id(ident)
    except UsrError as exc:
        assert exc.exit_code == 3 and "\n" not in exc.one_line()
        assert not well_formed(ident)
    else:
        assert got == ident and well_formed(ident), repr(ident)
        assert world in dataset_path(world, ident).parents
    refused_cleanly(world, lambda: Dataset.open(world, ident))
    refused_cleanly(world, lambda: engine.resolve_target(world, ident))


@budget(5)
@given(ident=dataset_ids.filter(lambda s: "\x00" not in s and not s.startswith("-")))
def test_cli_bad_dataset_ids_are_refused_cleanly(world, ident):
    for command in ("info", "init", "snapshot"):
        code = cli_refused_cleanly(world, command, ident)
        if not well_formed(ident):
            assert code in (3, 4)


# -- remote profiles (remotes.toml) ------------------------------------------------------

toml_value = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["ssh", "local", "", " ", "usr 'unclosed", '"', "a\x00b", "~/x", "127.0.0.1"]),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)
profile_key = st.one_of(st.sampled_from(sorted(remotes._KEYS)), st.text(max_size=8))
profile_table = st.dictionaries(profile_key, toml_value, max_size=6)
remote_name = st.one_of(st.sampled_from(["bu-scc", "lab", ".x", "a b", ""]), st.text(max_size=6))
profiles_doc = st.one_of(
    st.dictionaries(remote_name, profile_table, max_size=3).map(lambda r: {"remotes": r}),
    st.dictionaries(st.text(max_size=8), profile_table, max_size=2),
)


def toml_texts() -> st.SearchStrategy[bytes]:
    """Structured documents, the same with random damage, and raw bytes."""

    def damage(args: tuple[str, int, str]) -> bytes:
        text, at, junk = args
        at = at % (len(text) + 1)
        return (text[:at] + junk + text[at:]).encode("utf-8", "surrogatepass")

    structured = profiles_doc.map(tomli_w.dumps)
    return st.one_of(
        structured.map(str.encode),
        st.tuples(structured, st.integers(min_value=0), st.text(max_size=6)).map(damage),
        st.binary(max_size=60),
    )


def _write_config(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


@budget(200)
@given(data=toml_texts())
def test_remote_profiles_load_or_are_refused_cleanly(tmp_path_factory, data):
    config = _write_config(tmp_path_factory.mktemp("toml") / "remotes.toml", data)
    try:
        profiles = remotes.load(config)
    except UsrError as exc:
        assert exc.exit_code == 3 and "\n" not in exc.one_line()
        return
    for name, profile in profiles.items():
        remotes.validate_name(name)
        profile.describe()
        from usr.ssh import remote_command

        remote_command(profile)  # every accepted profile can be turned into a command line
    remotes.save(config, profiles)  # and written back as it was read
    assert remotes.load(config) == profiles


@budget(4)
@given(data=toml_texts())
def test_cli_bad_remote_profiles_are_refused_cleanly(world, tmp_path_factory, data):
    config = _write_config(tmp_path_factory.mktemp("toml") / "remotes.toml", data)
    cli_refused_cleanly(world, "remotes", "list", "--remotes-config", str(config))
    cli_refused_cleanly(world, "remotes", "show", "bu-scc", "--remotes-config", str(config))


@budget(4)
@given(
    table=st.fixed_dictionaries(
        {"type": st.just("local")},
        optional={
            "base_dir": st.sampled_from(["", " ", "/nonexistent/x", "relative", "~/x", "a\x00b"]),
            "remote_usr": st.sampled_from(["usr", "", "usr 'unclosed", "/nonexistent/usr"]),
            "port": st.integers(min_value=-5, max_value=70000),
            "connect_timeout": st.floats(allow_nan=False, allow_infinity=False),
        },
    )
)
def test_cli_diff_through_a_bad_local_profile_is_refused_cleanly(world, tmp_path_factory, table):
    """A profile that loads but cannot work (no such base_dir or remote command) fails as a
    transport or input error; only ``local`` profiles, so no fuzzed host is ever dialled."""
    config = tmp_path_factory.mktemp("toml") / "remotes.toml"
    _write_config(config, tomli_w.dumps({"remotes": {"bu-scc": table}}).encode())
    code = cli_refused_cleanly(world, "diff", DS, "bu-scc", "--remotes-config", str(config))
    assert code != 0


# -- imports ---------------------------------------------------------------------------

cell = st.one_of(
    st.text(alphabet="ACGTUNacgu XZ*-", max_size=12),
    st.text(max_size=8),
    st.sampled_from(["", "dna", "rna", "protein", "dna_4", "rna_5", "nan", "[1, 2]", "null"]),
    st.integers(),
    st.floats(),
    st.none(),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
)
columns = st.lists(
    st.sampled_from(["sequence", "bio_type", "alphabet", "source", "id", "infer__ll", "x", ""]),
    min_size=1,
    max_size=4,
    unique=True,
)


@st.composite
def jsonl_rows(draw) -> bytes:
    names = draw(columns)
    rows = draw(st.lists(st.fixed_dictionaries({n: cell for n in names}), max_size=5))
    lines = [json.dumps(row, allow_nan=True) for row in rows]
    if draw(st.booleans()):
        lines.append(draw(st.sampled_from(["{", "[]", "1", '{"sequence": ', "\x00"])))
    return ("\n".join(lines) + "\n").encode()


@st.composite
def parquet_tables(draw) -> pa.Table:
    """Small tables of arbitrary Arrow types (what a tool may hand over)."""
    names = draw(columns)
    n = draw(st.integers(min_value=0, max_value=4))
    kinds = {
        "string": (pa.string(), st.text(alphabet="ACGTN xé", max_size=8)),
        "large_string": (pa.large_string(), st.text(alphabet="ACGT", max_size=8)),
        "int64": (pa.int64(), st.integers(min_value=-(2**63), max_value=2**63 - 1)),
        "int8": (pa.int8(), st.integers(min_value=-128, max_value=127)),
        "float64": (pa.float64(), st.floats()),
        "bool": (pa.bool_(), st.booleans()),
        "binary": (pa.binary(), st.binary(max_size=6)),
        "list": (pa.list_(pa.float64()), st.lists(st.floats(), max_size=2)),
        "timestamp": (pa.timestamp("us"), st.integers(min_value=0, max_value=2**50)),
    }
    arrays = {}
    for name in names:
        typ, values = kinds[draw(st.sampled_from(sorted(kinds)))]
        cells = draw(st.lists(st.one_of(st.none(), values), min_size=n, max_size=n))
        arrays[name or "unnamed"] = pa.array(cells, type=typ)
    return pa.table(arrays)


def _ids(root: Path) -> list[str]:
    return Dataset.open(root, DS).to_table(False).column("id").to_pylist()


@budget(60)
@given(data=jsonl_rows(), on_duplicate=st.sampled_from(["error", "skip"]))
def test_jsonl_imports_work_or_are_refused_cleanly(world, tmp_path_factory, data, on_duplicate):
    path = tmp_path_factory.mktemp("in") / "rows.jsonl"
    path.write_bytes(data)
    ds = Dataset.open(world, DS)
    refused_cleanly(world, lambda: ds.import_file(path, on_duplicate=on_duplicate))


@budget(60)
@given(table=parquet_tables(), bio_type=st.sampled_from([None, "dna", "rna", "protein"]))
def test_parquet_imports_of_any_types_work_or_are_refused_cleanly(
    world, tmp_path_factory, table, bio_type
):
    path = tmp_path_factory.mktemp("in") / "rows.parquet"
    pq.write_table(table, path)
    ds = Dataset.open(world, DS)
    refused_cleanly(world, lambda: ds.import_file(path, bio_type=bio_type, on_duplicate="skip"))
    Dataset.open(world, DS).head(2)  # whatever landed still reads


def _csv(rows: list[list[object]], names: list[str]) -> bytes:
    out = io.StringIO()
    out.write(",".join(names) + "\n")
    for row in rows:
        out.write(",".join(json.dumps(v) if not isinstance(v, str) else v for v in row) + "\n")
    return out.getvalue().encode("utf-8", "surrogatepass")


csv_files = st.builds(_csv, st.lists(st.lists(cell, max_size=4), max_size=4), columns)
import_files = st.one_of(
    st.tuples(st.just("rows.csv"), csv_files),
    st.tuples(st.just("rows.jsonl"), jsonl_rows()),
    st.tuples(st.just("rows.parquet"), st.binary(max_size=64)),
    st.tuples(st.sampled_from(["rows.tsv", "rows.txt", "rows"]), st.binary(max_size=32)),
)  # fmt: skip


@budget(6)
@given(named=import_files)
def test_cli_imports_work_or_are_refused_cleanly(world, tmp_path_factory, named):
    name, data = named
    path = tmp_path_factory.mktemp("in") / name
    path.write_bytes(data)
    cli_refused_cleanly(world, "import", DS, "--path", str(path), "--on-duplicate", "skip")


# -- overlay attaches -------------------------------------------------------------------


@st.composite
def overlay_tables(draw) -> pa.Table:
    """An overlay for the dataset: real or made-up keys, registered or not, right or wrong types."""
    table = draw(parquet_tables())
    if draw(st.booleans()) and table.num_rows:
        ids = draw(st.lists(st.sampled_from(["", "x"] * 2), min_size=1))
        keys = [ids[i % len(ids)] for i in range(table.num_rows)]
        table = (
            table.append_column("id", pa.array(keys)) if "id" not in table.column_names else table
        )
    return table


@budget(60)
@given(
    table=overlay_tables(),
    real_ids=st.booleans(),
    flags=st.fixed_dictionaries({"allow_missing": st.booleans(), "allow_overwrite": st.booleans()}),
    suffix=st.sampled_from([".parquet", ".jsonl"]),
)
def test_overlay_attaches_work_or_are_refused_cleanly(
    world, tmp_path_factory, table, real_ids, flags, suffix
):
    if real_ids and "id" in table.column_names:
        ids = _ids(world)
        keys = pa.array([ids[i % len(ids)] for i in range(table.num_rows)])
        table = table.set_column(table.column_names.index("id"), "id", keys)
    path = tmp_path_factory.mktemp("ov") / f"part{suffix}"
    if suffix == ".parquet":
        pq.write_table(table, path)
    else:
        path.write_text("".join(json.dumps(r, default=str) + "\n" for r in table.to_pylist()))
    ds = Dataset.open(world, DS)
    refused_cleanly(world, lambda: ds.attach(path, namespace="infer", **flags))
    Dataset.open(world, DS).head(2)


@budget(5)
@given(
    rows=st.lists(st.lists(cell, max_size=3), max_size=4),
    names=st.lists(st.sampled_from(["id", "ll", "v", "infer__ll", "sequence", "x"]), min_size=1,
                   max_size=3, unique=True),
    real_ids=st.booleans(),
    namespace=st.sampled_from(["infer", "nope", "usr", "Bad"]),
)  # fmt: skip
def test_cli_attaches_work_or_are_refused_cleanly(
    world, tmp_path_factory, rows, names, real_ids, namespace
):
    if real_ids and "id" in names:
        ids = _ids(world)
        for i, row in enumerate(rows):
            if names.index("id") < len(row):
                row[names.index("id")] = ids[i % len(ids)]
    path = tmp_path_factory.mktemp("ov") / "scores.csv"
    path.write_bytes(_csv(rows, names))
    cli_refused_cleanly(world, "attach", DS, "--path", str(path), "--namespace", namespace)


# -- protocol frames -------------------------------------------------------------------

REQUESTS = ["hello", "heads", "record", "working-tree", "log", "want", "get", "have", "pack"]
REQUESTS += ["update", "probe", "end", "error", "bogus", ""]


def _nested(inner: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner))


wire_value = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(),
        st.text(max_size=10),
        st.sampled_from([DS, "../x", "/etc", "a/b/c", "0" * 40, "f" * 64, "0" * 39, "main"]),
    ),
    _nested,
    max_leaves=6,
)
wire_fields = st.dictionaries(
    st.sampled_from(["ds", "oids", "cids", "wants", "haves", "new", "old", "create", "blobs"]
                    + ["limit", "action", "actor", "protocol", "lock_timeout", "t"]),
    wire_value,
    max_size=4,
)  # fmt: skip


def _frame(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">cI", kind, len(payload)) + payload


def _message(t: str, fields: dict) -> bytes:
    fields.pop("lock_timeout", None)  # the server would export it into this test process
    return _frame(b"J", json.dumps({"t": t, **fields}).encode())


frames = st.one_of(
    st.builds(_message, st.sampled_from(REQUESTS), wire_fields),
    st.builds(_frame, st.sampled_from([b"J", b"O", b"C", b"Z", b"\x00"]), st.binary(max_size=48)),
    st.binary(max_size=12),
)
HELLO = _message("hello", {"usr_version": "fuzz", "protocol": p.PROTOCOL_VERSION})
REPLY_TYPES = {"hello", "heads", "recorded", "working-tree", "log", "objects", "done", "have"}
REPLY_TYPES |= {"received", "updated", "probe", "error"}
ERROR_KINDS = {"usage", "input", "not-found", "verify", "transport", "auth", "conflict"}
ERROR_KINDS |= {"lock-timeout", "hook-refused"}


def _serve(root: Path, data: bytes) -> tuple[int, list[dict], str]:
    """Feed ``data`` to the serve loop in process (the bytes a real ``usr plumbing serve``
    would read): its status, the messages it answered, its stderr."""
    from usr.sync.server import Server

    wire_out = io.BytesIO()
    fio = p.FrameIO(p.FileChannel(io.BytesIO(data), wire_out), peer="client")
    with contextlib.redirect_stderr(io.StringIO()) as err:
        status = Server(root.absolute(), fio).run()
    out = wire_out.getvalue()
    assert out.startswith(p.MAGIC)
    out, msgs = out[len(p.MAGIC) :], []
    while out:
        kind, length = struct.unpack(">cI", out[:5])
        if kind == b"J":
            msgs.append(json.loads(out[5 : 5 + length]))
        out = out[5 + length :]
    return status, msgs, err.getvalue()


@budget(150)
@given(stream=st.lists(frames, max_size=5), greet=st.booleans())
def test_serve_answers_any_frames_with_replies_or_one_error(world, stream, greet):
    before = state_of(world)
    status, msgs, err = _serve(world, (HELLO if greet else b"") + b"".join(stream))
    assert status in (0, 1)
    for msg in msgs:
        assert msg.get("t") in REPLY_TYPES, msg
        if msg["t"] == "error":
            assert msg["kind"] in ERROR_KINDS, msg
            assert "internal error" not in msg["message"], msg
    assert "Traceback" not in err and len(err.splitlines()) <= 1, err
    files, heads = state_of(world)
    assert {k: v for k, v in files.items() if k in before[0]} == before[0]
    assert heads[DS] == before[1][DS]


@budget(150)
@given(
    replies=st.lists(
        st.one_of(frames, st.builds(_message, st.sampled_from(sorted(REPLY_TYPES)), wire_fields)),
        max_size=4,
    ),
    magic=st.booleans(),
)
def test_client_meets_any_server_bytes_with_a_usr_error(world, tmp_path_factory, replies, magic):
    from usr.sync.client import RemoteSession

    good_hello = _message("hello", {"protocol": p.PROTOCOL_VERSION, "usr_version": "x"})
    data = (p.MAGIC + good_hello if magic else b"") + b"".join(replies)
    store = Store.open(tmp_path_factory.mktemp("client") / "ds")
    session = RemoteSession(p.FileChannel(io.BytesIO(data), io.BytesIO()), "remote fuzz")
    oid = "0" * 40
    calls = [
        session.hello,
        lambda: session.heads(DS),
        lambda: session.record(DS, "record before pull"),
        lambda: session.working_tree(DS),
        lambda: session.fetch(DS, store, [oid], []),
    ]
    for call in calls:
        try:
            call()
        except UsrError as exc:
            assert "\n" not in exc.one_line()
            break
    assert store.head() is None


@budget(3)
@given(stream=st.lists(frames, min_size=1, max_size=4))
def test_cli_serve_answers_garbage_with_one_line(world, stream):
    import subprocess
    import sys

    from tests.conftest import usr_env

    before = state_of(world)
    proc = subprocess.run(
        [sys.executable, "-m", "usr", "plumbing", "serve", "--root", str(world)],
        input=HELLO + b"".join(stream),
        capture_output=True,
        env=usr_env(),
        timeout=60,
    )
    err = proc.stderr.decode()
    assert proc.returncode in (0, 1) and "Traceback" not in err
    assert len(err.splitlines()) <= 1 and "internal error" not in err, err
    assert state_of(world)[1] == before[1]


@budget(3)
@given(replies=st.lists(frames, max_size=4), magic=st.booleans())
def test_cli_diff_against_a_garbage_server_is_refused_cleanly(
    world, tmp_path_factory, replies, magic
):
    """A ``local`` remote whose command answers with fuzzed bytes: diff fails as a
    transport error, one line, and changes nothing here."""
    import sys

    where = tmp_path_factory.mktemp("peer")
    payload = where / "reply.bin"
    greeting = p.MAGIC + _message("hello", {"protocol": p.PROTOCOL_VERSION}) if magic else b""
    payload.write_bytes(greeting + b"".join(replies))
    script = where / "peer.py"
    # It says its piece and hangs up (a peer that stalls mid-frame is a connection fault,
    # not bad input: see "Connection faults").
    script.write_text("import sys\nsys.stdout.buffer.write(open(sys.argv[1], 'rb').read())\n")
    table = {
        "type": "local",
        "base_dir": str(where),
        "remote_usr": f"{sys.executable} {script} {payload}",
    }
    config = _write_config(
        where / "remotes.toml", tomli_w.dumps({"remotes": {"bu-scc": table}}).encode()
    )
    code = cli_refused_cleanly(world, "diff", DS, "bu-scc", "--remotes-config", str(config))
    assert code in (3, 5, 6)
