"""`rbee`: the console entry point, light on purpose.

A warm `rbee infer` (a live worker for the model on this machine) is served
by the lean path (keeper/fastpath.py: sqlite3, minihttp.py, json) without
loading typer, httpx, pydantic, sqlite-utils or rich. Everything else, and
whatever the lean path declines before printing anything, goes to the typer
app (cli/app.py) exactly as before. RBEE_FAST_PATH=0 turns the lean path off
(the benchmark compares both).
"""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rbee_fabric.keeper.fastpath_args import LeanArgs
    from rbee_fabric.keeper.fastpath_hive import EarlyHive


def main(argv: list[str] | None = None) -> None:
    started = time.monotonic()
    args = list(sys.argv[1:] if argv is None else argv)
    if "infer" in args and os.environ.get("RBEE_FAST_PATH", "1") != "0":
        args = _lean_infer(args, started)
    from rbee_fabric.cli.app import app

    app(args=args, prog_name="rbee")


def _lean_infer(args: list[str], started: float) -> list[str]:
    """Serve `rbee infer` on the lean path and exit; else the args for the full path."""
    from rbee_fabric.keeper import fastpath, fastpath_args
    from rbee_fabric.keeper.fastpath_net import Fallback
    from rbee_fabric.keeper.fastpath_node import LocalNode

    lean = fastpath_args.parse(args)
    if lean is None:
        return args
    os.umask(0o077)  # as the root callback: what rbee writes is the user's alone
    try:
        given = lean.prompt is not None
        prompt = fastpath.prompt_of(lean)
        if not given and lean.prompt is not None:
            # stdin is read now: the full path gets the prompt as an option.
            args = [*args, f"--prompt={lean.prompt}"]
        if prompt is None:
            return args
        plan = fastpath.plan(lean)
    except Fallback as exc:
        node = exc.node
        if node is None and lean.start_hive:
            _start_remote_hive_early(lean)
        early = _start_hive_early(node, lean) if isinstance(node, LocalNode) and lean.start_hive else None
        if early is not None and isinstance(node, LocalNode):
            # This keeper started the hive: the cold start stays on the lean path.
            from rbee_fabric.keeper.fastpath_cold import plan_cold
            from rbee_fabric.keeper.fastpath_out import Output

            try:
                plan = plan_cold(lean, node, Output(quiet_tokens=lean.as_json), early)
            except Fallback:
                return args
            except KeyboardInterrupt:
                sys.stderr.write(("\n" if sys.stderr.isatty() else "") + "Canceled.\n")
                raise SystemExit(130) from None
            raise SystemExit(fastpath.run(plan, started)) from None
        return args
    except KeyboardInterrupt:
        sys.stderr.write(("\n" if sys.stderr.isatty() else "") + "Canceled.\n")  # after the ^C echo
        raise SystemExit(130) from None
    raise SystemExit(fastpath.run(plan, started))


def _start_remote_hive_early(lean: LeanArgs) -> None:
    """Not this machine (or not known yet): when the node is remote and its hive is not
    running, start it now, before the full path's imports (keeper/early_remote.py)."""
    import contextlib

    from rbee_fabric import modelref
    from rbee_fabric.errors import RbeeError

    with contextlib.suppress(RbeeError):
        ref = modelref.parse(lean.model).canonical
        from rbee_fabric.keeper.early_remote import start_early
        from rbee_fabric.keeper.fastpath_out import Output

        try:
            start_early(lean.node, lean.inventory or os.environ.get("RBEE_INVENTORY") or None, ref,
                        lean.ctx_size, lean.backend, lean.device, Output(quiet_tokens=True).dim)  # fmt: skip
        except KeyboardInterrupt:
            sys.stderr.write(("\n" if sys.stderr.isatty() else "") + "Canceled.\n")
            raise SystemExit(130) from None


def _start_hive_early(node: object, lean: object) -> EarlyHive | None:
    """No live worker here: start the hive now if none runs (keeper/fastpath_hive.py),
    with the request about to be made, so that its worker starts loading at once.
    The EarlyHive when this keeper started it, else None."""
    import contextlib

    from rbee_fabric import modelref
    from rbee_fabric.keeper.fastpath_args import LeanArgs
    from rbee_fabric.keeper.fastpath_hive import start_early
    from rbee_fabric.keeper.fastpath_node import LocalNode
    from rbee_fabric.keeper.fastpath_out import Output
    from rbee_fabric.keeper.preloadhint import preload_hint

    assert isinstance(node, LocalNode) and isinstance(lean, LeanArgs)
    with contextlib.suppress(Exception):  # the full path tries again and says what fails
        ref = modelref.parse(lean.model).canonical
        preload = preload_hint(ref, lean.ctx_size, lean.backend, lean.device, node.safe_mode,
                               node.max_queue)  # fmt: skip
        early = start_early(node.name, node.hive_port, Output(quiet_tokens=True).dim, preload)
        if early is not None:
            # The hive and the model's load need both cores now: this keeper takes
            # what they leave (it only waits, or imports the full path's libraries).
            os.nice(10)
            return early
    return None
