"""`rbee models ...`: the models in a node's catalog (list, pull, push, rm)."""

from __future__ import annotations

import contextlib
from typing import Annotated, Any

import typer

from rbee_fabric.cli.options import G, NodeOpt
from rbee_fabric.cli.run import run_flow

app = typer.Typer(help="Models in a node's catalog.", no_args_is_help=True, rich_markup_mode=None)


@app.command("list", short_help="List the models in NODE's catalog (starts its hive).")
def models_list(
    node: NodeOpt = "localhost",
    as_json: Annotated[bool, typer.Option("--json", help="every field, as JSON")] = False,
) -> None:
    """List the models in NODE's catalog (starting its hive, as infer does)."""
    from rbee_fabric.cli.ui import TerminalReporter
    from rbee_fabric.keeper.session import node_hive

    async def main() -> Any:
        async with node_hive(node, G.inventory, TerminalReporter()) as (_, hive):
            return (await hive.models()).models

    models = run_flow(main())
    if as_json:
        import json  # only for --json: `rbee --help` skips it
        print(json.dumps([m.model_dump() for m in models]))
        return
    if not models:
        print("no models")
        return
    from rich.console import Console

    from rbee_fabric.cli.modeltable import models_table

    console = Console()
    console.print(models_table(models, console.width))


@app.command("pull")
def models_pull(model: Annotated[str, typer.Argument(metavar="MODEL", help="model reference, as --model takes it")], node: NodeOpt = "localhost") -> None:
    """Fetch MODEL into NODE's catalog, with a progress bar."""
    from rbee_fabric.cli.modeltable import size_text
    from rbee_fabric.cli.ui import TerminalReporter, err
    from rbee_fabric.errors import DownloadFailed, from_envelope
    from rbee_fabric.keeper.session import node_hive

    reporter = TerminalReporter()

    async def main() -> Any:
        async with node_hive(node, G.inventory, reporter) as (_, hive):
            try:
                started = await hive.ensure_model(model)
                if started.model is not None:
                    return started.model, False
                assert started.download_id is not None
                async with contextlib.aclosing(hive.download_progress(started.download_id)) as events:
                    async for p in events:
                        reporter.download(p)
                        if p.stage == "failed" and p.error:
                            raise from_envelope({"error": p.error.model_dump()}, node=node)
                        if p.stage == "done" and p.model:
                            return p.model, True
            finally:
                reporter.close_bar()
        raise DownloadFailed(
            f"the download of {model} on {node} ended without a result",
            hint=f"see why in rbee hive logs {node}; pulling again resumes the download",
        )

    info, fetched = run_flow(main())

    verb = "added" if fetched else "already in the catalog:"
    err.print(f"{verb} {info.reference} -> {info.id} ({size_text(info.size_bytes)}, {info.path})")


@app.command("push", short_help="Copy a model to NODE over SFTP, verify and register it.")
def models_push(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="a local .gguf path, or a model in this machine's catalog")],
    node: NodeOpt,
) -> None:
    """Copy a model this machine has to NODE over SFTP, verify it and register it."""
    from rbee_fabric.cli.ui import TerminalReporter, err
    from rbee_fabric.errors import UsageError
    from rbee_fabric.keeper.push import push
    from rbee_fabric.keeper.session import node_transport

    reporter = TerminalReporter()

    async def main() -> Any:
        async with node_transport(node, G.inventory) as t:
            if t.node.local:
                raise UsageError(f"{node} is this machine: nothing to push", hint="use rbee models pull")
            try:
                return await push(t, model, reporter)
            finally:
                reporter.close_bar()

    info = run_flow(main())
    err.print(f"pushed and verified: {info.reference} -> {info.id} on {node}; use it with --model {info.reference}")


@app.command("rm", short_help="Remove a model from NODE's catalog (and the file rbee put).")
def models_rm(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="model id, or reference as --model takes it (see `rbee models list`)")],
    node: NodeOpt = "localhost",
) -> None:
    """Remove a model from NODE's catalog (and its file, if rbee downloaded it)."""
    from urllib.parse import quote

    from rbee_fabric.cli.ui import err
    from rbee_fabric.keeper.session import node_hive

    async def main() -> Any:
        async with node_hive(node, G.inventory, running=True) as (_, hive):
            return await hive.delete_model(quote(model, safe=":/"))  # a reference may hold ? or #

    ack = run_flow(main())
    err.print(ack.message or f"removed {model}")
