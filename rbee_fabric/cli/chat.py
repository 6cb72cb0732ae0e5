"""`rbee chat`: an interactive conversation in the terminal (prompt-toolkit line editing)."""

from __future__ import annotations

import signal
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
    from prompt_toolkit import PromptSession

    from rbee_fabric.keeper.chat import ChatSession

HELP = """commands:
  /help       this list
  /clear      forget the conversation (the system prompt stays)
  /bye        leave (Ctrl+D too)
  \"\"\"         a line of three quotes opens a multi-line message; another closes it
Ctrl+C stops an answer; at an empty prompt, press it twice to leave."""


def chat(
    model: ModelOpt,
    node: NodeOpt = "localhost",
    system: Annotated[str | None, typer.Option("--system", help="system prompt")] = None,
    chat_format: Annotated[str | None, typer.Option("--chat-format", help="chat format when the model has no template (gemma, llama-3, chatml, ...)")] = None,
    max_tokens: Annotated[int | None, typer.Option(min=1, help="cap on each answer (default: to the end of the turn)")] = None,
    temperature: TemperatureOpt = defaults.TEMPERATURE,
    top_p: TopPOpt = defaults.TOP_P,
    seed: SeedOpt = None,
    backend: BackendOpt = "auto",
    device: DeviceOpt = 0,
    timeout: LoadTimeoutOpt = defaults.LOAD_TIMEOUT_S,
    ctx_size: CtxSizeOpt = defaults.N_CTX,
    start_hive: StartHiveOpt = True,
) -> None:
    """Talk with MODEL on NODE: each answer streams, the conversation is kept."""
    from rbee_fabric.cli.ui import TerminalReporter
    from rbee_fabric.errors import UsageError
    from rbee_fabric.keeper.chat import ChatSession
    from rbee_fabric.keeper.infer import InferOptions, acquire
    from rbee_fabric.keeper.session import node_transport, open_registry

    if backend not in ("auto", "cpu", "cuda", "metal"):
        raise UsageError(f"invalid --backend {backend!r}", hint="use auto, cpu, cuda or metal")
    if not sys.stdin.isatty():
        raise UsageError("rbee chat needs a terminal", hint='use rbee infer --prompt "..." in scripts')
    opts = InferOptions(
        model=model, max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed,
        backend=backend, device=device, timeout=timeout, n_ctx=ctx_size, start_hive=start_hive,
        system=system, chat_format=chat_format,
    )  # fmt: skip
    reporter = TerminalReporter()

    async def main() -> Any:
        registry = open_registry()
        try:
            async with node_transport(node, G.inventory) as t:
                got = await acquire(t, opts, reporter, registry)
                reporter.close_bar()
                session = ChatSession(got, reporter, system=system)
                await _repl(session, reporter, f"{model} on {node}")
        finally:
            reporter.close_bar()
            registry.close()

    run_flow(main())


def _prompt_session() -> PromptSession[str]:
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import FileHistory
    from prompt_toolkit.key_binding import KeyBindings

    from rbee_fabric import paths

    kb = KeyBindings()

    @kb.add("c-c")
    def _(event: Any) -> None:
        buf = event.app.current_buffer
        if buf.text:
            buf.reset()  # Ctrl+C on a typed line: start the line over
        else:
            event.app.exit(exception=KeyboardInterrupt, style="class:aborting")

    history = paths.ensure_dir(paths.data_dir()) / "chat_history"
    return PromptSession(history=FileHistory(str(history)), key_bindings=kb)


async def _read_message(ps: PromptSession[str]) -> str | None:
    """One message: a line, or a block between lines of three quotes (None: Ctrl+D)."""
    try:
        line = await ps.prompt_async(">>> ")
    except EOFError:
        return None
    if not line.strip().startswith('"""'):
        return line
    first = line.strip()[3:]
    if first.endswith('"""') and first:
        return first[:-3]
    lines = [first] if first else []
    while True:
        try:
            more = await ps.prompt_async("... ")
        except EOFError:
            return "\n".join(lines)
        if more.rstrip().endswith('"""'):
            lines.append(more.rstrip()[:-3])
            return "\n".join(x for x in lines).strip("\n")
        lines.append(more)


async def _repl(session: ChatSession, reporter: Any, where: str) -> None:
    from rbee_fabric.cli.ui import err

    ps = _prompt_session()
    err.print(f"[dim]chatting with {where}; {session.describe()}[/dim]")
    err.print("[dim]/help for commands, /bye or Ctrl+D to leave[/dim]")
    interrupted = False
    while True:
        try:
            text = await _read_message(ps)
        except KeyboardInterrupt:
            if interrupted:
                return
            interrupted = True
            err.print("[dim](press Ctrl+C again or type /bye to leave)[/dim]")
            continue
        interrupted = False
        if text is None:
            return
        command = text.strip()
        if not command:
            continue
        if command in ("/bye", "/exit", "/quit"):
            return
        if command == "/clear":
            session.clear()
            err.print("[dim](conversation cleared)[/dim]")
        elif command in ("/help", "/?"):
            err.print(HELP, markup=False)
        elif command.startswith("/") and " " not in command:
            err.print(f"unknown command {command}; /help lists them", markup=False)
        else:
            await _answer(session, reporter, text)


async def _answer(session: ChatSession, reporter: Any, text: str) -> None:
    """Stream one answer; Ctrl+C (SIGINT, the terminal is in normal mode) stops it."""
    import asyncio  # loaded by the running flow; not at import (`rbee --help` never needs it)

    from rbee_fabric.cli.ui import err
    from rbee_fabric.errors import RequestCanceled

    loop = asyncio.get_running_loop()
    task = asyncio.create_task(session.ask(text))
    loop.add_signal_handler(signal.SIGINT, task.cancel)
    try:
        summary = await task
    except (RequestCanceled, asyncio.CancelledError) as exc:
        reporter.close_bar()
        sys.stdout.write("\n")
        note = exc.message if isinstance(exc, RequestCanceled) else "Canceled."
        err.print(f"[dim]({note.rstrip('.')}: answer stopped, this turn is not kept)[/dim]")
        return
    finally:
        loop.remove_signal_handler(signal.SIGINT)
    sys.stdout.write("\n")
    sys.stdout.flush()
    cut = " (cut at the token cap)" if summary.stop_reason == "length" else ""
    err.print(
        f"[dim]{summary.tokens} tokens, {summary.tokens_per_second:.1f} tokens/s{cut}[/dim]\n"
    )
