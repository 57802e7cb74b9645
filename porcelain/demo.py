"""``usr demo``, ``usr drill sync-audit`` and the hidden ``usr dev`` writers.

``usr demo`` teaches the daily loop in under a minute with nothing set up: a scratch
"cluster" root and "laptop" root joined by a ``local`` remote whose profile lives in a
scratch remotes.toml (the operator's ~/.config is never read or written). Each step says
what it does, prints the command an operator would type, runs it through the same library
calls the CLI uses, prints the audit, and checks that it did what it should; the demo exits
non-zero at the first step that does not.
"""

from __future__ import annotations

import io
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from porcelain.options import Settings, dataset_argument, emit, format_option, pass_settings
from usr import drills, mock
from usr.dataset import Dataset
from usr.errors import UsrError, VerifyError
from usr.layout import dataset_path

DEMO_DATASET = "densegen/demo"
DEMO_REMOTE = "hpc"
DEMO_ROWS = 200


class DemoFailed(UsrError):
    """A demo step did not do what it should (exit 1: usr itself misbehaved)."""


@dataclass
class DemoWorld:
    """Where the demo lives; every command it prints is relative to ``work``."""

    work: Path
    hpc: Path
    laptop: Path
    config: Path
    audits: Path

    def rel(self, path: Path) -> str:
        return path.relative_to(self.work).as_posix()


def _say(text: str = "") -> None:
    click.echo(text)


def _indent(text: str, pad: str = "    ") -> str:
    return "\n".join(pad + line if line else line for line in text.splitlines())


class _Steps:
    """Numbered, explained steps; each ends with a check that raises DemoFailed."""

    def __init__(self, total: int) -> None:
        self.n = 0
        self.total = total

    def start(self, title: str, why: str, command: str | None = None) -> None:
        self.n += 1
        _say()
        _say(click.style(f"[{self.n}/{self.total}] {title}", bold=True))
        for line in why.splitlines():
            _say(f"      {line}")
        if command:
            _say(f"      $ {command}")

    def check(self, ok: bool, good: str, bad: str) -> None:
        if not ok:
            raise DemoFailed(f"demo step {self.n} ({bad})", "rerun with --keep DIR to inspect")
        _say(f"      ok: {good}")


def _sync(world: DemoWorld, action: str, name: str) -> dict[str, Any]:
    """diff/pull/push through the engine exactly as the CLI calls it; prints the audit."""
    from usr.sync import audit, engine

    options = engine.SyncOptions(remotes_config=str(world.config))
    target = engine.resolve_target(world.laptop, DEMO_DATASET, options)
    fn = {"diff": engine.diff, "pull": engine.pull, "push": engine.push}[action]
    doc = fn(target, DEMO_REMOTE, options, audit_json_out=world.audits / f"{name}.json")
    _say(_indent(audit.render_text(doc)))
    return doc["data"]


def _sync_command(world: DemoWorld, action: str, name: str) -> str:
    yes = " -y" if action != "diff" else ""
    return (
        f"usr --root {world.rel(world.laptop)} {action} {DEMO_DATASET} {DEMO_REMOTE}{yes} "
        f"--remotes-config {world.rel(world.config)} "
        f"--audit-json-out {world.rel(world.audits / (name + '.json'))}"
    )


def _log_text(root: Path) -> str:
    """``usr log --oneline`` of the demo dataset, through the real command."""
    from porcelain.history import log_cmd

    ctx = click.Context(log_cmd, obj=Settings(root_option=str(root)))
    with ctx, _StdoutCapture() as out:
        ctx.invoke(log_cmd, dataset=DEMO_DATASET, oneline=True, limit=None, stat=False, fmt="text")
    return out.getvalue().rstrip("\n")


class _StdoutCapture:
    """Collect what click.echo writes to stdout (to indent it under its step)."""

    def __enter__(self) -> io.StringIO:
        self._old = sys.stdout
        self.buffer = io.StringIO()
        sys.stdout = self.buffer
        return self.buffer

    def __exit__(self, *exc: object) -> None:
        sys.stdout = self._old


def run_demo(work: Path) -> None:
    """Play the chained loop in ``work`` (already empty); raise DemoFailed on a bad step."""
    world = DemoWorld(
        work=work,
        hpc=work / "hpc",
        laptop=work / "laptop",
        config=work / "remotes.toml",
        audits=work / "audits",
    )
    for d in (world.hpc, world.laptop, world.audits):
        d.mkdir()
    drills.write_local_remote(world.config, DEMO_REMOTE, world.hpc)
    _say(click.style("usr demo: one turn of the HPC <-> laptop sync loop", bold=True))
    _say(f"Scratch directory: {work}")
    _say("  hpc/           the cluster's datasets root (a batch job writes here)")
    _say("  laptop/        your datasets root (analysis and annotation write here)")
    _say(f"  remotes.toml   one profile, '{DEMO_REMOTE}': type local, base_dir hpc/")
    _say("  audits/        the audit JSON of every diff/pull/push")
    _say("Commands are shown relative to the scratch directory; with --keep DIR you can")
    _say("rerun them there. Over SSH the only change is the profile (see docs/setup.md).")
    steps = _Steps(8)
    ds_hpc = dataset_path(world.hpc, DEMO_DATASET)
    ds_laptop = dataset_path(world.laptop, DEMO_DATASET)

    steps.start(
        "A batch job on the cluster writes sequences",
        "The mock batch writer uses the Python API: it creates the dataset, appends rows\n"
        "to records.parquet, appends an event to .events.log and records a state.",
        f"usr --root hpc dev mock-batch {DEMO_DATASET} --rows {DEMO_ROWS}",
    )
    batch = mock.mock_batch(world.hpc, DEMO_DATASET, rows=DEMO_ROWS)
    steps.check(
        batch.rows == DEMO_ROWS,
        f"{DEMO_DATASET} on hpc has {batch.rows} rows (batch {batch.batch})",
        f"expected {DEMO_ROWS} rows on hpc, found {batch.rows}",
    )

    steps.start(
        "Preview: what differs between the laptop and the cluster?",
        "diff changes nothing on either side; it compares both working trees per section.",
        _sync_command(world, "diff", "01-diff"),
    )
    data = _sync(world, "diff", "01-diff")
    steps.check(
        data["relation"] == "local-missing"
        and data["primary"]["changed"]
        and not ds_laptop.exists(),
        "the laptop lacks the dataset (local-missing); nothing was written",
        f"expected relation local-missing, got {data['relation']}",
    )

    steps.start(
        "Pull the dataset to the laptop",
        "Both sides record their state first; files are staged, hash-verified, promoted.",
        _sync_command(world, "pull", "02-pull"),
    )
    data = _sync(world, "pull", "02-pull")
    rows_here = Dataset.open(world.laptop, DEMO_DATASET).info()["rows"]
    steps.check(
        data["transfer_state"] == "TRANSFERRED" and rows_here == DEMO_ROWS,
        f"TRANSFERRED; the laptop now has {rows_here} rows",
        f"pull state {data['transfer_state']}, {rows_here} rows on the laptop",
    )

    steps.start(
        "An annotation tool on the laptop attaches an overlay",
        "The mock annotation writer registers namespace 'infer' and attaches\n"
        "infer__ll and infer__gc for every row as one part under _derived/infer/.",
        f"usr --root laptop dev mock-infer {DEMO_DATASET}",
    )
    scored = mock.mock_infer(world.laptop, DEMO_DATASET)
    steps.check(
        scored.scored == DEMO_ROWS and scored.part is not None,
        f"{scored.scored} rows scored into {scored.part}",
        f"expected {DEMO_ROWS} rows scored, got {scored.scored}",
    )

    steps.start(
        "Preview again: the laptop is ahead",
        "The new part is listed as local_only in _derived.",
        _sync_command(world, "diff", "03-diff"),
    )
    data = _sync(world, "diff", "03-diff")
    steps.check(
        data["relation"] == "local-ahead"
        and scored.part in data["_derived"]["local_only"]
        and not data["_derived"]["remote_only"],
        "relation local-ahead; _derived local_only lists the new part",
        f"expected local-ahead with the part local_only, got {data['relation']}",
    )

    steps.start(
        "Push the annotations back to the cluster",
        "Objects stream without a lock; the remote ref moves by compare-and-swap and\n"
        "the remote checkout is verified before success is reported.",
        _sync_command(world, "push", "04-push"),
    )
    data = _sync(world, "push", "04-push")
    on_hpc = (ds_hpc / scored.part).is_file()
    steps.check(
        data["transfer_state"] == "TRANSFERRED" and on_hpc,
        "TRANSFERRED; the part is on the cluster",
        f"push state {data['transfer_state']}, part on hpc: {on_hpc}",
    )

    steps.start(
        "Check: both sides agree",
        "Running diff (or pull/push) again is safe: nothing differs, nothing moves.",
        _sync_command(world, "diff", "05-diff"),
    )
    data = _sync(world, "diff", "05-diff")
    steps.check(
        data["status"] == "up-to-date" and data["relation"] == "equal",
        "Status: up-to-date",
        f"expected up-to-date, got {data['status']} ({data['relation']})",
    )

    steps.start(
        "History: every write and every sync is a recorded state",
        "usr log walks the laptop's states, newest first.",
        f"usr --root laptop log {DEMO_DATASET} --oneline",
    )
    text = _log_text(world.laptop)
    _say(_indent(text))
    actions = text.splitlines()
    steps.check(
        any(" attach infer " in line for line in actions)
        and any(" mock batch " in line for line in actions),
        f"{len(actions)} states, from init to attach infer",
        "the log lacks the batch or the attach",
    )


@click.command("demo")
@click.option(
    "--keep",
    "keep",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    metavar="DIR",
    help="Build the demo in DIR and keep it (else a temp dir, removed at the end).",
)
def demo_command(keep: Path | None) -> None:
    """Play the HPC <-> laptop loop on a scratch local remote; needs no SSH and no config.

    A mock batch job appends sequences on the "cluster" root; the laptop runs diff and pull;
    a mock annotation tool attaches an overlay; diff and push send it back; a last diff says
    up-to-date and log shows the history. Each audit is printed. Exit 1 if a step misbehaves.
    """
    work, temporary = drills.prepare_work_dir(keep, "usr-demo-", "demo")
    ok = False
    try:
        run_demo(work)
        ok = True
    finally:
        if temporary and ok:
            shutil.rmtree(work, ignore_errors=True)
    _say()
    _say(click.style("Demo complete: the loop ran end to end.", bold=True))
    if temporary:
        _say("The scratch directory was removed; use --keep DIR to look around afterwards.")
    else:
        _say(f"Everything is kept in {work} (audits/ holds the audit JSON).")
    _say("Next: docs/quickstart.md sets up the same loop against your cluster.")


# ----------------------------------------------------------------------------- usr dev


@click.group("dev", hidden=True)
def dev_group() -> None:
    """Developer tools: the mock writers the demo, drills and tests use."""


@dev_group.command("mock-batch")
@dataset_argument
@click.option(
    "--rows", type=click.IntRange(min=1), default=100, show_default=True, help="Rows to append."
)
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same rows.")
@format_option
@pass_settings
def mock_batch_command(settings: Settings, dataset: str, rows: int, seed: int, fmt: str) -> None:
    """Append ROWS mock DNA records to DATASET as one batch (creating it if absent)."""
    result = mock.mock_batch(settings.root, dataset, rows=rows, seed=seed)
    verb = "created and wrote" if result.created else "appended"
    text = f"{dataset}: batch {result.batch} {verb} {result.added} rows ({result.rows} in total)"
    emit(fmt, result.__dict__, text)


@dev_group.command("mock-infer")
@dataset_argument
@click.option("--namespace", default="infer", show_default=True, help="Overlay namespace.")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same scores.")
@format_option
@pass_settings
def mock_infer_command(
    settings: Settings, dataset: str, namespace: str, seed: int, fmt: str
) -> None:
    """Score every row of DATASET not yet scored and attach it as one overlay part."""
    result = mock.mock_infer(settings.root, dataset, namespace=namespace, seed=seed)
    if result.part is None:
        text = f"{dataset}: every row already has {namespace}__ll; nothing attached"
    else:
        text = f"{dataset}: scored {result.scored} rows into {result.part}"
    emit(fmt, result.__dict__, text)


# ----------------------------------------------------------------------------- usr drill


@click.group("drill")
def drill_group() -> None:
    """Deterministic end-to-end drills that check sync fidelity and write a JSON report."""


def _print_step(step: drills.Step) -> None:
    mark = "pass" if step.ok else "FAIL"
    click.echo(f"{mark}  {step.name:<18} {step.expectation}")
    if not step.ok:
        detail = step.error or json.dumps(step.observed, sort_keys=True, default=str)
        click.echo(f"      observed: {detail}")


@drill_group.command("sync-audit")
@click.option(
    "--report-json",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    metavar="PATH",
    help="Where to write the drill report (indented JSON, sorted keys).",
)
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    metavar="DIR",
    help="Keep both roots and the audit files here (empty, or a previous drill's).",
)
def sync_audit_command(report_json: Path, work_dir: Path | None) -> None:
    """diff/pull/push over a local remote with _derived, _auxiliary and _registry changed
    on each side; checks each change is reported and transferred. Exit 5 if a step fails."""
    report = drills.run_sync_audit_drill(work_dir, on_step=_print_step)
    drills.write_report(report, report_json)
    click.echo(f"report: {report_json}")
    if not report["ok"]:
        failed = next((s["name"] for s in report["steps"] if not s["ok"]), "incomplete")
        raise VerifyError(f"sync-audit drill failed at step {failed}", f"see {report_json}")
    click.echo("drill ok: every perturbation was reported and transferred; final diff up-to-date")


COMMANDS: list[click.Command] = [demo_command, dev_group, drill_group]
