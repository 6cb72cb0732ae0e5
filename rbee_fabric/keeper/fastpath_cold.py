"""A cold `rbee infer` on the lean path: the hive this keeper just started, its worker.

When the lean path started the hive itself (fastpath_hive.start_early, with the
request as the speculative worker's hint), the full path would now load typer,
httpx and pydantic (~1 s of CPU) while the hive imports its web stack and the
worker loads the model on the same cores. This does the few requests the
common case needs with the standard library instead: wait for the hive, find
the model in its catalog, ask for the worker (the hive adopts the speculative
one), record it in the keeper's registry, follow its loading, and hand a Plan
to the lean path's streaming.

Anything unusual (the model not in the catalog, a prompt that may not fit,
an error answer, a worker that fails or takes long to load) raises Fallback:
the full path takes over and reports it as always. Until the worker is asked
for nothing is printed; after that, a fallback may repeat what the full path
says about that same worker.
"""

from __future__ import annotations

import contextlib
import sqlite3
import sys
import time

from rbee_fabric import paths
from rbee_fabric.keeper import fastpath
from rbee_fabric.keeper.fastpath_args import LeanArgs
from rbee_fabric.keeper.fastpath_hive import answers
from rbee_fabric.keeper.fastpath_net import Daemon, Fallback
from rbee_fabric.keeper.fastpath_node import LocalNode
from rbee_fabric.keeper.fastpath_out import Output

HIVE_WAIT_S = 20.0
LOAD_WAIT_S = 60.0  # longer loads: the full path follows them with its progress bar
FRAMING_PER_MESSAGE = 16  # as contextfit.FRAMING_PER_MESSAGE (a test holds them equal)


def plan_cold(a: LeanArgs, node: LocalNode, out: Output) -> fastpath.Plan:
    """A ready worker for the request on the hive this keeper started; Fallback if not."""
    if node.max_replicas > 1:
        raise Fallback("several replicas: the hive picks the worker")
    ref = _ref(a)
    _wait_hive(node.hive_port)
    api_key = paths.read_api_key()
    if not api_key:
        raise Fallback("no API key")
    db = fastpath.registry()
    try:
        hive = Daemon(f"http://127.0.0.1:{node.hive_port}", api_key)
        try:
            hive.prove()
            model = _catalogued(hive, ref)
            n_ctx = min(a.ctx_size, model.get("context_length") or a.ctx_size)
            if not _surely_fits(a, n_ctx):
                raise Fallback("the prompt may not fit: the full path counts its tokens")
            info = _spawn(hive, a, node, model["id"])
            if not info.get("spawned"):
                raise Fallback("a worker someone else started: the full path follows it")
            try:
                out.info(f"starting a worker for {ref} on {node.name}")
                _register(db, info, node.name, ref, a.ctx_size)
                worker = _wait_ready(hive, info, api_key)
            except KeyboardInterrupt:  # as the full path: forget it, stop what we started
                _abandon(db, hive, str(info["id"]))
                raise
            final = hive.get(f"/v1/workers/{info['id']}")
        finally:
            hive.close()
        fastpath.execute(db, "UPDATE workers SET pid = ?, state = ?, last_health_at = ? WHERE id = ?",
                         [final.get("pid", info.get("pid")), "idle", time.time(), info["id"]])  # fmt: skip
        if final.get("safe_mode"):
            out.info(f"{node.name} runs llama.cpp in safe mode (AMX/repacking off): "
                     f"{final.get('safe_mode_reason')}; decode may be slower")  # fmt: skip
        chat = bool(a.chat_format) or (not a.raw and bool(model.get("chat_template")))
        return fastpath.Plan(a, node, ref, api_key, str(info["id"]), worker, chat, db, reused=False)
    except BaseException:
        db.close()
        raise


def _ref(a: LeanArgs) -> str:
    from rbee_fabric import modelref
    from rbee_fabric.errors import RbeeError

    try:
        return modelref.parse(a.model).canonical
    except RbeeError:
        raise Fallback("bad model reference") from None


def _wait_hive(port: int) -> None:
    deadline = time.monotonic() + HIVE_WAIT_S
    while not answers(port):
        if time.monotonic() > deadline:
            raise Fallback("the hive did not answer")
        time.sleep(0.02)


def _catalogued(hive: Daemon, ref: str) -> dict:  # type: ignore[type-arg]
    models = hive.get("/v1/models").get("models")
    for m in models if isinstance(models, list) else []:
        if isinstance(m, dict) and m.get("reference") == ref and isinstance(m.get("id"), str):
            return m
    raise Fallback("the model is not in the node's catalog: the full path gets it")


def _surely_fits(a: LeanArgs, n_ctx: int) -> bool:
    """As contextfit.surely_fits for the request the lean path sends."""
    assert a.prompt is not None
    texts = [a.prompt] + ([a.system] if a.system else [])
    text = "\n".join(texts)
    bound = len(text.encode()) + 2 * text.count(" ") + 5 + FRAMING_PER_MESSAGE * len(texts)
    return bound + (a.max_tokens or 1) <= n_ctx


def _spawn(hive: Daemon, a: LeanArgs, node: LocalNode, model_id: str) -> dict:  # type: ignore[type-arg]
    body: dict[str, object] = {"model_id": model_id, "backend": a.backend, "device": a.device,
                               "n_ctx": a.ctx_size, "safe_mode": node.safe_mode}  # fmt: skip
    if node.max_queue is not None:
        body["max_queue"] = node.max_queue
    status, info = hive.request("POST", "/v1/workers/spawn", body=body)
    if status != 200 or not isinstance(info, dict) or not isinstance(info.get("url"), str):
        raise Fallback(f"spawn answered HTTP {status}: the full path reports it")
    return info


def _register(db: sqlite3.Connection, info: dict, node: str, ref: str, n_ctx: int) -> None:  # type: ignore[type-arg]
    """As Registry.add (keeper/registry.py): the row the full path writes."""
    now = time.time()
    fastpath.execute(
        db,
        "INSERT OR REPLACE INTO workers (id, node, model_ref, backend, device, url, pid, state, "
        "last_health_at, created_at, n_ctx) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [info["id"], node, ref, info.get("backend"), info.get("device"), info["url"],
         info.get("pid"), info.get("state"), now, now, n_ctx],
    )  # fmt: skip


def _abandon(db: sqlite3.Connection, hive: Daemon, wid: str) -> None:
    """Ctrl+C while the worker loads: its registry row goes, and the worker (best effort)."""
    with contextlib.suppress(Fallback, sqlite3.Error):
        db.execute("DELETE FROM workers WHERE id = ?", [wid])
    with contextlib.suppress(Fallback, OSError):
        hive.request("POST", f"/v1/workers/{wid}/shutdown")


def _wait_ready(hive: Daemon, info: dict, api_key: str) -> Daemon:  # type: ignore[type-arg]
    """The worker, proven and ready; on a terminal a line shows the loading progress.
    A worker that is gone (the hive no longer knows it) is the full path's to report."""
    tty = sys.stderr.isatty()
    deadline = time.monotonic() + LOAD_WAIT_S
    worker: Daemon | None = None
    next_check = time.monotonic() + 0.5
    try:
        while time.monotonic() < deadline:
            if worker is None:  # not listening yet, or not proven
                candidate = Daemon(str(info["url"]), api_key, timeout=2.0)
                try:
                    candidate.prove()
                    worker = candidate
                except Fallback:
                    candidate.close()
                    if time.monotonic() > next_check:
                        next_check = time.monotonic() + 0.5
                        status, _ = hive.request("GET", f"/v1/workers/{info['id']}")
                        if status == 404:
                            raise Fallback("the worker is gone: the full path reports why") from None
                    time.sleep(0.02)
                    continue
            ready = worker.get("/v1/ready")
            if isinstance(ready, dict) and ready.get("ready") is True:
                done, worker = worker, None
                return done
            if isinstance(ready, dict) and ready.get("state") == "failed":
                raise Fallback("the worker failed to load: the full path reports why")
            if tty:
                sys.stderr.write("\rloading model …")
                sys.stderr.flush()
            time.sleep(0.02)
        raise Fallback("the worker is still loading: the full path follows it")
    finally:
        if worker is not None:
            worker.close()
        if tty:
            sys.stderr.write("\r\x1b[2K")
            sys.stderr.flush()
