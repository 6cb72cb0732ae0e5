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
