"""What every command group shares: the global flags and the Annotated options."""

from __future__ import annotations

from typing import Annotated

import typer


class _Globals:
    """The root callback's flags, read by the commands."""

    inventory: str | None = None
    debug: bool = False


G = _Globals()

NodeOpt = Annotated[str, typer.Option("--node", "-n", help="node name (see `rbee nodes list`)")]
NodeArg = Annotated[str, typer.Argument(metavar="NODE", help="node name (see `rbee nodes list`)", show_default=True)]
ModelOpt = Annotated[
    str,
    typer.Option(
        "--model", "-m", show_default=False,
        help="model reference: gemma3-270m, file:/abs/x.gguf, hf:ORG/REPO, hf:ORG/REPO:QUANT or hf:ORG/REPO:FILE.gguf",
    ),
]  # fmt: skip
TemperatureOpt = Annotated[float, typer.Option(min=0.0, max=10.0, help="sampling temperature (0: always the likeliest token)")]
TopPOpt = Annotated[float, typer.Option(min=0.0, max=1.0, help="nucleus sampling: keep the likeliest tokens up to this probability")]
SeedOpt = Annotated[int | None, typer.Option(min=0, help="sampling seed")]
BackendOpt = Annotated[str, typer.Option(help="auto, cpu, cuda or metal")]
DeviceOpt = Annotated[int, typer.Option(min=0, help="GPU index")]
LoadTimeoutOpt = Annotated[float, typer.Option(min=1.0, help="seconds to wait for the model to load")]
CtxSizeOpt = Annotated[int, typer.Option("--ctx-size", min=16, help="context length")]
StartHiveOpt = Annotated[bool, typer.Option(help="start the hive if it is not running")]
