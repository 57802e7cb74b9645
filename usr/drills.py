"""The deterministic sync audit drill: diff/pull/push with sidecar perturbations on each side.

Shared by ``usr drill sync-audit`` and ``scripts/run_usr_sync_audit_drill.py``. It builds a
cluster root and a laptop root with a ``local`` remote between them (its own remotes.toml;
the operator's config is never read), then:

1. setup: the batch writer creates the dataset on the cluster; the laptop bootstraps it;
2. the cluster perturbs ``_derived`` (a new overlay namespace), ``_auxiliary`` (an
   artifact) and ``_registry`` (the dataset's frozen registry and the sidecar ledger);
3. ``diff_before_pull`` must report each of them as changed and ``remote_only``;
   ``pull`` must transfer them byte for byte;
4. the laptop perturbs the same three sections; ``diff_before_push`` must report each as
   ``local_only``; ``push`` must transfer them;
5. ``diff_after_push`` must say up-to-date, and both sides' sidecars must verify.

Every step records its expectation, what was observed and pass/fail in the report; the
report also carries every audit JSON in full. Same inputs give the same report apart from
timestamps and what derives from them (commit ids, overlay part names, durations).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from usr import mock
from usr.atomic import write_text
from usr.errors import UsageError
from usr.layout import dataset_path

DATASET_ID = "densegen/drill_dataset"
REMOTE = "drill-local"
REPORT_VERSION = 1
#: The files each side writes as its ``_auxiliary`` perturbation.
REMOTE_ARTIFACT = "_artifacts/batch-report.json"
LOCAL_ARTIFACT = "_artifacts/notebook-summary.json"
#: Marks a directory as made by a drill or demo, so a rerun may clear it.
MARKER = ".usr-scratch"


def prepare_work_dir(path: Path | None, prefix: str, kind: str) -> tuple[Path, bool]:
    """A scratch directory: a new temp dir, or ``path`` emptied for reuse.

    ``path`` may be absent, empty, or one this tool made before (it holds :data:`MARKER`);
    anything else is refused, so a typo can not wipe someone's data. Returns the directory
    and whether it is a temp dir the caller should remove.
    """
    if path is None:
        work = Path(tempfile.mkdtemp(prefix=prefix))
        temporary = True
    else:
        work = path.expanduser().absolute()
        temporary = False
        if work.exists() and not work.is_dir():
            raise UsageError(f"{work} is not a directory", "pick another --work-dir/--keep")
        if work.is_dir() and any(work.iterdir()):
            if not (work / MARKER).is_file():
                raise UsageError(
                    f"{work} is not empty and was not made by usr {kind}",
                    "pick an empty or new directory",
                )
            for child in work.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        work.mkdir(parents=True, exist_ok=True)
    (work / MARKER).write_text(f"made by usr {kind}; safe to delete\n")
    return work, temporary


def write_local_remote(config: Path, name: str, base_dir: Path) -> Path:
    """A remotes.toml holding one ``local`` profile (mode 0600, like every profile file)."""
    table = {"type": "local", "base_dir": str(base_dir)}
    config.write_text(tomli_w.dumps({"remotes": {name: table}}))
    config.chmod(0o600)
    return config


@dataclass
class Step:
    """One checked step of the drill."""

    name: str
    expectation: str
    observed: dict[str, Any] = field(default_factory=dict)
    ok: bool = False
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "expectation": self.expectation,
            "observed": self.observed,
            "ok": self.ok,
        }
        if self.error is not None:
            out["error"] = self.error
        return out


@dataclass
class Drill:
    """State of one drill run: where things are and what has been observed so far."""

    work: Path
    local_root: Path
    remote_root: Path
    audit_dir: Path
    config: Path
    steps: list[Step] = field(default_factory=list)
    planned: int = 0
    audits: dict[str, dict[str, Any]] = field(default_factory=dict)
    on_step: Callable[[Step], None] | None = None

    @property
    def local_dir(self) -> Path:
        return dataset_path(self.local_root, DATASET_ID)

    @property
    def remote_dir(self) -> Path:
        return dataset_path(self.remote_root, DATASET_ID)

    def sync(self, name: str, action: str) -> dict[str, Any]:
        """Run diff/pull/push through the engine, keep its audit JSON under ``name``."""
        from usr.sync import engine

        options = engine.SyncOptions(remotes_config=str(self.config))
        target = engine.resolve_target(self.local_root, DATASET_ID, options)
        out = self.audit_dir / f"{name}.json"
        fn = {"diff": engine.diff, "pull": engine.pull, "push": engine.push}[action]
        try:
            doc = fn(target, REMOTE, options, audit_json_out=out)
        finally:
            if out.is_file():
                self.audits[name] = json.loads(out.read_text())
        return doc

    def check(self, name: str, expectation: str, probe: Callable[[], dict[str, Any]]) -> bool:
        """Run ``probe`` (it returns what it observed, with ``ok``); record the step."""
        step = Step(name, expectation)
        try:
            observed = probe()
            step.ok = bool(observed.pop("ok"))
            step.observed = observed
        except Exception as exc:  # noqa: BLE001 - a failed step is reported, not raised
            step.error = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
            step.ok = False
        self.steps.append(step)
        if self.on_step is not None:
            self.on_step(step)
        return step.ok


def _files(directory: Path, sections: tuple[str, ...]) -> dict[str, bytes]:
    """Working files under the given top-level directories (bytes, by relative path)."""
    out: dict[str, bytes] = {}
    for top in sections:
        base = directory / top
        if base.is_dir():
            for p in sorted(base.rglob("*")):
                if p.is_file() and not p.name.startswith(".usr"):
                    out[p.relative_to(directory).as_posix()] = p.read_bytes()
    return out


_SIDECAR_DIRS = ("_derived", "_artifacts", "_registry")


def _perturb(root: Path, namespace: str, artifact: str, note: str) -> list[str]:
    """One side's perturbation of _derived, _auxiliary and _registry; returns the paths.

    ``_derived``: a mock annotation pass in ``namespace`` (a new overlay part);
    ``_registry``: the frozen registry copy and the sidecar ledger that pass updates;
    ``_auxiliary``: an artifact file, vouched for in the ledger as a writer would.
    """
    from usr import ledger, sidecars

    result = mock.mock_infer(root, DATASET_ID, namespace=namespace, seed=7)
    directory = dataset_path(root, DATASET_ID)
    doc = {"drill": "sync-audit", "note": note, "namespace": namespace, "rows": result.scored}
    write_text(directory / artifact, json.dumps(doc, indent=2, sort_keys=True) + "\n")
    ledger.record(directory, [artifact], via="api")
    if result.part is None:
        raise RuntimeError(f"mock annotation in {namespace!r} scored no rows")
    return sorted([result.part, artifact, sidecars.FROZEN_REGISTRY, ledger.LEDGER_PATH])


def _section_report(data: dict[str, Any], paths: list[str], side: str) -> dict[str, Any]:
    """Did the audit list each path as changed on ``side`` only, in its section, with
    that side ahead (anything written on the other side meanwhile fails the step)?"""
    other = "remote" if side == "local" else "local"
    derived = [p for p in paths if p.startswith("_derived/")]
    aux = [p for p in paths if not p.startswith("_derived/")]
    d, a = data["_derived"], data["_auxiliary"]
    listed = set(d[f"{side}_only"]) | set(a[f"{side}_only"])
    observed = {
        "relation": data["relation"],
        "transfer_state": data.get("transfer_state"),
        "_derived.changed": d["changed"],
        "_auxiliary.changed": a["changed"],
        f"_derived.{side}_only": d[f"{side}_only"],
        f"_auxiliary.{side}_only": a[f"{side}_only"],
        f"_derived.{other}_only": d[f"{other}_only"],
        f"_auxiliary.{other}_only": a[f"{other}_only"],
        "changes": data["changes"],
    }
    observed["ok"] = (
        data["relation"] == f"{side}-ahead"
        and d["changed"]
        and a["changed"]
        and data["changes"]["derived"]
        and data["changes"]["auxiliary"]
        and set(derived) <= set(d[f"{side}_only"])
        and set(aux) <= set(a[f"{side}_only"])
        and set(paths) <= listed
        and not d[f"{other}_only"]
        and not a[f"{other}_only"]
    )
    return observed


def _same_files(drill: Drill, paths: list[str], state: str) -> dict[str, Any]:
    local = _files(drill.local_dir, _SIDECAR_DIRS)
    remote = _files(drill.remote_dir, _SIDECAR_DIRS)
    missing = sorted(p for p in paths if p not in local or p not in remote)
    differ = sorted(p for p in set(local) | set(remote) if local.get(p) != remote.get(p))
    return {
        "transfer_state": state,
        "paths": paths,
        "missing_on_a_side": missing,
        "differing_sidecars": differ,
        "ok": state == "TRANSFERRED" and not missing and not differ,
    }


def _verify_sidecars(root: Path) -> dict[str, Any]:
    from usr import sidecars

    directory = dataset_path(root, DATASET_ID)
    report = sidecars.check_state(sidecars.open_state(directory, "HEAD"), DATASET_ID, root)
    return {
        "checked": len(report.checked),
        "problems": [p.line() for p in report.problems],
        "ok": not report.problems,
    }


def run_sync_audit_drill(
    work_dir: Path | None = None,
    on_step: Callable[[Step], None] | None = None,
    rows: int = 120,
) -> dict[str, Any]:
    """Run the drill and return its report (see the module docstring).

    ``work_dir`` keeps both roots and the audit files for inspection (it must be empty or
    a previous drill's); without it a temp dir is used and removed afterwards.
    """
    from usr.sync.audit import now_iso

    work, temporary = prepare_work_dir(work_dir, "usr-sync-audit-drill-", "drill sync-audit")
    started = now_iso()
    drill = Drill(
        work=work,
        local_root=work / "local",
        remote_root=work / "remote",
        audit_dir=work / "audits",
        config=work / "remotes.toml",
        on_step=on_step,
    )
    for d in (drill.local_root, drill.remote_root, drill.audit_dir):
        d.mkdir()
    write_local_remote(drill.config, REMOTE, drill.remote_root)
    try:
        _play(drill, rows)
    finally:
        report = _report(drill, started, kept=not temporary)
        if temporary:
            shutil.rmtree(work, ignore_errors=True)
    return report


def _play(drill: Drill, rows: int) -> None:
    """The drill's steps in order; stops at the first step that fails."""
    remote_paths: list[str] = []
    local_paths: list[str] = []

    def setup() -> dict[str, Any]:
        batch = mock.mock_batch(drill.remote_root, DATASET_ID, rows=rows, seed=11)
        doc = drill.sync("bootstrap_pull", "pull")["data"]
        return {
            "remote_rows": batch.rows,
            "bootstrap_relation": doc["relation"],
            "transfer_state": doc["transfer_state"],
            "ok": batch.rows == rows and doc["transfer_state"] == "TRANSFERRED",
        }

    def perturb_remote() -> dict[str, Any]:
        remote_paths[:] = _perturb(drill.remote_root, "densegen", REMOTE_ARTIFACT, "cluster")
        return {"paths": remote_paths, "ok": len(remote_paths) == 4}

    def diff_before_pull() -> dict[str, Any]:
        data = drill.sync("diff_before_pull", "diff")["data"]
        return _section_report(data, remote_paths, "remote")

    def pull() -> dict[str, Any]:
        data = drill.sync("pull", "pull")["data"]
        seen = _section_report(data, remote_paths, "remote")
        moved = _same_files(drill, remote_paths, data["transfer_state"])
        return {"audit": seen, "files": moved, "ok": seen["ok"] and moved["ok"]}

    def perturb_local() -> dict[str, Any]:
        local_paths[:] = _perturb(drill.local_root, "infer", LOCAL_ARTIFACT, "laptop")
        return {"paths": local_paths, "ok": len(local_paths) == 4}

    def diff_before_push() -> dict[str, Any]:
        data = drill.sync("diff_before_push", "diff")["data"]
        return _section_report(data, local_paths, "local")

    def push() -> dict[str, Any]:
        data = drill.sync("push", "push")["data"]
        seen = _section_report(data, local_paths, "local")
        moved = _same_files(drill, local_paths, data["transfer_state"])
        return {"audit": seen, "files": moved, "ok": seen["ok"] and moved["ok"]}

    def diff_after_push() -> dict[str, Any]:
        data = drill.sync("diff_after_push", "diff")["data"]
        return {
            "status": data["status"],
            "relation": data["relation"],
            "changes.any": data["changes"]["any"],
            "ok": data["status"] == "up-to-date"
            and data["relation"] == "equal"
            and not data["changes"]["any"],
        }

    def verify_both() -> dict[str, Any]:
        local, remote = _verify_sidecars(drill.local_root), _verify_sidecars(drill.remote_root)
        return {"local": local, "remote": remote, "ok": local["ok"] and remote["ok"]}

    plan: list[tuple[str, str, Callable[[], dict[str, Any]]]] = [
        ("setup", f"the cluster holds {rows} rows; the laptop bootstraps them", setup),
        (
            "perturb_remote",
            "the cluster writes a _derived part, an _artifacts file and _registry files",
            perturb_remote,
        ),
        (
            "diff_before_pull",
            "diff reports every cluster perturbation as changed and remote_only, none local_only",
            diff_before_pull,
        ),
        (
            "pull",
            "pull is TRANSFERRED and the laptop's sidecars equal the cluster's byte for byte",
            pull,
        ),
        (
            "perturb_local",
            "the laptop writes a _derived part, an _artifacts file and _registry files",
            perturb_local,
        ),
        (
            "diff_before_push",
            "diff reports every laptop perturbation as changed and local_only, none remote_only",
            diff_before_push,
        ),
        (
            "push",
            "push is TRANSFERRED and the cluster's sidecars equal the laptop's byte for byte",
            push,
        ),
        (
            "diff_after_push",
            "diff says up-to-date: relation equal, no section changed",
            diff_after_push,
        ),
        (
            "verify_sidecars",
            "verify-sidecars finds no problem on either side (ledger, contracts, join keys)",
            verify_both,
        ),
    ]
    drill.planned = len(plan)
    for name, expectation, probe in plan:
        if not drill.check(name, expectation, probe):
            return


def _report(drill: Drill, started: str, kept: bool) -> dict[str, Any]:
    from usr.sync.audit import now_iso

    names = ("diff_before_pull", "pull", "diff_before_push", "push", "diff_after_push")
    final = drill.audits.get("diff_after_push", {}).get("data", {})
    return {
        "report_version": REPORT_VERSION,
        "drill": "sync-audit",
        "dataset_id": DATASET_ID,
        "remote": REMOTE,
        "work_dir": str(drill.work) if kept else None,
        "local_root": str(drill.local_root),
        "remote_root": str(drill.remote_root),
        "audit_dir": str(drill.audit_dir),
        "audits": {name: drill.audits.get(name) for name in names},
        "final_up_to_date": final.get("status") == "up-to-date",
        "steps": [s.to_json() for s in drill.steps],
        "ok": len(drill.steps) == drill.planned and all(s.ok for s in drill.steps),
        "started_at": started,
        "finished_at": now_iso(),
    }


def write_report(report: dict[str, Any], path: Path) -> Path:
    """The report as indented JSON with sorted keys (atomically)."""
    write_text(path, json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
    return path


# ----------------------------------------------------------------------------- adversaries
#
# Small hostile writers for the harness and the adversarial tests: each produces the input
# a careless or broken tool would, so the check that must refuse it runs for real.


def write_schema_violating_overlay(
    root: Path | str, dataset_id: str, out: Path | str, namespace: str = "infer", rows: int = 3
) -> Path:
    """A CSV keyed by real record ids whose ``ll`` values are not numbers, for a namespace
    whose ``<namespace>__ll`` is registered float64: attach must refuse it (exit 3)."""
    from usr.dataset import Dataset

    ids = Dataset.open(root, dataset_id).head(rows, overlay=False).column("id").to_pylist()
    lines = ["id,ll"] + [f"{rid},not-a-number" for rid in ids]
    path = Path(out)
    write_text(path, "\n".join(lines) + "\n")
    return path


def tamper_overlay_part(root: Path | str, dataset_id: str, namespace: str = "infer") -> str:
    """Edit the newest overlay part of ``namespace`` in place (one value changed, still
    valid Parquet), as a tool that bypasses ``attach`` would. Its bytes no longer match the
    sidecar ledger, so verify-sidecars and the shipped pre-push hook must refuse it.
    Returns the part's dataset-relative path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory = dataset_path(Path(root).absolute(), dataset_id)
    parts = sorted((directory / "_derived" / namespace).glob("*.parquet"))
    if not parts:
        raise FileNotFoundError(f"no overlay part of {namespace!r} in {directory}")
    part = parts[-1]
    table = pq.read_table(part)
    column = f"{namespace}__ll"
    values = table.column(column).to_pylist()
    values[0] = (values[0] or 0.0) + 1.0
    index = table.schema.get_field_index(column)
    table = table.set_column(index, table.schema.field(index), pa.array(values, pa.float64()))
    with part.open("wb") as fh:  # in place, deliberately: this is the tampering
        pq.write_table(table, fh)
    return part.relative_to(directory).as_posix()
