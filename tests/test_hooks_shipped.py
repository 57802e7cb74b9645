"""The shipped ``hooks/pre-push`` run through the hook mechanism, without a push: the
reduced-fidelity rules and what it checks for each ref line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pytest

from tests.conftest import REPO
from usr import hooks, registry
from usr.dataset import Dataset
from usr.errors import HookRefused
from usr.store import Store

DS = "densegen/my_dataset"


@pytest.fixture
def ctx(root: Path, monkeypatch: pytest.MonkeyPatch) -> hooks.HookContext:
    # The hook calls "$USR_PYTHON" -m usr: make this checkout importable for it.
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    for name in ("USR_ALLOW_UNVERIFIED_SIDECARS", "USR_HOOK_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    registry.register(root, "infer", [("infer__ll", "float64")])
    d = Dataset.init(root, DS)
    d.append_records([{"sequence": "ACGT"}, {"sequence": "GGCC"}], bio_type="dna")
    ids = d.to_table(overlay=False).column("id").to_pylist()
    d.attach(pa.table({"id": ids, "ll": [1.0, 2.0]}), namespace="infer")
    hdir = hooks.root_hooks_dir(root)
    hdir.mkdir()
    shutil.copy(REPO / "hooks" / "pre-push", hdir / "pre-push")
    return hooks.context_for(d.path, root, DS)


def _head(ctx: hooks.HookContext) -> str:
    head = Store.open(ctx.dataset_dir).record("snapshot").commit
    assert head is not None
    return head


@pytest.mark.parametrize("flag", ["verify_sidecars", "verify_derived_hashes"])
def test_reduced_fidelity_refused_before_any_check(
    ctx: hooks.HookContext, flag: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = hooks.verify_env(**{flag: False})
    with pytest.raises(HookRefused) as err:
        hooks.run_pre_push(ctx, "bu-scc", "/r", "a" * 40, None, env)
    spelled = "--no-" + flag.replace("_", "-")
    assert f"ran with reduced sidecar fidelity ({spelled})" in err.value.one_line()
    monkeypatch.setenv("USR_ALLOW_UNVERIFIED_SIDECARS", "1")
    out = hooks.run_pre_push(ctx, "bu-scc", "/r", _head(ctx), None, env)
    assert out.status == "passed"
    assert "reduced sidecar fidelity accepted" in out.stderr


def test_primary_only_is_named_as_such(ctx: hooks.HookContext) -> None:
    env = hooks.verify_env(verify_sidecars=False, verify_derived_hashes=False, primary_only=True)
    with pytest.raises(HookRefused, match=r"reduced sidecar fidelity \(--primary-only\)"):
        hooks.run_pre_push(ctx, "bu-scc", "/r", "a" * 40, None, env)


def test_allow_does_not_excuse_failed_checks(
    ctx: hooks.HookContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    (ctx.dataset_dir / "_artifacts").mkdir()
    (ctx.dataset_dir / "_artifacts" / "x.txt").write_text("unvouched")
    head = _head(ctx)
    monkeypatch.setenv("USR_ALLOW_UNVERIFIED_SIDECARS", "1")
    with pytest.raises(HookRefused) as err:
        hooks.run_pre_push(ctx, "bu-scc", "/r", head, None, hooks.verify_env())
    assert f"{DS} {head} has unverified sidecars; refusing push to bu-scc" in str(err.value)


def test_deleting_push_line_is_not_checked(ctx: hooks.HookContext) -> None:
    out = hooks.run_pre_push(ctx, "bu-scc", "/r", None, "b" * 40, hooks.verify_env())
    assert out.status == "passed"
