"""`rbee workers ...`: the workers (loaded models) of the nodes."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from rbee_fabric.cli.options import G, NodeOpt
from rbee_fabric.cli.run import run_flow

app = typer.Typer(help="Workers (loaded models).", no_args_is_help=True, rich_markup_mode=None)


@app.command("list", short_help="List the workers of the nodes (state, memory, queue).")
def workers_list(
    node: Annotated[str | None, typer.Option("--node", "-n", help="only this node (default: localhost and every node with a known worker)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="every field, as JSON")] = False,
) -> None:
    """List workers, as the nodes' hives report them (the registry is synced).

    Per worker: model, state, memory in use (resident; ~ an estimate), where it
    runs, context size, requests queued, idle time and when the hive unloads
    it if it stays idle. --json gives every field.
    """
    from rbee_fabric.cli.ui import err
    from rbee_fabric.errors import HiveNotRunning, RbeeError
    from rbee_fabric.keeper import hivectl
    from rbee_fabric.keeper.session import node_transport, open_registry

    registry = open_registry()
    nodes = [node] if node else sorted({r.node for r in registry.list()} | {"localhost"})

    async def main() -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for name in nodes:
            async with node_transport(name, G.inventory) as t:
                try:
                    hive = await hivectl.running_hive(t)
                except HiveNotRunning:
                    # Workers end with their hive: none runs there.
                    err.print(f"[dim]rbee-hive is not running on {name}, so no workers there "
                              f"(rbee infer starts it, or: rbee hive start {name})[/dim]")  # fmt: skip
                    registry.sync(name, set())
                    continue
                except RbeeError as exc:
                    rows += _unknown(registry.list(name), name, exc)
                    continue
                try:
                    live = (await hive.workers()).workers
                except RbeeError as exc:
                    rows += _unknown(registry.list(name), name, exc)
                    continue
                registry.sync(name, {w.id for w in live})
                for w in live:
                    rows.append({"node": name, "model": w.model_reference,
                                 **w.model_dump(exclude={"spawned"})})  # fmt: skip
        return rows

    try:
        rows = run_flow(main())
    finally:
        registry.close()
    if as_json:
        import json  # only for --json: `rbee --help` skips it
        print(json.dumps(rows))
        return
    if not rows:
        print("no workers")
        return
    from rich.console import Console

    from rbee_fabric.cli.workertable import workers_table

    console = Console()
    console.print(workers_table(rows, console.width))


def _unknown(records: list[Any], node: str, exc: Exception) -> list[dict[str, Any]]:
    """Rows for the workers the registry knows on a node whose hive cannot be asked."""
    code = getattr(exc, "code", type(exc).__name__)
    return [{"node": node, "id": r.id, "model": r.model_ref, "state": f"unknown ({code})",
             "url": r.url, "pid": r.pid} for r in records]  # fmt: skip


@app.command("health")
def workers_health(node: NodeOpt = "localhost") -> None:
    """Probe every worker of NODE."""
    from rbee_fabric.errors import RbeeError
    from rbee_fabric.keeper import hivectl
    from rbee_fabric.keeper.session import node_hive

    async def main() -> int:
        bad = 0
        async with node_hive(node, G.inventory, running=True) as (t, hive):
            workers = (await hive.workers()).workers
            for w in workers:
                client = await hivectl.connect_worker(t, w.url)
                started = time.monotonic()
                try:
                    r = await client.ready()
                    ms = (time.monotonic() - started) * 1000
                    print(f"{w.id}  {r.state:8}  {ms:.0f} ms  {w.model_reference}")
                except RbeeError as exc:
                    bad += 1
                    print(f"{w.id}  UNHEALTHY  {exc}")
                finally:
                    await client.aclose()
            if not workers:
                print("no workers")
        return bad

    raise typer.Exit(1 if run_flow(main()) else 0)


@app.command("shutdown")
def workers_shutdown(
    worker_id: Annotated[str, typer.Option("--id", help="worker id (see `rbee workers list`)")],
    node: Annotated[str | None, typer.Option("--node", "-n", help="the worker's node (default: the one the registry knows)")] = None,
) -> None:
    """Stop one worker."""
    from rbee_fabric.cli.ui import err, sanitize
    from rbee_fabric.errors import WorkerNotFound
    from rbee_fabric.keeper.session import node_hive, open_registry

    registry = open_registry()
    try:
        rec = registry.get(worker_id)
        target = node or (rec.node if rec else None)
        if target is None:
            raise WorkerNotFound(
                f"worker {worker_id!r} is not in the registry",
                hint=f"rbee workers list shows the workers; if it runs elsewhere, name its node: "
                f"rbee workers shutdown --id {sanitize(worker_id)} --node NODE",
            )

        async def main() -> None:
            async with node_hive(target, G.inventory, running=True) as (_, hive):
                await hive.shutdown_worker(worker_id)

        try:
            run_flow(main())
        finally:
            registry.remove(worker_id)
    finally:
        registry.close()
    err.print(f"worker {worker_id} on {target} stopped")
