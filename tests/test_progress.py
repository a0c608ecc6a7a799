"""Progress in a log file or pipe: plain lines, a few of them, never a carriage-return redraw per step."""

from __future__ import annotations

import time

import pytest

from inspector.common import progress
from inspector.common.progress import progress_bar


def test_a_long_loop_into_a_file_writes_a_few_plain_lines(capsys: pytest.CaptureFixture[str]) -> None:
    for _ in progress_bar(range(20_000), desc="fit", unit="img"):
        pass
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert 1 <= len(lines) <= 3, lines  # the loop takes well under LOG_INTERVAL_S: a start and an end line at most
    assert "20000/20000" in lines[-1]


def test_a_slow_loop_reports_about_every_interval(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 0.05)
    for _ in progress_bar(range(10), desc="coreset"):
        time.sleep(0.03)
    lines = capsys.readouterr().err.splitlines()
    assert 3 <= len(lines) <= 8, lines
    assert all(line.startswith("coreset") for line in lines)
