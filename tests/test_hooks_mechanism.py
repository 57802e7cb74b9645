"""The hook mechanism: lookup, the stdin/argv/env contract, refusals, timeouts.

Real hook executables run as real subprocesses; nothing of usr is mocked.
"""

from __future__ import annotations

import json
import os
import select
import stat
from pathlib import Path

import pytest

from usr import hooks
from usr.errors import HookRefused


def _write_hook(path: Path, body: str, executable: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body)
    mode = 0o755 if executable else 0o644
    path.chmod(mode)
    return path


@pytest.fixture
def ctx(tmp_path: Path) -> hooks.HookContext:
    root = tmp_path / "datasets"
    ds = root / "densegen" / "my_dataset"
    ds.mkdir(parents=True)
    (root / "registry.toml").write_text("")
    return hooks.context_for(ds)


def test_context_is_derived_from_the_dataset_directory(ctx: hooks.HookContext) -> None:
    assert ctx.dataset_id == "densegen/my_dataset"
    assert ctx.root == ctx.dataset_dir.parent.parent


def test_absent_hook_passes_silently(ctx: hooks.HookContext) -> None:
    out = hooks.run_pre_push(ctx, "bu-scc", "/remote", "a" * 40, None)
    assert out.status == "absent"
    assert out.to_json() == {"status": "absent"}


def test_pre_push_gets_args_stdin_and_env(ctx: hooks.HookContext, tmp_path: Path) -> None:
    seen = tmp_path / "seen.json"
    _write_hook(
        hooks.root_hooks_dir(ctx.root) / "pre-push",
        f"""read line
"$USR_PYTHON" - "$@" <<EOF > {seen}
import json, os, sys
keys = ["USR_HOOK", "USR_DATASET", "USR_ROOT", "USR_REMOTE", "USR_TARGET",
        "USR_VERIFY", "USR_VERIFY_SIDECARS", "USR_VERIFY_DERIVED_HASHES"]
print(json.dumps({{"argv": sys.argv[1:], "line": "$line", "cwd": os.getcwd(),
                  "env": {{k: os.environ.get(k) for k in keys}}}}))
EOF
""",
    )
    verify = hooks.verify_env(verify="hash", verify_sidecars=False)
    out = hooks.run_pre_push(ctx, "bu-scc", "alice@scc1:/project", "a" * 40, None, verify)
    assert out.status == "passed"
    doc = json.loads(seen.read_text())
    assert doc["argv"] == ["bu-scc", "alice@scc1:/project"]
    assert doc["line"] == f"refs/heads/main {'a' * 40} refs/heads/main {'0' * 40}"
    assert doc["cwd"] == str(ctx.dataset_dir)
    assert doc["env"] == {
        "USR_HOOK": "pre-push",
        "USR_DATASET": "densegen/my_dataset",
        "USR_ROOT": str(ctx.root),
        "USR_REMOTE": "bu-scc",
        "USR_TARGET": "alice@scc1:/project",
        "USR_VERIFY": "hash",
        "USR_VERIFY_SIDECARS": "0",
        "USR_VERIFY_DERIVED_HASHES": "1",
    }


def test_dataset_hook_wins_over_root_wide(ctx: hooks.HookContext) -> None:
    _write_hook(hooks.root_hooks_dir(ctx.root) / "pre-push", "echo root >&2; exit 1\n")
    _write_hook(hooks.dataset_hooks_dir(ctx.dataset_dir) / "pre-push", "exit 0\n")
    out = hooks.run_pre_push(ctx, "bu-scc", "/r", "a" * 40, "b" * 40)
    assert out.status == "passed"
    assert out.path == str(hooks.dataset_hooks_dir(ctx.dataset_dir) / "pre-push")


def test_refusal_shows_last_stderr_line_and_streams_all(
    ctx: hooks.HookContext, capfd: pytest.CaptureFixture[str]
) -> None:
    _write_hook(
        hooks.dataset_hooks_dir(ctx.dataset_dir) / "pre-push",
        "echo 'detail one' >&2\necho 'on stdout'\necho 'refusing: reason' >&2\nexit 3\n",
    )
    with pytest.raises(HookRefused) as err:
        hooks.run_pre_push(ctx, "bu-scc", "/r", "a" * 40, None)
    assert err.value.exit_code == 10
    assert "pre-push hook refused (exit 3): refusing: reason" in err.value.one_line()
    captured = capfd.readouterr()
    assert "detail one" in captured.err and "refusing: reason" in captured.err
    assert "on stdout" in captured.err  # hook stdout goes to stderr, as in git
    assert captured.out == ""


def test_not_executable_hook_is_a_clear_error(ctx: hooks.HookContext) -> None:
    path = _write_hook(hooks.root_hooks_dir(ctx.root) / "pre-push", "exit 0\n", executable=False)
    with pytest.raises(HookRefused) as err:
        hooks.run_pre_push(ctx, "bu-scc", "/r", "a" * 40, None)
    assert "is not executable" in err.value.one_line()
    assert f"chmod +x {path}" in err.value.one_line()


def test_hanging_hook_is_killed_with_its_process_group(
    ctx: hooks.HookContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hook (and a child it started) blocked reading a FIFO nobody writes: the timeout
    kills the whole group. No sleeping: both processes hold the write end of a second FIFO,
    so reading it to end-of-file proves that every one of them is gone."""
    block, witness = tmp_path / "block", tmp_path / "witness"
    os.mkfifo(block)
    os.mkfifo(witness)
    reader = os.open(witness, os.O_RDONLY | os.O_NONBLOCK)  # lets the hook open its end
    _write_hook(
        hooks.dataset_hooks_dir(ctx.dataset_dir) / "pre-push",
        f'exec 3>"{witness}"\ncat "{block}" &\necho started >&3\ncat "{block}"\n',
    )
    monkeypatch.setenv(hooks.TIMEOUT_ENV, "1")
    try:
        with pytest.raises(HookRefused) as err:
            hooks.run_pre_push(ctx, "bu-scc", "/r", "a" * 40, None)
        assert "did not finish within 1s" in err.value.one_line()
        assert "process group was killed" in err.value.one_line()
        os.set_blocking(reader, True)
        assert _read_to_eof(reader) == b"started\n"  # the child had started, and is gone
    finally:
        os.close(reader)


def _read_to_eof(fd: int) -> bytes:
    """Everything written to a FIFO until its last writer closes it (30 s safety bound)."""
    out = b""
    while True:
        ready, _, _ = select.select([fd], [], [], 30)
        assert ready, "a process of the hook's group still holds the FIFO open"
        block = os.read(fd, 4096)
        if not block:
            return out
        out += block


def test_bad_timeout_setting_is_refused(
    ctx: hooks.HookContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_hook(hooks.dataset_hooks_dir(ctx.dataset_dir) / "pre-push", "exit 0\n")
    monkeypatch.setenv(hooks.TIMEOUT_ENV, "soon")
    with pytest.raises(HookRefused, match="USR_HOOK_TIMEOUT"):
        hooks.run_pre_push(ctx, "bu-scc", "/r", "a" * 40, None)


def test_no_verify_skips_without_running(ctx: hooks.HookContext, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    _write_hook(hooks.dataset_hooks_dir(ctx.dataset_dir) / "pre-push", f"touch {marker}\nexit 1\n")
    out = hooks.run_pre_push(ctx, "bu-scc", "/r", "a" * 40, None, no_verify=True)
    assert out.to_json() == {"status": "skipped"}
    assert not marker.exists()


def test_post_hooks_are_advisory(ctx: hooks.HookContext) -> None:
    hdir = hooks.dataset_hooks_dir(ctx.dataset_dir)
    _write_hook(hdir / "post-push", "echo 'notify failed' >&2\nexit 2\n")
    out = hooks.run_post_push(ctx, "bu-scc", "/r", "a" * 40, None)
    assert (out.status, out.exit_code) == ("failed", 2)
    assert "notify failed" in out.stderr


def test_post_pull_contract(ctx: hooks.HookContext, tmp_path: Path) -> None:
    seen = tmp_path / "seen"
    _write_hook(
        hooks.dataset_hooks_dir(ctx.dataset_dir) / "post-pull",
        f'read line\necho "$1 $2|$line|$USR_PREVIOUS_HEAD" > {seen}\n',
    )
    out = hooks.run_post_pull(ctx, "bu-scc", "/r", None, "c" * 40)
    assert out.status == "passed"
    assert seen.read_text().strip() == (
        f"bu-scc /r|refs/heads/main {'c' * 40} refs/remotes/bu-scc/main {'c' * 40}|{'0' * 40}"
    )


def test_pre_snapshot_refuses(ctx: hooks.HookContext, tmp_path: Path) -> None:
    seen = tmp_path / "seen"
    _write_hook(
        hooks.root_hooks_dir(ctx.root) / "pre-snapshot",
        f'echo "$1 $USR_DATASET" > {seen}\necho "no snapshots on Fridays" >&2\nexit 1\n',
    )
    with pytest.raises(HookRefused, match="no snapshots on Fridays"):
        hooks.run_pre_snapshot(ctx.dataset_dir, "snapshot")
    assert seen.read_text().strip() == "snapshot densegen/my_dataset"


def test_hook_that_cannot_start_is_a_clear_error(ctx: hooks.HookContext) -> None:
    path = hooks.dataset_hooks_dir(ctx.dataset_dir) / "pre-push"
    path.parent.mkdir(parents=True)
    path.write_text("#!/nonexistent/interpreter\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    with pytest.raises(HookRefused, match="could not be started"):
        hooks.run_pre_push(ctx, "bu-scc", "/r", "a" * 40, None)
    assert os.access(path, os.X_OK)
