"""`rbee nodes ...`: the inventory's nodes (list, check, install, trust)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from rbee_fabric.cli.options import G, NodeArg
from rbee_fabric.cli.run import run_flow

app = typer.Typer(help="Nodes of the inventory.", no_args_is_help=True, rich_markup_mode=None)


@app.command("list")
def nodes_list(
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """List the inventory's nodes and how each is reached."""
    from rbee_fabric.keeper import inventory

    inv = inventory.load(G.inventory)
    if as_json:
        import json  # only for --json: `rbee --help` skips it
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


@app.command("init", short_help="Write a commented starter inventory and print its path.")
def nodes_init(
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing file")] = False,
) -> None:
    """Write a commented starter inventory (--inventory, $RBEE_INVENTORY or ~/.config/rbee/hosts.toml)."""
    from importlib.resources import files

    from rbee_fabric.cli.ui import err
    from rbee_fabric.errors import UsageError
    from rbee_fabric.keeper import inventory

    path = inventory.inventory_path(G.inventory) or inventory.default_inventory_path()
    if path.exists() and not force:
        raise UsageError(
            f"{path} already exists; it was left as it is",
            hint="edit it, or overwrite it with the starter: rbee "
            f"{'--inventory ' + str(path) + ' ' if G.inventory else ''}nodes init --force",
            details={"file": str(path)},
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    text = files("rbee_fabric.keeper").joinpath("hosts.starter.toml").read_text(encoding="utf-8")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    err.print(f"wrote a starter inventory to {path}", markup=False)
    print(path)
    err.print("edit its example node, then: rbee nodes list", markup=False)


@app.command("check", short_help="Check nodes for what rbee needs, with a fix per problem.")
def nodes_check(
    nodes: Annotated[list[str] | None, typer.Argument(metavar="NODE", help="nodes to check (default: all)")] = None,
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

    reports = run_flow(main())
    ok = all(r.ok for r in reports)
    if as_json:
        import json  # only for --json: `rbee --help` skips it
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


@app.command("install", short_help="Install the keeper's rbee-fabric on NODE (no internet there).")
def nodes_install(
    node: NodeArg,
    upgrade: Annotated[bool, typer.Option("--upgrade", help="replace another installed version")] = False,
    force: Annotated[bool, typer.Option("--force", help="rebuild and reinstall even the same version (development)")] = False,
) -> None:
    """Install the keeper's version of rbee-fabric on NODE (no internet needed there)."""
    from rbee_fabric.cli.ui import TerminalReporter, err
    from rbee_fabric.keeper.bootstrap import install
    from rbee_fabric.keeper.session import node_transport

    reporter = TerminalReporter()

    async def main() -> Any:
        async with node_transport(node, G.inventory) as t:
            if t.node.local:
                return None
            try:
                return await install(t, reporter, upgrade=upgrade, force=force)
            finally:
                reporter.close_bar()

    report = run_flow(main())
    if report is None:
        err.print(f"{node} is this machine: it uses the keeper's own installation; nothing to do")
        return
    suffix = f" in {report.seconds:.1f} s" if report.changed else ""
    err.print(report.message + suffix)


@app.command("trust", short_help="Show NODE's SSH host key and add it to known_hosts.")
def nodes_trust(
    node: NodeArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
) -> None:
    """Fetch NODE's SSH host key, show its fingerprint, and add it to known_hosts."""
    from rbee_fabric.cli.ui import err
    from rbee_fabric.keeper import inventory
    from rbee_fabric.keeper.transport.hostkeys import fetch, trust

    target = run_flow(_resolve(node))
    if target.local:
        err.print(f"{node} is this machine: no SSH, nothing to trust")
        return
    key = run_flow(fetch(target))
    err.print(f"{node} ({target.hostname}) presents {key.algorithm} key {key.fingerprint}")
    if not yes and not typer.confirm("Trust this key?", err=True):
        raise typer.Exit(1)

    async def add() -> Any:
        return trust(target, key)

    path, added = run_flow(add())
    err.print(f"added to {path}" if added else f"already trusted in {path}")
    del inventory


async def _resolve(node: str) -> Any:
    from rbee_fabric.keeper import inventory

    return inventory.load(G.inventory).resolve(node)
