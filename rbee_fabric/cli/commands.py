"""`rbee nodes|hive|workers|models ...`: thin commands over the keeper flows."""

from __future__ import annotations

import contextlib
import json
import time
from typing import Annotated, Any

import typer

from rbee_fabric.cli.app import (
    G,
    NodeArg,
    NodeOpt,
    _run,
    app,
    hive_app,
    models_app,
    nodes_app,
    workers_app,
)

# ------------------------------------------------------------------- nodes


@nodes_app.command("list")
def nodes_list(
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """List the inventory's nodes and how each is reached."""
    from rbee_fabric.cli.ui import fail
    from rbee_fabric.errors import RbeeError
    from rbee_fabric.keeper import inventory

    try:
        inv = inventory.load(G.inventory)
    except RbeeError as exc:
        fail(exc)
    if as_json:
        print(json.dumps([
            {"name": n.name, "hostname": n.hostname, "local": n.local, "user": n.user,
             "ssh_port": n.ssh_port, "hive_port": n.hive_port, "backend": n.backend,
             "network": n.network, "reach": n.reach}
            for n in inv.nodes.values()
        ]))  # fmt: skip
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"inventory: {inv.path or 'built-in'}")
    for col in ("node", "hostname", "reached by", "hive port", "backend"):
        table.add_column(col)
    for n in inv.nodes.values():
        table.add_row(n.name, n.hostname, n.reach, str(n.hive_port), n.backend)
    Console().print(table)


@nodes_app.command("check")
def nodes_check(
    nodes: Annotated[list[str] | None, typer.Argument(help="nodes to check (default: all)")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="also check that MODEL fits")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    timeout: Annotated[float, typer.Option(min=1.0, help="seconds per node")] = 20.0,
) -> None:
    """Check every node for what the other commands need, with a fix for each problem."""
    from rbee_fabric.keeper import inventory
    from rbee_fabric.keeper.preflight import check_nodes

    async def main() -> Any:
        inv = inventory.load(G.inventory)
        targets = [inv.resolve(n) for n in nodes] if nodes else list(inv.nodes.values())
        return await check_nodes(targets, model, timeout)

    reports = _run(main())
    ok = all(r.ok for r in reports)
    if as_json:
        print(json.dumps({"ok": ok, "nodes": [r.to_dict() for r in reports]}, indent=2))
        raise typer.Exit(0 if ok else 1)
    from rich.console import Console
    from rich.table import Table

    console = Console()
    style = {"pass": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}
    for r in reports:
        table = Table(title=f"{r.node} ({r.reached_by})", title_justify="left", expand=False)
        for col in ("check", "result", "detail", "fix"):
            table.add_column(col, overflow="fold")
        for c in r.checks:
            table.add_row(c.name, f"[{style[c.status]}]{c.status}[/]", c.detail, c.fix or "")
        console.print(table)
        fails = [c for c in r.checks if c.status == "fail"]
        warns = [c for c in r.checks if c.status == "warn"]
        verdict = "[green]ready[/green]" if not fails else f"[bold red]{len(fails)} problem(s)[/bold red]"
        console.print(f"{r.node}: {verdict}" + (f", {len(warns)} warning(s)" if warns else "") + "\n")
    raise typer.Exit(0 if ok else 1)


@nodes_app.command("install")
def nodes_install(
    node: NodeArg,
    upgrade: Annotated[bool, typer.Option("--upgrade", help="replace another installed version")] = False,
    force: Annotated[bool, typer.Option("--force", help="rebuild and reinstall even the same version (development)")] = False,
) -> None:
    """Install the keeper's version of rbee-fabric on NODE (no internet needed there)."""
    from rbee_fabric.cli.ui import TerminalReporter, err
    from rbee_fabric.keeper.bootstrap import install
    from rbee_fabric.keeper.session import node_transport
    from rbee_fabric.keeper.ssh import SshTransport

    reporter = TerminalReporter()

    async def main() -> Any:
        async with node_transport(node, G.inventory) as t:
            if not isinstance(t, SshTransport):
                return None
            try:
                return await install(t, reporter, upgrade=upgrade, force=force)
            finally:
                reporter.close_bar()

    report = _run(main())
    if report is None:
        err.print(f"{node} is this machine: it uses the keeper's own installation; nothing to do")
        return
    suffix = f" in {report.seconds:.1f} s" if report.changed else ""
    err.print(report.message + suffix)


@nodes_app.command("trust")
def nodes_trust(
    node: NodeArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
) -> None:
    """Fetch NODE's SSH host key, show its fingerprint, and add it to known_hosts."""
    from rbee_fabric.cli.ui import err
    from rbee_fabric.keeper import inventory
    from rbee_fabric.keeper.ssh import fetch_host_key, trust

    target = _run(_resolve(node))
    if target.local:
        err.print(f"{node} is this machine: no SSH, nothing to trust")
        return
    key = _run(fetch_host_key(target))
    fingerprint = key.get_fingerprint()
    err.print(f"{node} ({target.hostname}) presents {key.get_algorithm()} key {fingerprint}")
    if not yes and not typer.confirm("Trust this key?", err=True):
        raise typer.Exit(1)

    async def add() -> Any:
        return trust(target, key)

    path, added = _run(add())
    err.print(f"added to {path}" if added else f"already trusted in {path}")
    del inventory


async def _resolve(node: str) -> Any:
    from rbee_fabric.keeper import inventory

    return inventory.load(G.inventory).resolve(node)


# -------------------------------------------------------------------- hive


@hive_app.command("start")
def hive_start(
    node: NodeArg,
    idle_timeout: Annotated[float | None, typer.Option(help="worker idle timeout, seconds")] = None,
) -> None:
    """Start the hive on NODE (no-op when it already runs) and wait until healthy."""
    from rbee_fabric.cli.ui import TerminalReporter, err
    from rbee_fabric.keeper import hivectl
    from rbee_fabric.keeper.session import node_transport

    async def main() -> Any:
        async with node_transport(node, G.inventory) as t:
            hive = await hivectl.connect_hive(t)
            try:
                await hivectl.ensure_hive(t, hive, TerminalReporter(), idle_timeout=idle_timeout)
            finally:
                await hive.aclose()
            return await hivectl.status(t)

    st = _run(main())
    err.print(f"rbee-hive {st.version} running on {node} at {st.address} (pid {st.pid})")


@hive_app.command("stop")
def hive_stop(node: NodeArg) -> None:
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

    was_running, n_workers = _run(main())
    registry = open_registry()
    try:
        registry.sync(node, set())
    finally:
        registry.close()
    if was_running:
        err.print(f"rbee-hive on {node} stopped ({n_workers} worker(s) stopped)")
    elif n_workers:
        err.print(f"rbee-hive was not running on {node}; stopped {n_workers} orphaned worker(s)")
    else:
        err.print(f"rbee-hive was not running on {node}")


@hive_app.command("status")
def hive_status(
    node: NodeArg,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Say whether the hive on NODE runs, its version and its workers."""
    from rbee_fabric.keeper import hivectl
    from rbee_fabric.keeper.session import node_transport

    async def main() -> Any:
        async with node_transport(node, G.inventory) as t:
            return await hivectl.status(t)

    st = _run(main())
    if as_json:
        print(json.dumps(st.__dict__))
    elif st.running:
        print(f"running  {st.address}  version {st.version}  pid {st.pid}  workers {st.workers}")
    else:
        print(f"stopped  {st.address}  ({st.error})")
    raise typer.Exit(0 if st.running else 1)


@hive_app.command("logs")
def hive_logs(
    node: NodeArg,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new lines")] = False,
    lines: Annotated[int, typer.Option("--lines", "-l", min=1)] = 50,
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

    _run(main())


# ----------------------------------------------------------------- workers


@workers_app.command("list")
def workers_list(
    node: Annotated[str | None, typer.Option("--node", "-n")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List workers, as the nodes' hives report them (the registry is synced)."""
    from rbee_fabric.errors import RbeeError
    from rbee_fabric.keeper import hivectl
    from rbee_fabric.keeper.session import node_transport, open_registry

    registry = open_registry()
    nodes = [node] if node else sorted({r.node for r in registry.list()} | {"localhost"})

    async def main() -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for name in nodes:
            async with node_transport(name, G.inventory) as t:
                hive = await hivectl.connect_hive(t)
                try:
                    live = (await hive.workers()).workers
                except RbeeError as exc:
                    for r in registry.list(name):
                        rows.append({"node": name, "id": r.id, "model": r.model_ref,
                                     "state": f"unknown ({exc.code})", "url": r.url, "pid": r.pid})  # fmt: skip
                    continue
                finally:
                    await hive.aclose()
                registry.sync(name, {w.id for w in live})
                for w in live:
                    rows.append({"node": name, "id": w.id, "model": w.model_reference,
                                 "state": w.state, "url": w.url, "pid": w.pid})  # fmt: skip
        return rows

    try:
        rows = _run(main())
    finally:
        registry.close()
    if as_json:
        print(json.dumps(rows))
        return
    if not rows:
        print("no workers")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table()
    for col in ("node", "id", "model", "state", "url", "pid"):
        table.add_column(col)
    from rbee_fabric.cli.ui import safe

    for r in rows:
        table.add_row(*(safe(r[c]) for c in ("node", "id", "model", "state", "url", "pid")))
    Console().print(table)


@workers_app.command("health")
def workers_health(node: NodeOpt) -> None:
    """Probe every worker of NODE."""
    from rbee_fabric.errors import RbeeError
    from rbee_fabric.keeper import hivectl
    from rbee_fabric.keeper.session import node_transport

    async def main() -> int:
        bad = 0
        async with node_transport(node, G.inventory) as t:
            hive = await hivectl.connect_hive(t)
            try:
                workers = (await hive.workers()).workers
            finally:
                await hive.aclose()
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

    raise typer.Exit(1 if _run(main()) else 0)


@workers_app.command("shutdown")
def workers_shutdown(
    worker_id: Annotated[str, typer.Option("--id", help="worker id (see `rbee workers list`)")],
    node: Annotated[str | None, typer.Option("--node", "-n")] = None,
) -> None:
    """Stop one worker."""
    from rbee_fabric.cli.ui import err, fail
    from rbee_fabric.errors import WorkerNotFound
    from rbee_fabric.keeper import hivectl
    from rbee_fabric.keeper.session import node_transport, open_registry

    registry = open_registry()
    try:
        rec = registry.get(worker_id)
        target = node or (rec.node if rec else None)
        if target is None:
            fail(WorkerNotFound(
                f"worker {worker_id!r} is not in the registry",
                hint="name its node: rbee workers shutdown --id ID --node NODE",
            ))  # fmt: skip

        async def main() -> None:
            async with node_transport(target, G.inventory) as t:
                hive = await hivectl.connect_hive(t)
                try:
                    await hive.shutdown_worker(worker_id)
                finally:
                    await hive.aclose()

        try:
            _run(main())
        finally:
            registry.remove(worker_id)
    finally:
        registry.close()
    err.print(f"worker {worker_id} on {target} stopped")


# ------------------------------------------------------------------ models


@models_app.command("list")
def models_list(node: NodeOpt = "localhost", as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List the models in NODE's catalog."""
    from rbee_fabric.keeper import hivectl
    from rbee_fabric.keeper.session import node_transport

    async def main() -> Any:
        async with node_transport(node, G.inventory) as t:
            hive = await hivectl.connect_hive(t)
            try:
                return (await hive.models()).models
            finally:
                await hive.aclose()

    models = _run(main())
    if as_json:
        print(json.dumps([m.model_dump() for m in models]))
        return
    if not models:
        print("no models")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table()
    for col in ("id", "reference", "file", "size", "quant", "added"):
        table.add_column(col)
    from rbee_fabric.cli.ui import safe

    for m in models:
        table.add_row(safe(m.id), safe(m.reference), safe(m.path), f"{m.size_bytes / 2**20:.1f} MB",
                      safe(m.quantization or "?"), safe(m.added_at))  # fmt: skip
    Console().print(table)


@models_app.command("pull")
def models_pull(model: Annotated[str, typer.Argument(help="model reference")], node: NodeOpt = "localhost") -> None:
    """Fetch MODEL into NODE's catalog, with a progress bar."""
    from rbee_fabric.cli.ui import TerminalReporter, err
    from rbee_fabric.errors import from_envelope
    from rbee_fabric.keeper import hivectl
    from rbee_fabric.keeper.session import node_transport

    reporter = TerminalReporter()

    async def main() -> Any:
        async with node_transport(node, G.inventory) as t:
            hive = await hivectl.connect_hive(t)
            try:
                await hivectl.ensure_hive(t, hive, reporter)
                started = await hive.ensure_model(model)
                if started.model is not None:
                    return started.model, False
                assert started.download_id is not None
                async with contextlib.aclosing(hive.download_progress(started.download_id)) as events:
                    async for p in events:
                        reporter.download(p)
                        if p.stage == "failed" and p.error:
                            raise from_envelope({"error": p.error.model_dump()})
                        if p.stage == "done" and p.model:
                            return p.model, True
            finally:
                reporter.close_bar()
                await hive.aclose()
        raise RuntimeError("download ended without a result")

    info, fetched = _run(main())
    verb = "fetched" if fetched else "already in the catalog:"
    err.print(f"{verb} {info.reference} -> {info.id} ({info.size_bytes / 2**20:.1f} MB, {info.path})")


@models_app.command("push")
def models_push(
    model: Annotated[str, typer.Argument(help="a local .gguf path, or a model in this machine's catalog")],
    node: NodeOpt,
) -> None:
    """Copy a model this machine has to NODE over SFTP, verify it and register it."""
    from rbee_fabric.cli.ui import TerminalReporter, err
    from rbee_fabric.errors import UsageError
    from rbee_fabric.keeper.push import push
    from rbee_fabric.keeper.session import node_transport
    from rbee_fabric.keeper.ssh import SshTransport

    reporter = TerminalReporter()

    async def main() -> Any:
        async with node_transport(node, G.inventory) as t:
            if not isinstance(t, SshTransport):
                raise UsageError(f"{node} is this machine: nothing to push", hint="use rbee models pull")
            try:
                return await push(t, model, reporter)
            finally:
                reporter.close_bar()

    info = _run(main())
    err.print(f"pushed and verified: {info.reference} -> {info.id} on {node}; use it with --model {info.reference}")


@models_app.command("rm")
def models_rm(model_id: Annotated[str, typer.Argument(help="model id (see `rbee models list`)")], node: NodeOpt = "localhost") -> None:
    """Remove a model from NODE's catalog (and its file, if rbee downloaded it)."""
    from rbee_fabric.cli.ui import err
    from rbee_fabric.keeper import hivectl
    from rbee_fabric.keeper.session import node_transport

    async def main() -> Any:
        async with node_transport(node, G.inventory) as t:
            hive = await hivectl.connect_hive(t)
            try:
                return await hive.delete_model(model_id)
            finally:
                await hive.aclose()

    ack = _run(main())
    err.print(ack.message or f"removed {model_id}")


# ------------------------------------------------------------------- serve


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="address to listen on (loopback by default)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="port to listen on (0: any free port)")] = 9000,
    json_logs: Annotated[bool, typer.Option("--json-logs", help="one JSON object per log line")] = False,
    ctx_size: Annotated[int, typer.Option("--ctx-size", min=16, help="context length of the workers it starts")] = 2048,
    grace: Annotated[float, typer.Option(min=0.0, help="seconds a stop waits for running generations before cancelling them")] = 10.0,
) -> None:
    """One OpenAI-compatible endpoint (/v1) for every node of the inventory."""
    from rbee_fabric.cli.ui import fail
    from rbee_fabric.errors import RbeeError
    from rbee_fabric.gateway.server import run

    try:
        run(host, port, json_logs=json_logs, inventory_file=G.inventory, n_ctx=ctx_size, grace_s=grace)
    except RbeeError as exc:
        fail(exc)
