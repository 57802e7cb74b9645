"""docs/cli.md cannot rot: every command, option and exit code of the CLI is written there.

The click tree is walked in process (``porcelain.cli.root`` with every module mounted, the
way ``usr --help`` sees it). Each command belongs to one ``## `` section of docs/cli.md
(:data:`SECTION_OF`); its path (``remotes doctor``, ``plumbing diff-tree``) and every
spelling of every option (``-n`` and ``--max-count``, ``--verify-sidecars`` and
``--no-verify-sidecars``) must appear in code (a backtick span or a fenced block) in that
section. The other way round, every ``--flag`` the page shows must still exist. Every exit
code of usr/errors.py is in the exit-code tables of docs/cli.md and docs/troubleshooting.md
with its meaning, and every command and option says what it does in ``--help``.

docs/troubleshooting.md cannot rot either: the errors an operator meets first (no remotes
config, unknown remote, bad id, missing dataset, no ``-y`` without a terminal, lock held,
...) are raised by the real code in process, and each must match the start of a signature
row there with the same exit code. The one subprocess is ``usr --help`` itself, run through
the installed entry point.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from porcelain import cli
from tests.conftest import REPO, usr_env
from usr.errors import EXIT_CODES, UsrError

CLI_MD = REPO / "docs" / "cli.md"
TROUBLESHOOTING_MD = REPO / "docs" / "troubleshooting.md"

#: Command path (or the path of a group it belongs to) -> the ``## `` heading of docs/cli.md
#: that documents it. The longest matching prefix wins. A new command needs a line here.
SECTION_OF: dict[str, str] = {
    "": "Global options",
    **dict.fromkeys(
        ["namespace", "init", "import", "attach", "ls", "info", "head", "schema", "events"]
        + ["validate", "export"],
        "Dataset lifecycle",
    ),
    **dict.fromkeys(
        ["snapshot", "status", "log", "show", "checkout", "gc", "fsck"],
        "History and the object store",
    ),
    "plumbing": "Plumbing",
    **dict.fromkeys(
        ["remotes", "plumbing serve", "plumbing ls-remote", "plumbing fetch-pack"]
        + ["plumbing send-pack"],
        "Remotes and transport",
    ),
    **dict.fromkeys(["diff", "pull", "push"], "Sync: diff, pull, push"),
    "merge": "Merge",
    **dict.fromkeys(["hooks", "plumbing verify-sidecars"], "Hooks"),
    **dict.fromkeys(["demo", "drill", "dev"], "Demo, drills and developer commands"),
}

#: Flags the page may show that are not usr's own (other programs in examples).
FOREIGN_FLAGS: set[str] = set()

_CODE = re.compile(r"```[^\n]*\n(.*?)^```|`([^`\n]+)`", re.S | re.M)


def walk(
    cmd: click.Command, path: tuple[str, ...] = (), hidden: bool = False
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    """Every command under ``cmd`` with its path; hidden ones (``dev``) only if asked."""
    if cmd.hidden and not hidden:
        return
    yield path, cmd
    if isinstance(cmd, click.Group):
        for name, sub in sorted(cmd.commands.items()):
            yield from walk(sub, (*path, name), hidden)


def _tree() -> list[tuple[tuple[str, ...], click.Command]]:
    cli.mount_all()
    return list(walk(cli.root))


COMMANDS = _tree()


def spellings(cmd: click.Command) -> list[str]:
    """Every way to write every option of ``cmd`` (``--help`` is the root's business)."""
    out: list[str] = []
    for param in cmd.params:
        if isinstance(param, click.Option):
            out += [o for o in (*param.opts, *param.secondary_opts) if o.startswith("-")]
    return out


def sections(text: str) -> dict[str, str]:
    """``{heading: body}`` for each ``## `` section of a page."""
    parts = re.split(r"^## +(.+?)\s*$", text, flags=re.M)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def code_text(body: str) -> str:
    """The code spans and fenced blocks of ``body``, one per line: where commands and
    options are written as an operator types them."""
    return "\n".join(block or span for block, span in _CODE.findall(body))


def mentions(code: str, word: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", code) is not None


def section_for(path: tuple[str, ...]) -> str:
    for n in range(len(path), -1, -1):
        key = " ".join(path[:n])
        if key in SECTION_OF:
            return SECTION_OF[key]
    raise AssertionError(f"no section of docs/cli.md is assigned to {' '.join(path)!r}")


@pytest.fixture(scope="module")
def cli_sections() -> dict[str, str]:
    return {h: code_text(b) for h, b in sections(CLI_MD.read_text()).items()}


def _ids(item: tuple[tuple[str, ...], click.Command]) -> str:
    return " ".join(item[0]) or "usr"


def test_the_walk_sees_every_command_group():
    paths = {" ".join(p) for p, _ in COMMANDS}
    assert {"plumbing diff-tree", "remotes doctor", "namespace register", "hooks install"} <= paths
    assert {"drill sync-audit", "events tail", "merge"} <= paths
    assert not any(p.startswith("dev") for p in paths)  # hidden


@pytest.mark.parametrize("item", COMMANDS, ids=_ids)
def test_command_and_options_are_in_its_section(item, cli_sections):
    path, cmd = item
    heading = section_for(path)
    assert heading in cli_sections, f"docs/cli.md has no '## {heading}' section"
    code = cli_sections[heading]
    name = " ".join(path)
    if name:
        assert mentions(code, name), f"`{name}` is not written in '## {heading}' of docs/cli.md"
    missing = [o for o in spellings(cmd) if not mentions(code, o)]
    assert not missing, f"usr {name}: {missing} not written in '## {heading}' of docs/cli.md"


def test_help_option_is_documented(cli_sections):
    code = cli_sections["Global options"]
    assert mentions(code, "-h") and mentions(code, "--help")


def test_every_flag_on_the_page_exists(cli_sections):
    everything = walk(cli.root, hidden=True)
    known = {"-h", "--help"} | {o for _, cmd in everything for o in spellings(cmd)}
    shown = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", "\n".join(cli_sections.values())))
    stale = sorted(shown - known - FOREIGN_FLAGS)
    assert not stale, f"docs/cli.md shows flags no usr command has: {stale}"


@pytest.mark.parametrize("item", COMMANDS, ids=_ids)
def test_help_says_what_each_command_and_option_does(item):
    path, cmd = item
    text = (cmd.help or "").strip()
    assert len(text.split()) >= 4, f"usr {' '.join(path)} --help: no description"
    for param in cmd.params:
        if isinstance(param, click.Option) and param.name != "version":
            assert (param.help or "").strip(), f"usr {' '.join(path)} {param.opts[0]}: no help"


def _exit_rows(page: Path, heading: str) -> dict[int, list[str]]:
    body = sections(page.read_text())[heading]
    rows: dict[int, list[str]] = {}
    for line in body.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0].isdigit():
            rows[int(cells[0])] = cells[1:]
    return rows


def _classes() -> dict[str, type[UsrError]]:
    found: dict[str, type[UsrError]] = {}
    todo: list[type[UsrError]] = [UsrError]
    while todo:
        cls = todo.pop()
        found[cls.__name__] = cls
        todo += cls.__subclasses__()
    return found


@pytest.mark.parametrize(("name", "code"), sorted(EXIT_CODES.items(), key=lambda kv: kv[1]))
def test_exit_code_is_documented_with_its_meaning(name, code):
    cli_rows = _exit_rows(CLI_MD, "Exit codes")
    assert code in cli_rows, f"docs/cli.md: exit code {code} ({name}) missing"
    cls_cell, meaning = cli_rows[code][0], cli_rows[code][-1]
    assert f"`{name}`" in cls_cell, f"docs/cli.md: exit {code} row does not name {name}"
    assert len(meaning.split()) >= 3, f"docs/cli.md: exit {code} has no meaning"
    ts_rows = _exit_rows(TROUBLESHOOTING_MD, "Exit codes")
    assert code in ts_rows, f"docs/troubleshooting.md: exit code {code} ({name}) missing"
    kind = _classes()[name].kind
    want = "internal" if code == 1 else kind
    assert ts_rows[code][0] == want, f"docs/troubleshooting.md: exit {code} kind is not {want}"
    assert len(ts_rows[code][-1].split()) >= 3


@pytest.mark.parametrize("code", [0, 130, 141])
def test_exit_codes_outside_the_error_classes_are_documented(code):
    for page in (CLI_MD, TROUBLESHOOTING_MD):
        row = _exit_rows(page, "Exit codes").get(code)
        assert row and row[-1], f"{page.name}: exit code {code} missing"


def test_usr_help_lists_every_visible_command():
    """``usr --help`` through the installed console script (else ``python -m usr``)."""
    script = Path(sys.executable).with_name("usr")
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "usr"]
    proc = subprocess.run(
        [*argv, "--help"], capture_output=True, text=True, env=usr_env(), timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    listed = set(re.findall(r"^  ([a-z][a-z-]*)  ", proc.stdout.split("Commands:")[1], re.M))
    visible = {p[0] for p, _ in COMMANDS if len(p) == 1}
    assert listed == visible
    assert "--root" in proc.stdout and "--version" in proc.stdout


# ------------------------------------------------------------ troubleshooting signatures

_PLACEHOLDER = re.compile(r"\b[A-Z][A-Z0-9_]*\b|\.\.\.")


def signature_rows() -> list[tuple[str, int, re.Pattern[str]]]:
    """``(signature, exit code, regex)`` for each row of the troubleshooting tables whose
    first cell is a signature followed by ``(N)``. Capitals and ``...`` are the variable
    parts; the rest must be the start of the real message, word for word."""
    rows = []
    for line in TROUBLESHOOTING_MD.read_text().splitlines():
        cell = line.strip().strip("|").split(" | ")[0] if line.startswith("| `") else ""
        for sig, code in re.findall(r"`([^`]+)` \((\d+)\)", cell):
            parts = _PLACEHOLDER.split(sig)
            pattern = ".+?".join(re.escape(p) for p in parts)
            rows.append((sig, int(code), re.compile(pattern)))
    return rows


def error_of(call) -> UsrError:
    with pytest.raises(UsrError) as info:
        call()
    return info.value


def _cli(*args: str):
    return lambda: cli.root.main(list(args), prog_name="usr", standalone_mode=False)


def real_errors(tmp_path: Path, monkeypatch) -> list[tuple[str, UsrError]]:
    """Errors an operator meets, raised by the real code in process (no remote needed)."""
    import io

    from porcelain.options import Settings
    from porcelain.sync import confirmer
    from porcelain.targets import resolve_dataset
    from usr import layout, locks, remotes
    from usr.dataset import Dataset
    from usr.store import Store
    from usr.sync import engine

    root = tmp_path / "root"
    ds = Dataset.init(root, "densegen/d")
    good = tmp_path / "good.toml"
    remotes.add(remotes.Profile(name="hpc", type="local", base_dir=str(tmp_path)), good)
    bad = tmp_path / "bad.toml"
    bad.write_text('[remotes.x]\ntype = "ssh"\nhost = "h"\nbase_dir = "/d"\nport = "22"\n')
    seqs = tmp_path / "seqs.csv"
    seqs.write_text("sequence\nACGTZ\n")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "file.txt").write_text("x")
    (root / "registry.toml").write_text("")
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    store = Store.open(ds.path)
    elsewhere = Dataset.init(tmp_path / "unmarked", "d").path
    (tmp_path / "unmarked" / "registry.toml").unlink()  # a root made by another tool
    cases = {
        "no remotes config": lambda: remotes.get("hpc", tmp_path / "none.toml"),
        "unknown remote": lambda: remotes.get("nope", good),
        "profile type": lambda: remotes.load(bad),
        "remote name": lambda: remotes.validate_name("b@d"),
        "dataset id": lambda: layout.validate_dataset_id("bad id!"),
        "local dataset": lambda: resolve_dataset(Settings(str(root)), "densegen/nope"),
        "dataset dir": lambda: engine.resolve_target(root, "./no/such/dir"),
        "not a dataset": lambda: layout.check_dataset_dir(tmp_path / "other"),
        "datasets root": lambda: engine.resolve_target(root, str(root)),
        "unmarked root": lambda: engine.resolve_target(root, str(elsewhere)),
        "init twice": lambda: Dataset.init(root, "densegen/d"),
        "import missing": lambda: ds.import_file(tmp_path / "none.csv"),
        "alphabet": lambda: ds.import_file(seqs),
        "namespace": lambda: ds.attach(seqs, namespace="infer"),
        "no -y": lambda: confirmer(False, "pull")("summary"),
        "combined": _cli("pull", "d", "r", "--primary-only", "--skip-snapshots"),
        "lock timeout flag": _cli("pull", "d", "r", "--lock-timeout", "0"),
        "warm-auth local": _cli(
            "remotes", "warm-auth", "--remote", "hpc", "--remotes-config", str(good)
        ),
        "revision": lambda: store.resolve("nope"),
        "tracking": lambda: engine.remote_log(store, "hpc"),
    }
    out = [(name, error_of(call)) for name, call in cases.items()]
    (ds.path / "meta.md").write_text("changed\n")
    out.append(("checkout", error_of(lambda: store.checkout(store.head(), force=False))))
    with locks.dataset_lock(ds.path, what="batch job 42"):
        out.append(
            ("lock", error_of(lambda: locks.dataset_lock(ds.path, timeout=0.01).__enter__()))
        )
    return out


def test_every_error_an_operator_meets_has_a_troubleshooting_row(tmp_path, monkeypatch):
    rows = signature_rows()
    assert len(rows) >= 30
    unlisted = []
    for name, exc in real_errors(tmp_path, monkeypatch):
        line = exc.one_line()
        hits = [(sig, code) for sig, code, rx in rows if rx.match(line)]
        if not any(code == exc.exit_code for _, code in hits):
            unlisted.append(f"{name}: ({exc.exit_code}) {line!r}; rows matched: {hits}")
    assert not unlisted, "docs/troubleshooting.md lacks:\n" + "\n".join(unlisted)


def test_troubleshooting_rows_name_documented_exit_codes():
    documented = set(_exit_rows(TROUBLESHOOTING_MD, "Exit codes"))
    assert {code for _, code, _ in signature_rows()} <= documented
