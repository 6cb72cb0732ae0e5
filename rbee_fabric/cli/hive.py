"""`rbee hive ...`: the rbee-hive daemon of a node (start, stop, status, logs)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from rbee_fabric.cli.options import G, NodeArg
from rbee_fabric.cli.run import run_flow

app = typer.Typer(help="The rbee-hive daemon of a node.", no_args_is_help=True, rich_markup_mode=None)


@app.command("start", short_help="Start the hive on NODE and wait until it is healthy.")
def hive_start(
    node: NodeArg = "localhost",
    idle_timeout: Annotated[float | None, typer.Option(help="worker idle timeout, seconds")] = None,
) -> None:
    """Start the hive on NODE (no-op when it already runs) and wait until healthy."""
    from rbee_fabric.cli.ui import TerminalReporter, err
    from rbee_fabric.keeper import hivectl
    from rbee_fabric.keeper.session import node_hive

    async def main() -> Any:
        async with node_hive(node, G.inventory, TerminalReporter(), idle_timeout=idle_timeout) as (t, _):
            return await hivectl.status(t)

    st = run_flow(main())
    err.print(f"rbee-hive {st.version} running on {st.address} (pid {st.pid})")


@app.command("stop")
def hive_stop(node: NodeArg = "localhost") -> None:
    """Stop the hive on NODE and every worker it started."""
    from rbee_fabric.cli.ui import err
    from rbee_fabric.keeper import hivectl
    from rbee_fabric.keeper.session import node_transport, open_registry

    registry = open_registry()
    try:
        known = [(r.pid, r.id) for r in registry.list(node)]
    finally:
        registry.close()

    async def main() -> Any:
        async with node_transport(node, G.inventory) as t:
            return await hivectl.stop(t, known)

    was_running, n_workers = run_flow(main())
    registry = open_registry()
    try:
        registry.sync(node, set())
    finally:
        registry.close()
    from rbee_fabric.keeper import link

    if link.stop(node, G.inventory):
        err.print(f"closed the kept SSH connection to {node}")
    if was_running:
        err.print(f"rbee-hive on {node} stopped ({n_workers} worker(s) stopped)")
    elif n_workers:
        err.print(f"rbee-hive was not running on {node}; stopped {n_workers} orphaned worker(s)")
    else:
        err.print(f"rbee-hive was not running on {node}")


@app.command("status")
def hive_status(
    node: NodeArg = "localhost",
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Say whether the hive on NODE runs, its version and its workers."""
    from rbee_fabric.keeper import hivectl
    from rbee_fabric.keeper.session import node_transport

    async def main() -> Any:
        async with node_transport(node, G.inventory) as t:
            return await hivectl.status(t)

    st = run_flow(main())
    if as_json:
        import json  # only for --json: `rbee --help` skips it
        print(json.dumps(st.__dict__))
    elif st.running:
        print(f"running  {st.address}  version {st.version}  pid {st.pid}  workers {st.workers}")
    else:
        from rbee_fabric.cli.ui import err, sanitize

        print(f"stopped  {st.address}  ({st.error})")
        err.print(f"Suggestion: start it: rbee hive start {sanitize(node)} (rbee infer starts it "
                  f"on its own); its log: rbee hive logs {sanitize(node)}", markup=False)  # fmt: skip
    raise typer.Exit(0 if st.running else 1)


@app.command("logs")
def hive_logs(
    node: NodeArg = "localhost",
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new lines")] = False,
    lines: Annotated[int, typer.Option("--lines", "-l", min=1, help="how many of the last lines to print")] = 50,
) -> None:
    """Print the hive log of NODE."""
    from rbee_fabric.cli.ui import sanitize
    from rbee_fabric.keeper.session import node_transport

    async def main() -> None:
        async with node_transport(node, G.inventory) as t:
            for line in await t.log_tail(lines):
                print(sanitize(line), flush=True)
            if follow:
                async for line in t.log_follow():
                    print(sanitize(line), flush=True)

    run_flow(main())
