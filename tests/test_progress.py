"""The transfer meter: bytes, rate and ETA on a terminal; nothing anywhere else."""

from __future__ import annotations

import io

from usr.progress import Progress, human_bytes, human_seconds


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_silent_when_stderr_is_not_a_terminal(monkeypatch):
    monkeypatch.delenv("USR_PROGRESS", raising=False)
    out = io.StringIO()
    meter = Progress("push to remote x", total=100, stream=out)
    assert not meter.enabled
    meter.update(50)
    meter.close()
    assert out.getvalue() == ""


def test_draws_bytes_rate_eta_on_a_terminal_and_erases_at_the_end(monkeypatch):
    monkeypatch.delenv("USR_PROGRESS", raising=False)
    monkeypatch.setattr("usr.progress.INTERVAL", 0.0)
    out = FakeTerminal()
    meter = Progress("push to remote x", total=4 << 20, stream=out)
    assert meter.enabled
    meter.update(1 << 20)
    drawn = out.getvalue()
    assert drawn.startswith("\rpush to remote x: 1.0 MiB of 4.0 MiB (25%), ")
    assert "/s, ETA " in drawn
    meter.close()
    assert out.getvalue().endswith("\r\x1b[K")


def test_env_switch_overrides_the_terminal_check(monkeypatch):
    monkeypatch.setenv("USR_PROGRESS", "0")
    assert not Progress("x", stream=FakeTerminal()).enabled
    monkeypatch.setenv("USR_PROGRESS", "1")
    assert Progress("x", stream=io.StringIO()).enabled


def test_unknown_total_shows_no_eta():
    meter = Progress("fetch", total=None, stream=io.StringIO(), enabled=True)
    meter.done = 3 << 20
    assert "ETA" not in meter.line() and "%" not in meter.line()


def test_human_units():
    assert human_bytes(512) == "512 B"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_seconds(59.6) == "1m00s"
    assert human_seconds(3725) == "1h02m"
