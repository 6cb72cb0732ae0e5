"""The one error context of the CLI: every failure of every command becomes a message and an exit code here.

`RbeeGroup` is the root command's class: its `invoke` runs the root callback
and whichever command follows inside `error_context`, so nothing a command
does (opening the registry, reading the inventory, a flow) can print a raw
traceback. Click's own errors (a bad flag, --help, typer.Exit) pass through.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Coroutine, Iterator
from typing import Any, NoReturn, TypeVar

import typer
from typer.core import TyperGroup

from rbee_fabric.cli.options import G

T = TypeVar("T")

# Click's own exits (a bad flag, --help, typer.Exit): typer >= 0.22 vendors click,
# so its ClickException is found through typer rather than imported from click.
CLICK_EXCEPTION: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
_CLICK_OWN = (CLICK_EXCEPTION, typer.Exit, typer.Abort)


def run_flow(coro: Coroutine[Any, Any, T]) -> T:
    """Run a keeper flow (its errors reach the command's error context)."""
    import asyncio  # not at import: `rbee --help` never runs a flow

    from rbee_fabric.keeper import handover

    loop = handover.take_loop()  # the lean path's, with a node's connection open on it
    with asyncio.Runner(loop_factory=(lambda: loop) if loop is not None else None) as runner:
        return runner.run(coro)


@contextlib.contextmanager
def error_context() -> Iterator[None]:
    """Map every failure inside to one message and an exit code (--debug: tracebacks)."""
    try:
        yield
    except _CLICK_OWN:
        raise
    except (Exception, KeyboardInterrupt) as exc:
        from rbee_fabric.cli.ui import report

        report(exc, debug=G.debug)
    except BaseException as exc:
        import asyncio  # only once something was raised (asyncio costs `rbee --help` 40 ms)

        if not isinstance(exc, asyncio.CancelledError):
            raise
        from rbee_fabric.cli.ui import report

        report(exc, debug=G.debug)


class RbeeGroup(TyperGroup):
    """The root group: the root callback and every sub-command run in the error context,
    and click's own usage errors print as every other error (code, message, Suggestion)."""

    def invoke(self, ctx: Any) -> Any:  # click.Context (vendored by newer typer)
        with error_context():
            return super().invoke(ctx)

    def main(self, *args: Any, **kwargs: Any) -> Any:
        standalone = kwargs.pop("standalone_mode", True)
        kwargs["standalone_mode"] = False  # errors come back here to be printed our way
        if not standalone:
            return super().main(*args, **kwargs)
        try:
            rv = super().main(*args, **kwargs)
        except CLICK_EXCEPTION as exc:
            _usage_error(exc)
        except typer.Abort:
            print("Aborted!", file=sys.stderr)
            sys.exit(1)
        # Without standalone mode click returns an explicit exit's code, else the result.
        sys.exit(rv if isinstance(rv, int) else 0)


def _usage_error(exc: Exception) -> NoReturn:
    """A bad flag, value or argument: one line, a Suggestion, exit 2 (help for no arguments)."""
    from rbee_fabric.cli.ui import fail
    from rbee_fabric.errors import UsageError

    ctx = getattr(exc, "ctx", None)
    code = int(getattr(exc, "exit_code", 2))
    if type(exc).__name__ == "NoArgsIsHelpError" or code != 2 or ctx is None:
        exc.show()  # type: ignore[attr-defined]  # help for a bare group; click's other errors as click shows them
        sys.exit(code)
    message = exc.format_message()  # type: ignore[attr-defined]
    fail(UsageError(message, hint=f"{ctx.command_path} --help lists its options and arguments"))
