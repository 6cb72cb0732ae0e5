"""`rbee serve`: one OpenAI-compatible endpoint for every node of the inventory."""

from __future__ import annotations

from typing import Annotated

import typer

from rbee_fabric.cli.options import G


def serve(
    host: Annotated[str, typer.Option(help="address to listen on (loopback by default)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="port to listen on (0: any free port)")] = 9000,
    json_logs: Annotated[bool, typer.Option("--json-logs", help="one JSON object per log line")] = False,
    ctx_size: Annotated[int, typer.Option("--ctx-size", min=16, help="context length of the workers it starts")] = 2048,
    grace: Annotated[float, typer.Option(min=0.0, help="seconds a stop waits for running generations before cancelling them")] = 10.0,
) -> None:
    """One OpenAI-compatible endpoint (/v1) for every node of the inventory."""
    from rbee_fabric.gateway.server import run

    run(host, port, json_logs=json_logs, inventory_file=G.inventory, n_ctx=ctx_size, grace_s=grace)
