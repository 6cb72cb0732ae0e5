"""`rbee`, the keeper CLI (SPEC section 8): the root app, its flags, the command groups.

Each group lives in its own module; heavy imports happen inside the commands.
"""

from __future__ import annotations

import os
from typing import Annotated

import typer

from rbee_fabric import __version__
from rbee_fabric.cli import chat, hive, infer, models, nodes, serve, workers
from rbee_fabric.cli.options import G
from rbee_fabric.cli.run import RbeeGroup

app = typer.Typer(
    name="rbee",
    help="Run local LLMs across the machines of your home network.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: no <bool> after flags, wrapped to the terminal
    cls=RbeeGroup,
)


@app.callback()
def _root(
    inventory: Annotated[
        str | None,
        typer.Option("--inventory", help="inventory TOML file", envvar="RBEE_INVENTORY"),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks")] = False,
) -> None:
    G.inventory = inventory
    G.debug = debug or os.environ.get("RBEE_DEBUG", "") not in ("", "0")
    os.umask(0o077)  # the registry, logs and keys rbee writes are the user's alone


def version() -> None:
    """Print the version of rbee-fabric."""
    print(f"rbee-fabric {__version__}")


app.command()(infer.infer)
app.command()(version)
app.command(short_help="Talk with MODEL on NODE; the conversation is kept.")(chat.chat)
app.add_typer(nodes.app, name="nodes")
app.add_typer(hive.app, name="hive")
app.add_typer(workers.app, name="workers")
app.add_typer(models.app, name="models")
app.command(short_help="One OpenAI-compatible endpoint for every node.")(serve.serve)
