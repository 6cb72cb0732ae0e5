"""What both daemons share: error envelopes, the API-key check, serving a socket."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import signal
import socket
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rbee_fabric import proof
from rbee_fabric.errormap import disk_error, http_error
from rbee_fabric.errors import (
    InternalError,
    InvalidApiKey,
    RbeeError,
    RequestTooLarge,
    UsageError,
)

log = logging.getLogger("rbee")

OPEN_PATHS = frozenset({"/v1/health"})


def error_response(err: RbeeError) -> JSONResponse:
    headers = {}
    if (retry := err.details.get("retry_after_s")) is not None:
        headers["Retry-After"] = str(retry)  # QUEUE_FULL: when to come back
    return JSONResponse(err.envelope(), status_code=err.http_status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Map every error a route can raise to the one envelope, once."""

    @app.exception_handler(RbeeError)
    async def _rbee(_: Request, exc: RbeeError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        field = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        reason = first.get("msg", "invalid value")
        return error_response(
            UsageError(
                f"invalid field {field!r}: {reason}",
                details={"field": field, "errors": _jsonable(exc.errors())},
            )
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        err = http_error(exc.status_code, str(exc.detail))
        return JSONResponse(err.envelope(), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        if (disk := disk_error(exc, "the node's rbee data directory")) is not None:
            log.error("%s", disk.message)
            return error_response(disk)
        log.exception("unhandled error")
        return error_response(InternalError(repr(exc)))


def _jsonable(errors: Any) -> list[dict[str, Any]]:
    return [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", ""))} for e in errors]


MAX_BODY_BYTES = 8 * 1024 * 1024


def health_proof(api_key: str, nonce: str | None) -> dict[str, Any]:
    """The additive health field: the key proof for the keeper's nonce."""
    fields: dict[str, Any] = {}
    if nonce is not None:
        if not proof.valid_nonce(nonce):
            raise UsageError("nonce must be 1-128 lowercase hex digits")
        fields["proof"] = proof.answer(api_key, nonce)
    return fields


class Guard:
    """Raw ASGI middleware: the API key and the request body limit.

    The key check decides on `scope["path"]`, the path the router dispatches
    on, never on `request.url` (which older Starlette rebuilt partly from the
    Host header, so `Host: x/v1/health?` made any path look open). The body
    limit counts the bytes actually received, not only Content-Length.
    """

    def __init__(self, app: ASGIApp, api_key: str, max_body: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.api_key = api_key.encode()
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        if scope.get("path") not in OPEN_PATHS:
            header = headers.get(b"authorization", b"")
            scheme, _, given = header.partition(b" ")
            if scheme.lower() != b"bearer" or not secrets.compare_digest(
                given.strip(), self.api_key
            ):
                what = "missing" if not header else "wrong"
                err = InvalidApiKey(
                    f"{what} API key",
                    hint="send the node's API key (the keeper reads it from the node's "
                    "rbee config directory)",
                )
                await error_response(err)(scope, receive, send)
                return
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await error_response(self._too_large())(scope, receive, send)
            return
        await self._limited(scope, receive, send)

    def _too_large(self) -> RequestTooLarge:
        mb = self.max_body // (1024 * 1024)
        return RequestTooLarge(
            f"request body larger than {mb} MB", details={"limit_bytes": self.max_body}
        )

    async def _limited(self, scope: Scope, receive: Receive, send: Send) -> None:
        received = 0
        over = False
        started = False

        async def counting_receive() -> Message:
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    over = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if over:
                return  # the app's answer to the cut body is replaced by ours
            started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except _BodyTooLarge:
            pass
        except Exception:
            if not over:
                raise
        if over and not started:
            await error_response(self._too_large())(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


def install_api_key(app: FastAPI, api_key: str, where: str) -> None:
    """Require `Authorization: Bearer <key>` on every path but /v1/health; limit bodies.

    `where` (the key file) is deliberately not shown in the 401 answer: an
    unauthenticated caller learns nothing about the node's file layout.
    """
    del where
    app.add_middleware(Guard, api_key=api_key)


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind (and listen) before serving, so a taken port fails at once."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto given: asyncio turns Nagle off (TCP_NODELAY) only on sockets whose proto
    # is IPPROTO_TCP, and accepted sockets inherit it. With proto 0, every second
    # request on a kept-alive connection waited ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.set_inheritable(False)
    return sock


def serve(
    app: FastAPI, sock: socket.socket, *, log_level: str = "warning",
    graceful_s: float | None = None,
) -> None:  # fmt: skip
    """Run uvicorn on an already bound socket until it is told to stop.

    graceful_s bounds how long a stop waits for running requests before
    cancelling them (None: as long as they take).
    """
    import uvicorn

    class _Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # A SIGTERM or SIGINT is our normal way to stop: after the graceful
            # shutdown, exit 0 instead of re-raising the signal as uvicorn does.
            sigs = (signal.SIGINT, signal.SIGTERM)
            originals = {sig: signal.signal(sig, self.handle_exit) for sig in sigs}
            try:
                yield
            finally:
                for sig, handler in originals.items():
                    signal.signal(sig, handler)

    config = uvicorn.Config(
        app, log_level=log_level, access_log=False, lifespan="on",
        timeout_graceful_shutdown=math.ceil(graceful_s) if graceful_s is not None else None,
    )  # fmt: skip
    server = _Server(config)
    app.state.request_exit = lambda: setattr(server, "should_exit", True)
    asyncio.run(server.serve(sockets=[sock]))
