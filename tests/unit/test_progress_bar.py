"""The download and loading bars stay on one line at any terminal width, sizes in MB."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from rbee_fabric.cli import ui
from rbee_fabric.schemas import DownloadProgress, LoadingProgress

TOTAL = 253_100_000  # the embedded gemma3-270m GGUF: 253.1 MB


def _bar_lines(monkeypatch: pytest.MonkeyPatch, width: int, *events: DownloadProgress | LoadingProgress) -> list[str]:
    out = io.StringIO()
    monkeypatch.setattr(ui, "err", Console(file=out, width=width, highlight=False))
    reporter = ui.TerminalReporter()
    for event in events:
        if isinstance(event, DownloadProgress):
            reporter.download(event)
        else:
            reporter.loading(event)
    reporter.close_bar()
    return [line for line in out.getvalue().splitlines() if line.strip()]


@pytest.mark.parametrize("width", [60, 80, 140])
def test_the_download_bar_is_one_line_at_any_width(monkeypatch: pytest.MonkeyPatch, width: int) -> None:
    name = "gemma-3-270m-it-qat-q4_0-unquantized-very-long-name.Q4_K_M.gguf"
    lines = _bar_lines(
        monkeypatch, width,
        DownloadProgress(stage="downloading", filename=name, bytes_done=TOTAL // 2, bytes_total=TOTAL),
        DownloadProgress(stage="downloading", filename=name, bytes_done=TOTAL - 1000, bytes_total=TOTAL),
        DownloadProgress(stage="verifying", filename=name),
    )  # fmt: skip
    bar = lines[0]
    assert len(bar) <= width, bar
    assert bar.startswith("fetching gemma-3-2") and "…" in bar  # the long name is shortened, not wrapped
    assert "253.1/253.1 MB" in bar  # decimal MB, as models list; the bar ends full once verifying starts
    assert ("B/s" in bar) == (width >= 80)  # below 80 columns the speed gives way first
    assert lines[1].startswith("verifying ")


@pytest.mark.parametrize("width", [60, 80, 140])
def test_the_loading_bar_is_one_line_at_any_width(monkeypatch: pytest.MonkeyPatch, width: int) -> None:
    lines = _bar_lines(monkeypatch, width, LoadingProgress(stage="loading", progress=0.5))
    assert len(lines) == 1 and len(lines[0]) <= width
    assert lines[0].startswith("loading model") and lines[0].endswith(" 50%")
