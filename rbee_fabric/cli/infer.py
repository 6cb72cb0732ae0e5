"""`rbee infer`: one generation on a node, streamed to stdout."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from rbee_fabric.cli.options import (
    BackendOpt,
    CtxSizeOpt,
    DeviceOpt,
    G,
    LoadTimeoutOpt,
    ModelOpt,
    NodeOpt,
    SeedOpt,
    StartHiveOpt,
    TemperatureOpt,
    TopPOpt,
)
from rbee_fabric.cli.run import run_flow
from rbee_fabric.keeper import defaults

if TYPE_CHECKING:
    from rbee_fabric.keeper.inventory import Node
    from rbee_fabric.keeper.request import Reporter


def infer(
    model: ModelOpt,
    node: NodeOpt = "localhost",
    prompt: Annotated[str | None, typer.Option("--prompt", "-p", help="prompt (read from stdin if omitted)")] = None,
    max_tokens: Annotated[int | None, typer.Option(min=1, help="cap on generated tokens (default: a chat answer runs to the end of its turn; raw completion stops at 256)")] = None,
    system: Annotated[str | None, typer.Option("--system", help="system prompt (chat)")] = None,
    raw: Annotated[bool, typer.Option("--raw", help="plain completion even if the model has a chat template")] = False,
    chat_format: Annotated[str | None, typer.Option("--chat-format", help="chat format to render with (gemma, llama-3, chatml, ...)")] = None,
    temperature: TemperatureOpt = defaults.TEMPERATURE,
    top_p: TopPOpt = defaults.TOP_P,
    seed: SeedOpt = None,
    backend: BackendOpt = "auto",
    device: DeviceOpt = 0,
    timeout: LoadTimeoutOpt = defaults.LOAD_TIMEOUT_S,
    queue_timeout: Annotated[float, typer.Option(min=0.1, help="seconds to wait for a turn on a busy worker")] = defaults.QUEUE_TIMEOUT_S,
    retry: Annotated[int, typer.Option(min=1, help="attempts to reach the hive")] = defaults.RETRY,
    ctx_size: CtxSizeOpt = defaults.N_CTX,
    start_hive: StartHiveOpt = True,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object at the end")] = False,
) -> None:
    """Generate text with MODEL on NODE, streaming tokens to stdout."""
    from rbee_fabric.cli.ui import TerminalReporter, err
    from rbee_fabric.errors import UsageError
    from rbee_fabric.keeper.infer import InferOptions
    from rbee_fabric.keeper.infer import infer as run_infer
    from rbee_fabric.keeper.session import node_transport, open_registry

    if backend not in ("auto", "cpu", "cuda", "metal"):
        raise UsageError(f"invalid --backend {backend!r}", hint="use auto, cpu, cuda or metal")
    if prompt is None:
        if sys.stdin.isatty():
            raise UsageError("no prompt given", hint='pass --prompt "..." or pipe it on stdin')
        prompt = sys.stdin.read()
    if not prompt.strip():
        raise UsageError("the prompt is empty", hint='pass --prompt "..."')
    opts = InferOptions(
        model=model, prompt=prompt, max_tokens=max_tokens, temperature=temperature,
        top_p=top_p, seed=seed, backend=backend, device=device, timeout=timeout,
        retry=retry, n_ctx=ctx_size, start_hive=start_hive, queue_timeout=queue_timeout,
        system=system, raw=raw, chat_format=chat_format,
    )  # fmt: skip
    if raw and chat_format:
        raise UsageError("--raw and --chat-format contradict each other", hint="choose one")
    reporter = TerminalReporter(quiet_tokens=as_json)
    served: list[Node] = []

    async def main() -> Any:
        registry = open_registry()
        try:
            async with node_transport(node, G.inventory) as t:
                served.append(t.node)
                return await run_infer(t, opts, reporter, registry)
        finally:
            reporter.close_bar()
            registry.close()

    summary = run_flow(main())
    from rbee_fabric.summary import summary_json, summary_line

    if as_json:
        import json  # only for --json: `rbee --help` skips it
        print(json.dumps(summary_json(summary, "".join(reporter.tokens))))
    else:
        sys.stdout.write("\n")
        sys.stdout.flush()
        err.print(f"[dim]{summary_line(summary)}[/dim]")
    _keep_link(served[0], reporter)


def _keep_link(n: Node, reporter: Reporter) -> None:
    """After a remote answer: leave the node's SSH connection open for the next commands
    (keeper/link.py), saying so when a new one starts."""
    if n.local or n.network != "tunnel":
        return
    from rbee_fabric.keeper import link

    try:
        if link.ensure(n.name, G.inventory):
            reporter.info(f"keeping the SSH connection to {n.name} open for the next requests "
                          f"(closed after {link.keep_seconds():g} s idle; RBEE_SSH_KEEP_S=0: never kept)")  # fmt: skip
    except OSError as exc:
        reporter.info(f"could not keep the SSH connection to {n.name} open: {exc}")
