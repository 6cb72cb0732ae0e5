"""The one error context of the CLI: every failure becomes a message and an exit code here."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar

from rbee_fabric.cli.options import G

T = TypeVar("T")


def run_flow(coro: Coroutine[Any, Any, T]) -> T:
    """Run a keeper flow under the CLI's error mapping (--debug shows tracebacks)."""
    from rbee_fabric.cli.ui import run

    return run(coro, debug=G.debug)
