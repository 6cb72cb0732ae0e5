"""`rbee serve`: the OpenAI-compatible HTTP API in front of every node.

    GET  /health                 open (no key): the gateway is up
    GET  /v1/models              every model of every node's catalog (+ gemma3-270m)
    GET  /v1/models/{id}
    POST /v1/chat/completions    messages through the model's chat template
    POST /v1/completions         raw completion
    GET  /metrics                Prometheus

Every answer but /health needs `Authorization: Bearer <key>`; every error is
an OpenAI error object (`translate.error_object`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from rbee_fabric import __version__, modelref
from rbee_fabric.errors import InvalidApiKey, ModelNotFound, RbeeError, RequestCanceled, UsageError
from rbee_fabric.gateway import routing, translate
from rbee_fabric.gateway.dispatch import Dispatcher, SpawnOptions, Upstream
from rbee_fabric.gateway.metrics import CONTENT_TYPE, Metrics
from rbee_fabric.gateway.pool import NodePool
from rbee_fabric.keeper import inventory
from rbee_fabric.keeper.session import open_registry
from rbee_fabric.schemas import (
    InferenceRequest,
    OpenAIChatRequest,
    OpenAICompletionRequest,
    OpenAIModel,
    OpenAIModelList,
)

log = logging.getLogger("rbee.serve")
OPEN_PATHS = frozenset({"/health"})
T = TypeVar("T")


@dataclass
class GatewaySettings:
    api_key: str
    key_source: str  # where the key comes from, for the 401 hint (never the key)
    inventory_file: str | None = None
    n_ctx: int = 2048
    load_timeout: float = 300.0


@dataclass
class _State:
    pool: NodePool
    dispatcher: Dispatcher
    metrics: Metrics


def sse(model: BaseModel) -> bytes:
    return b"data: " + model.model_dump_json(exclude_none=True).encode() + b"\n\n"


def error_response(err: RbeeError) -> JSONResponse:
    headers = {"Retry-After": ra} if (ra := translate.retry_after(err)) else None
    body = translate.error_object(err).model_dump(exclude_none=True)
    return JSONResponse(body, status_code=translate.openai_status(err), headers=headers)


def create_app(settings: GatewaySettings) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        inv = inventory.load(settings.inventory_file)
        pool = NodePool(inv)
        registry = open_registry()
        await pool.start()
        for h in pool.nodes.values():
            state = f"hive up, {len(h.workers)} worker(s)" if h.hive_up else "hive not running (started on demand)"
            log.info("node %s: %s; %s", h.name, h.node.reach, state if h.up else f"NOT ANSWERING: {h.down_reason}")
        spawn = SpawnOptions(n_ctx=settings.n_ctx, load_timeout=settings.load_timeout)
        app.state.gw = _State(pool, Dispatcher(pool, registry, spawn), Metrics())
        try:
            yield
        finally:
            # Streams cancelled by the stop have scheduled their worker-side
            # cancels; let those tasks start, then pool.close() waits for them.
            for _ in range(3):
                await asyncio.sleep(0.05)
            await pool.close()
            registry.close()
            log.info("rbee serve stopped; hives and workers stay up until their idle timeout")

    app = FastAPI(title="rbee serve", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    _install_errors(app)
    _install_auth(app, settings)

    def gw() -> _State:
        return app.state.gw  # type: ignore[no-any-return]

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    @app.get("/v1/models")
    async def models() -> Response:
        return _json(await _model_list(gw().pool))

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> Response:
        for m in (await _model_list(gw().pool)).data:
            if m.id == model_id:
                return _json(m)
        raise ModelNotFound(f"no node of the inventory knows the model {model_id!r}")

    @app.get("/metrics")
    async def metrics() -> Response:
        s = gw()
        return Response(s.metrics.render(s.pool), media_type=CONTENT_TYPE)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        received = time.monotonic()
        r = translate.parse_request(await _body(request), OpenAIChatRequest)
        ireq = _build(lambda: translate.chat_inference(r))
        return await _serve(gw(), request, r.model, ireq, received, chat=True,
                            stream=r.stream, include_usage=bool(r.stream_options and r.stream_options.include_usage))  # fmt: skip

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        received = time.monotonic()
        r = translate.parse_request(await _body(request), OpenAICompletionRequest)
        ireq = _build(lambda: translate.completion_inference(r))
        return await _serve(gw(), request, r.model, ireq, received, chat=False,
                            stream=r.stream, include_usage=bool(r.stream_options and r.stream_options.include_usage))  # fmt: skip

    return app


# --------------------------------------------------------------- serving


async def _serve(
    s: _State, request: Request, model: str, ireq: InferenceRequest, received: float,
    *, chat: bool, stream: bool, include_usage: bool,
) -> Response:  # fmt: skip
    target: routing.Target | None = None
    try:
        target = routing.parse_target(model, set(s.pool.nodes))
        up = await _until_disconnected(request, s.dispatcher.open(target, ireq, received))
    except RbeeError as exc:
        node = target.node if target is not None and target.node else "-"
        s.metrics.observe(model, node, exc.code)
        log.info("%s -> %s: %s %s", model, node, exc.code, exc.message,
                 extra={"fields": {"model": model, "node": node, "outcome": exc.code}})  # fmt: skip
        raise
    headers = {"X-Rbee-Node": up.node, "X-Rbee-Worker": up.worker_id, "X-Request-Id": up.request_id}
    cid = translate.new_id("chatcmpl" if chat else "cmpl")
    if stream:
        body = _chat_stream if chat else _completion_stream
        return StreamingResponse(
            body(s, up, cid, model, include_usage), media_type="text/event-stream", headers=headers
        )
    try:
        text = await _until_disconnected(request, _collect(s, up, model))
    except RbeeError as exc:
        return _with_headers(error_response(exc), headers)
    u = translate.usage(up.done, up.tokens)
    finish = translate.finish_reason(up.done)
    answer: BaseModel = (
        translate.chat_completion(cid, model, text, up.done, up.tokens)
        if chat
        else translate.text_completion(cid, int(time.time()), model, text, finish=finish, u=u)
    )
    return _with_headers(_json(answer), headers)


async def _collect(s: _State, up: Upstream, model: str) -> str:
    pieces: list[str] = []
    outcome = "canceled"
    try:
        async with contextlib.aclosing(up.events()) as events:
            async for ev in events:
                if "token" in ev:
                    pieces.append(ev["token"])
        outcome = "ok"
    except RbeeError as exc:
        outcome = exc.code
        raise
    finally:
        _log_request(s, up, model, outcome)
    return "".join(pieces)


async def _chat_stream(s: _State, up: Upstream, cid: str, model: str, include_usage: bool) -> AsyncIterator[bytes]:
    created = int(time.time())
    outcome = "canceled"
    try:
        yield sse(translate.chat_chunk(cid, created, model, role=True, content=""))
        async with contextlib.aclosing(up.events()) as events:
            async for ev in events:
                if "token" in ev:
                    yield sse(translate.chat_chunk(cid, created, model, content=ev["token"]))
        yield sse(translate.chat_chunk(cid, created, model, finish=translate.finish_reason(up.done)))
        if include_usage:
            yield sse(translate.chat_usage_chunk(cid, created, model, translate.usage(up.done, up.tokens)))
        yield b"data: [DONE]\n\n"
        outcome = "ok"
    except RbeeError as exc:
        outcome = exc.code
        yield sse(translate.error_object(exc))
    finally:
        _log_request(s, up, model, outcome)


async def _completion_stream(s: _State, up: Upstream, cid: str, model: str, include_usage: bool) -> AsyncIterator[bytes]:
    created = int(time.time())
    outcome = "canceled"
    try:
        async with contextlib.aclosing(up.events()) as events:
            async for ev in events:
                if "token" in ev:
                    yield sse(translate.text_completion(cid, created, model, ev["token"]))
        finish = translate.finish_reason(up.done)
        yield sse(translate.text_completion(cid, created, model, "", finish=finish))
        if include_usage:
            u = translate.usage(up.done, up.tokens)
            yield sse(translate.text_completion(cid, created, model, "", u=u, with_choice=False))
        yield b"data: [DONE]\n\n"
        outcome = "ok"
    except RbeeError as exc:
        outcome = exc.code
        yield sse(translate.error_object(exc))
    finally:
        _log_request(s, up, model, outcome)


def _log_request(s: _State, up: Upstream, model: str, outcome: str) -> None:
    """One line per request, and the metrics; called from finally blocks (no await)."""
    ttft, tps = up.ttft_s, up.decode_tokens_per_second
    s.metrics.observe(model, up.node, outcome, ttft, tps)
    prompt = up.done.prompt_tokens if up.done else 0
    fields = {
        "model": model, "node": up.node, "worker": up.worker_id, "request_id": up.request_id,
        "prompt_tokens": prompt, "completion_tokens": up.tokens, "outcome": outcome,
        "ttft_ms": round(ttft * 1000) if ttft is not None else None,
        "tokens_per_s": round(tps, 1) if tps is not None else None,
        "queued_at": up.queued_position,
    }  # fmt: skip
    ttft_text = f"{fields['ttft_ms']} ms" if ttft is not None else "-"
    tps_text = f", {fields['tokens_per_s']} tok/s" if tps is not None else ""
    log.info(
        "%s -> %s (%s): %d+%d tokens, first token %s%s, %s",
        model, up.node, up.worker_id, prompt, up.tokens, ttft_text, tps_text, outcome,
        extra={"fields": fields},
    )  # fmt: skip


async def _until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Run work, cancelling it when the client hangs up first."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while not await request.is_disconnected():
            await asyncio.sleep(0.25)

    watcher = asyncio.ensure_future(watch())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        raise RequestCanceled("the client disconnected")
    return task.result()


# ------------------------------------------------------------ model list


async def _model_list(pool: NodePool) -> OpenAIModelList:
    await pool.fresh(list(pool.nodes))
    holders: dict[str, list[str]] = {alias: [] for alias in modelref.ALIASES}
    created: dict[str, int] = {}
    for h in pool.nodes.values():
        if not h.up:
            continue
        for m in h.catalog:
            holders.setdefault(m.reference, [])
            if h.name not in holders[m.reference]:
                holders[m.reference].append(h.name)
            created.setdefault(m.reference, _epoch(m.added_at))
    return OpenAIModelList(
        data=[OpenAIModel(id=ref, created=created.get(ref, 0), nodes=nodes) for ref, nodes in sorted(holders.items())]
    )


def _epoch(stamp: str) -> int:
    from datetime import datetime

    try:
        return int(datetime.fromisoformat(stamp).timestamp())
    except ValueError:
        return 0


# ---------------------------------------------------------------- plumbing


async def _body(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw)
    except ValueError:
        raise UsageError("the request body is not valid JSON", details={"param": None}) from None


def _build(make: Callable[[], InferenceRequest]) -> InferenceRequest:
    try:
        return make()
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise UsageError(f"invalid field {param!r}: {first['msg']}", details={"param": param}) from None


def _json(model: BaseModel) -> Response:
    return Response(model.model_dump_json(exclude_none=True), media_type="application/json")


def _with_headers(resp: Response, headers: dict[str, str]) -> Response:
    for k, v in headers.items():
        resp.headers[k] = v
    return resp


def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(RbeeError)
    async def _rbee(_: Request, exc: RbeeError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        body = {"error": {"message": str(exc.detail), "type": "invalid_request_error",
                          "param": None, "code": "NOT_FOUND" if exc.status_code == 404 else "HTTP_ERROR"}}  # fmt: skip
        return JSONResponse(body, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(RbeeError(f"internal error: {exc!r}"))


def _install_auth(app: FastAPI, settings: GatewaySettings) -> None:
    """Require the bearer key on every path but /health (compared in constant time).

    A plain ASGI middleware: BaseHTTPMiddleware would sit in the middle of every
    token stream and blur how a client's disconnect reaches the route.
    """
    app.add_middleware(_BearerAuth, settings=settings)


class _BearerAuth:
    def __init__(self, app: ASGIApp, settings: GatewaySettings) -> None:
        self.app = app
        self.key = settings.api_key.encode()
        self.source = settings.key_source

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        header = ""
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                header = value.decode("latin-1")
        scheme, _, given = header.partition(" ")
        if scheme.lower() == "bearer" and secrets.compare_digest(given.strip().encode(), self.key):
            await self.app(scope, receive, send)
            return
        what = "missing" if not header else "wrong"
        err = InvalidApiKey(
            f"{what} API key",
            hint=f"send `Authorization: Bearer <key>`; the key is in {self.source}",
        )
        await error_response(err)(scope, receive, send)
