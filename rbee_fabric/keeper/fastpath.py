"""The lean path of `rbee infer`: a live worker, reached with the stdlib.

A warm `rbee infer` needs little: the registry row of a worker for the model
(sqlite3), the API key file, and HTTP to the worker (minihttp.py, json). This
module does exactly that, and prints exactly what the full path prints (same
stdout, stderr and exit codes). Whatever it cannot serve (no registry row, a
worker that does not answer, a remote node without a link, unusual flags) it hands to the
full path *before printing anything*; then nothing was done twice that
matters (a registry read and a health probe). A remote node is served the
same way through its link (keeper/link.py), when the full path left one.

Errors after the first output (an error event, a crash mid-stream, Ctrl+C)
are raised as the same RbeeErrors the full path raises and printed by the
same function (cli/ui.py fail): those imports happen only then.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from rbee_fabric import paths
from rbee_fabric.keeper import defaults, link
from rbee_fabric.keeper.fastpath_args import LeanArgs
from rbee_fabric.keeper.fastpath_net import Daemon, Fallback
from rbee_fabric.keeper.fastpath_node import LocalNode, RemoteNode, lean_node
from rbee_fabric.keeper.fastpath_out import Output

_COLUMNS = "id, node, model_ref, backend, device, url, pid, state, last_health_at, created_at, n_ctx"


class Plan(NamedTuple):
    """Everything decided before the first output: the lean path will serve this."""

    args: LeanArgs
    node: LocalNode | RemoteNode
    ref: str
    api_key: str
    worker_id: str
    worker: Daemon
    chat: bool
    db: sqlite3.Connection
    reused: bool = True  # False: this keeper started the worker (fastpath_cold.py)
    after: Callable[[bool], None] | None = None  # once the answer is out (fastpath_cold.py); True: it all went out


def prompt_of(args: LeanArgs) -> str | None:
    """The prompt (stdin read when not given); None when the full path must say why not."""
    if args.prompt is None:
        if sys.stdin is None or sys.stdin.isatty():
            return None
        args.prompt = sys.stdin.read()
    return args.prompt if args.prompt.strip() else None


def plan(args: LeanArgs) -> Plan:
    """Decide whether the lean path serves args; Fallback when it does not."""
    if args.debug or os.environ.get("RBEE_DEBUG", "") not in ("", "0"):
        raise Fallback("--debug")
    if args.backend not in ("auto", "cpu", "cuda", "metal") or (args.raw and args.chat_format):
        raise Fallback("usage error")
    if not _request_fits(args):
        raise Fallback("request out of the worker's limits")
    node = lean_node(args.node, args.inventory or os.environ.get("RBEE_INVENTORY") or None)
    if node is None:
        raise Fallback("neither a local node nor one with a link")
    from rbee_fabric import modelref
    from rbee_fabric.errors import RbeeError

    try:
        ref = modelref.parse(args.model).canonical
    except RbeeError:
        raise Fallback("bad model reference") from None
    try:
        if node.max_replicas > 1:
            raise Fallback("several replicas: the hive picks the worker")
        return _plan_on(args, node, ref)
    except Fallback as exc:
        if isinstance(node, LocalNode):
            exc.node = node  # the command is for this machine: its hive may start early
        raise


def _via(node: LocalNode | RemoteNode) -> Path | None:
    """How the node's daemons are reached: None for this machine, else its link."""
    return node.link if isinstance(node, RemoteNode) else None


def _plan_on(args: LeanArgs, node: LocalNode | RemoteNode, ref: str) -> Plan:
    from rbee_fabric.errors import RbeeError

    try:
        api_key = paths.read_api_key() if isinstance(node, LocalNode) else link.api_key(node.link)
    except (RbeeError, link.LinkError):
        api_key = None
    if not api_key:
        raise Fallback("no API key yet")
    db = registry()
    try:
        wid, worker, template = _live_worker(db, node, ref, args, api_key)
        try:
            chat = _use_chat(args, node, ref, api_key, template)
        except BaseException:
            worker.close()
            raise
    except BaseException:
        db.close()
        raise
    return Plan(args, node, ref, api_key, wid, worker, chat, db)


def _request_fits(a: LeanArgs) -> bool:
    """The limits of InferenceRequest (schemas.py): outside them the full path reports."""
    assert a.prompt is not None
    texts = [a.prompt] + ([a.system] if a.system else [])
    return (
        all(len(t) <= 1_000_000 for t in texts)
        and (a.max_tokens is None or a.max_tokens <= 1_000_000)
        and a.top_p > 0
        and (a.seed is None or a.seed <= 2**31 - 1)
        and (a.chat_format is None or 1 <= len(a.chat_format) <= 64)
    )


def registry() -> sqlite3.Connection:
    path = paths.data_dir() / "registry.db"
    if not path.is_file():
        raise Fallback("no registry")
    try:
        db = sqlite3.connect(path, timeout=30.0, isolation_level=None)
        cols = {row[1] for row in db.execute("PRAGMA table_info(workers)")}
    except sqlite3.Error:
        raise Fallback("registry unreadable") from None
    if not {"device", "n_ctx"} <= cols:
        db.close()
        raise Fallback("registry needs its migration")
    return db


def candidates(db: sqlite3.Connection, node: str, ref: str, a: LeanArgs) -> list[tuple[str, str]]:
    """(id, url) of registered workers for the configuration, as Registry.candidates."""
    where = "node = ? AND model_ref = ? AND n_ctx = ?"
    params: list[object] = [node, ref, a.ctx_size]
    if a.backend != "auto":
        where += " AND backend = ?"
        params.append(a.backend)
    if a.backend != "cpu":
        where += " AND (backend = 'cpu' OR device = ?)" if a.backend == "auto" else " AND device = ?"
        params.append(a.device)
    rows = db.execute(
        f"SELECT id, url FROM workers WHERE {where} ORDER BY last_health_at DESC", params
    ).fetchall()
    return [(str(r[0]), str(r[1])) for r in rows]


def _live_worker(
    db: sqlite3.Connection, node: LocalNode | RemoteNode, ref: str, a: LeanArgs, key: str
) -> tuple[str, Daemon, bool | None]:
    """The first registered worker that proves itself and is ready (proven connection),
    and whether its model has a chat template (None: it does not say)."""
    try:
        found = candidates(db, node.name, ref, a)
    except sqlite3.Error:
        raise Fallback("registry unreadable") from None
    for wid, url in found:
        worker = Daemon(url, key, timeout=2.0, via=_via(node))
        try:
            worker.prove()
            ready = worker.get("/v1/ready")
        except BaseException:
            worker.close()
            raise  # gone or not ours: the full path forgets it and goes on
        if isinstance(ready, dict) and ready.get("ready") is True:
            execute(db, "UPDATE workers SET state = ?, last_health_at = ? WHERE id = ?",
                     [str(ready.get("state")), time.time(), wid])  # fmt: skip
            template = ready.get("chat_template")
            return wid, worker, template if isinstance(template, bool) else None
        worker.close()
    raise Fallback("no ready worker registered")


def _use_chat(a: LeanArgs, node: LocalNode | RemoteNode, ref: str, key: str, template: bool | None) -> bool:
    """As request.use_chat, with the catalog's word on the template (as infer._has_template):
    the worker reads it from the same GGUF header; the hive is asked when it does not say."""
    if a.chat_format:
        return True
    if a.raw:
        return False
    if template is not None:
        return template
    hive = Daemon(f"http://127.0.0.1:{node.hive_port}", key, via=_via(node))
    try:
        hive.prove()
        models = hive.get("/v1/models").get("models", [])
    except AttributeError:
        raise Fallback("odd /v1/models answer") from None
    finally:
        hive.close()
    return any(m.get("reference") == ref and m.get("chat_template") for m in models)


def execute(db: sqlite3.Connection, sql: str, params: list[object]) -> None:
    try:
        db.execute(sql, params)
    except sqlite3.Error:
        raise Fallback("registry not writable") from None


def body_of(a: LeanArgs, chat: bool, request_id: str) -> dict[str, Any]:
    """The worker request, as request.build_request sends it (fields set, None included)."""
    common = {"temperature": a.temperature, "top_p": a.top_p, "seed": a.seed,
              "request_id": request_id}  # fmt: skip
    if chat:
        msgs = [{"role": "user", "content": a.prompt}]
        if a.system:
            msgs.insert(0, {"role": "system", "content": a.system})
        return {"messages": msgs, "chat_format": a.chat_format, "max_tokens": a.max_tokens} | common
    return {"prompt": a.prompt, "max_tokens": a.max_tokens or defaults.RAW_MAX_TOKENS} | common


def mode_note(a: LeanArgs, chat: bool) -> str:
    """The line infer.infer prints about how the prompt is sent."""
    if chat:
        if a.chat_format:
            return f"answering through the chat format {a.chat_format}"
        return "answering through the model's chat template (--raw for plain completion)"
    if a.raw:
        return "raw completion (--raw): the model continues the prompt"
    return "this model has no chat template: raw completion, the model continues the prompt" + (
        " (--system is not used; --chat-format NAME renders a chat)" if a.system else ""
    )


def run(p: Plan, started: float) -> int:
    """Serve the planned request; returns the exit code (errors printed as the full path does)."""
    from rbee_fabric.keeper.fastpath_stream import generate

    out = Output(quiet_tokens=p.args.as_json)
    finished = False
    try:
        out.info(mode_note(p.args, p.chat))
        body = body_of(p.args, p.chat, os.urandom(16).hex())  # uuid costs 14 ms of imports
        code = generate(p, body, out, started)
        finished = code == 0
        return code
    finally:
        p.worker.close()
        try:
            if p.after is not None:
                p.after(finished)
        finally:
            p.db.close()
