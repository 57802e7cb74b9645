"""The runbooks in docs/ really run: every ```bash block, in order, against a loopback sshd.

For each runbook a fresh world is built: a cluster root served by the real OpenSSH fixture
as remote ``bu-scc`` (remotes.toml at ``$USR_REMOTES_PATH``), holding
``densegen/my_dataset`` written by the mock batch writer; an empty laptop root at
``$USR_ROOT``; HOME in the scratch directory. ``uv run CMD`` in a block runs CMD from this
checkout through small shims on PATH (``uv``, ``usr``, ``python``), so the blocks are run
exactly as written. Each block runs with ``bash -e -o pipefail`` in a scratch working
directory that links ``scripts/`` from the repository; blocks share files, not variables.
Runbooks run two at a time, each in its own world (they share only the sshd).

A block preceded by ``<!-- docs-test: skip (reason) -->`` is not run (things only a real
cluster or a person at a terminal can do); the reason is required and skips stay few.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO, usr_env
from usr import mock

DOCS = REPO / "docs"
RUNBOOKS = [
    "quickstart.md",
    "setup.md",
    "modes.md",
    "troubleshooting.md",
    "audit-loop.md",
    "workflow-map.md",
    "fidelity-drills.md",
    "cli.md",
]
DATASET = "densegen/my_dataset"
MAX_SKIPS = 8
_FENCE = re.compile(r"^```(\S*)\s*$")
_SKIP = re.compile(r"^<!--\s*docs-test:\s*skip\s*\((?P<reason>[^)]+)\)\s*-->\s*$")


@dataclass
class Block:
    doc: str
    line: int
    code: str
    skip: str | None


def blocks(doc: str) -> list[Block]:
    """Every ```bash block of ``doc`` with its line number and skip reason (if marked)."""
    out: list[Block] = []
    lines = (DOCS / doc).read_text().splitlines()
    i = 0
    pending_skip: str | None = None
    while i < len(lines):
        m = _SKIP.match(lines[i].strip())
        if m:
            pending_skip = m.group("reason").strip()
            i += 1
            continue
        fence = _FENCE.match(lines[i])
        if fence:
            lang, start = fence.group(1), i + 1
            j = start
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            if lang == "bash":
                out.append(Block(doc, start, "\n".join(lines[start:j]) + "\n", pending_skip))
            pending_skip = None
            i = j + 1
            continue
        if lines[i].strip():
            pending_skip = None  # a marker applies to the very next block only
        i += 1
    return out


def _shims(bindir: Path) -> None:
    bindir.mkdir()
    py = sys.executable
    scripts = {
        "uv": (
            "#!/bin/sh\n"
            "# docs-test shim: `uv run [--flags] CMD ARGS` runs CMD from this checkout\n"
            '[ "$1" = run ] || { echo "docs-test: only `uv run` is shimmed" >&2; exit 2; }\n'
            "shift\n"
            'while [ $# -gt 0 ]; do case "$1" in --) shift; break;; -*) shift;; *) break;; '
            "esac; done\n"
            'exec "$@"\n'
        ),
        "usr": f'#!/bin/sh\nexec {py} -m usr "$@"\n',
        "python": f'#!/bin/sh\nexec {py} "$@"\n',
        "python3": f'#!/bin/sh\nexec {py} "$@"\n',
    }
    for name, text in scripts.items():
        (bindir / name).write_text(text)
        (bindir / name).chmod(0o755)


def _needs_jq(doc: str) -> bool:
    return any("jq " in b.code for b in blocks(doc) if b.skip is None)


def run_runbook(doc: str, sshd, base: Path) -> str | None:
    """Run every unmarked bash block of ``doc`` in a fresh world under ``base``; return a
    failure description, or None when every block exited 0."""
    runnable = [b for b in blocks(doc) if b.skip is None]
    if not runnable:
        return f"{doc} has no runnable bash block"
    cluster, laptop, work, home = (base / n for n in ("cluster", "laptop", "work", "home"))
    for d in (cluster, laptop, work, home):
        d.mkdir(parents=True)
    (work / "scripts").symlink_to(REPO / "scripts")
    config = sshd.write_remotes(base / "remotes.toml", cluster)
    mock.mock_batch(cluster, DATASET, rows=30, seed=1)
    _shims(base / "bin")
    env = usr_env(
        {
            "USR_ROOT": str(laptop),
            "USR_REMOTES_PATH": str(config),
            "HOME": str(home),
            "PATH": f"{base / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
            "TMPDIR": str(base),
        }
    )
    for block in runnable:
        proc = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", block.code],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if proc.returncode != 0:
            return (
                f"{doc}:{block.line}: block exited {proc.returncode}\n--- block\n{block.code}"
                f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"
            )
    return None


@pytest.fixture(scope="module")
def runbook_results(request, sshd, tmp_path_factory) -> dict[str, str | None]:
    """Run the selected runbooks two at a time (each in its own world: they share nothing
    but the sshd), so the wall time is about half of running them one after another."""
    wanted = [
        doc
        for doc in RUNBOOKS
        if any(f"test_runbook_blocks_run[{doc}]" in item.nodeid for item in request.session.items)
    ]
    if shutil.which("jq") is None:
        wanted = [d for d in wanted if not _needs_jq(d)]
    base = tmp_path_factory.mktemp("runbooks")
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {doc: pool.submit(run_runbook, doc, sshd, base / doc[:-3]) for doc in wanted}
        return {doc: f.result() for doc, f in futures.items()}


@pytest.mark.parametrize("doc", RUNBOOKS)
def test_runbook_blocks_run(doc: str, runbook_results: dict[str, str | None]) -> None:
    if doc not in runbook_results:
        if os.environ.get("USR_REQUIRE_SSHD") == "1":
            pytest.fail(f"{doc} needs jq (CI installs it)")
        pytest.skip("jq is not installed")
    failure = runbook_results[doc]
    assert failure is None, failure


def test_skips_are_few_and_say_why() -> None:
    skipped = [b for doc in RUNBOOKS for b in blocks(doc) if b.skip is not None]
    assert len(skipped) <= MAX_SKIPS, [(b.doc, b.line, b.skip) for b in skipped]
    assert all(len(b.skip or "") >= 10 for b in skipped)


def test_block_extraction_sees_markers_and_fences(tmp_path: Path, monkeypatch) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "text\n\n```bash\necho one\n```\n\n<!-- docs-test: skip (needs a real cluster) -->\n"
        "```bash\nssh-copy-id x\n```\n\n```toml\n[a]\n```\n\n```bash\necho two\n```\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "DOCS", tmp_path)
    got = [(b.code.strip(), b.skip) for b in blocks("page.md")]
    assert got == [
        ("echo one", None),
        ("ssh-copy-id x", "needs a real cluster"),
        ("echo two", None),
    ]
