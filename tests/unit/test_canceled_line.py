"""Ctrl+C: 'Canceled.' starts its own line on a terminal, not glued to the ^C echo."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from rbee_fabric.cli import ui
from rbee_fabric.errors import RequestCanceled


@pytest.mark.parametrize("terminal", [True, False])
def test_canceled_starts_a_new_line_on_a_terminal(monkeypatch: pytest.MonkeyPatch, terminal: bool) -> None:
    out = io.StringIO()
    monkeypatch.setattr(ui, "err", Console(file=out, width=80, force_terminal=terminal, highlight=False))
    with pytest.raises(SystemExit) as got:
        ui.fail(RequestCanceled("Canceled."))
    assert got.value.code == 130
    # A terminal showed "...the story you^C": the message goes below it. A pipe gets it alone.
    assert out.getvalue() == ("\nCanceled.\n" if terminal else "Canceled.\n")
    out.truncate(0), out.seek(0)
    with pytest.raises(SystemExit) as got:
        ui.report(KeyboardInterrupt())
    assert got.value.code == 130
    assert out.getvalue() == ("\nCanceled.\n" if terminal else "Canceled.\n")


def test_an_error_after_tokens_starts_its_own_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from rbee_fabric.errors import WorkerCrashed

    err = io.StringIO()
    monkeypatch.setattr(ui, "err", Console(file=err, width=80, highlight=False))
    reporter = ui.TerminalReporter()
    reporter.token("and how they connect")  # the worker died here
    with pytest.raises(SystemExit) as got:
        ui.fail(WorkerCrashed("worker w-1 on localhost stopped mid-generation"))
    assert got.value.code == 1
    # Was "...how they connecterror WORKER_CRASHED: ..." on the screen.
    assert capsys.readouterr().out == "and how they connect\n"
    assert err.getvalue().startswith("error WORKER_CRASHED: worker w-1")
