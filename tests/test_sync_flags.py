"""Flag validation of usr diff/pull/push: refused combinations say why, exit 2."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["pull", "--primary-only", "--verify-sidecars"], "--primary-only transfers no sidecars"),
        (["push", "--primary-only", "--verify-derived-hashes"], "nothing to hash"),
        (["diff", "--primary-only", "--skip-snapshots"], "already leaves _snapshots out"),
        (["pull", "--lock-timeout", "0"], "positive"),
        (["push", "--remote-path", "/x", "--primary-only"], "file mode moves exactly one file"),
        (["pull", "--verify", "md5"], "md5"),
    ],
)
def test_refused_combinations(usr, root, args, reason):
    command, *rest = args
    r = usr("--root", str(root), command, "densegen/my_dataset", "bu-scc", *rest)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("usr: error: ")
    assert reason in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_every_documented_flag_is_accepted(usr):
    for command in ("diff", "pull", "push"):
        r = usr(command, "--help")
        assert r.returncode == 0
        for flag in (
            "--primary-only",
            "--skip-snapshots",
            "--verify",
            "--verify-sidecars / --no-verify-sidecars",
            "--verify-derived-hashes / --no-verify-derived-hashes",
            "--audit-json-out",
            "--strict-bootstrap-id",
            "--remotes-config",
            "--remote-path",
            "--lock-timeout",
        ):
            assert flag in r.stdout, (command, flag)
    assert "--format" in usr("diff", "--help").stdout
    for command in ("pull", "push"):
        out = usr(command, "--help").stdout
        assert "-y, --yes" in out and "--dry-run" in out


def test_bad_dataset_id_is_input_error(usr, root):
    r = usr("--root", str(root), "diff", "a/b/c", "bu-scc")
    assert r.returncode == 3
    assert "more than two parts" in r.stderr


def test_path_without_registry_root_is_a_clear_error(usr, tmp_path):
    d = tmp_path / "loose" / "ds"
    d.mkdir(parents=True)
    r = usr("diff", str(d), "bu-scc")
    assert r.returncode == 4
    assert "registry.toml" in r.stderr


@pytest.mark.parametrize("kind", ["ssh", "local-without-env"])
def test_inline_limit_travels_to_the_remote(kind, tmp_path, monkeypatch, request):
    """``$USR_INLINE_LIMIT`` changes how files are cut; ssh forwards no environment, so the
    client sends it in ``hello``. Without that the remote records its checked-out files as a
    new state (same bytes, other tree entries) and the second push is refused."""
    from tests.test_sync_scenarios import make_dataset, make_env

    monkeypatch.setenv("USR_INLINE_LIMIT", "4096")
    e = make_env("ssh" if kind == "ssh" else "local", tmp_path, request)
    if kind != "ssh":  # a local remote whose serve does not inherit the variable either
        import sys

        import tomli_w

        table = {
            "type": "local",
            "base_dir": str(e.remote_root),
            "remote_usr": f"env -u USR_INLINE_LIMIT {sys.executable} -m usr",
        }
        e.config.write_text(tomli_w.dumps({"remotes": {"bu-scc": table}}))
    ds = make_dataset(e.local_root, rows=4)
    (ds.path / "_artifacts").mkdir()
    (ds.path / "_artifacts" / "plot.svg").write_text("<svg>" + "x" * 20000 + "</svg>")
    assert e.push()["transfer_state"] == "TRANSFERRED"
    assert e.diff()["status"] == "up-to-date"
    assert e.push()["transfer_state"] == "NO-OP"
