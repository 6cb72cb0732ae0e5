"""What both daemons share: error envelopes, the API-key check, serving a socket."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import signal
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from rbee_fabric.errors import InvalidApiKey, RbeeError, UsageError

log = logging.getLogger("rbee")

OPEN_PATHS = frozenset({"/v1/health"})


def error_response(err: RbeeError) -> JSONResponse:
    return JSONResponse(err.envelope(), status_code=err.http_status)


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
        code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(exc.status_code, "HTTP_ERROR")
        body = {"error": {"code": code, "message": str(exc.detail), "details": {}}}
        return JSONResponse(body, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        body = {"error": {"code": "INTERNAL_ERROR", "message": repr(exc), "details": {}}}
        return JSONResponse(body, status_code=500)


def _jsonable(errors: Any) -> list[dict[str, Any]]:
    return [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", ""))} for e in errors]


def install_api_key(app: FastAPI, api_key: str, where: str) -> None:
    """Require `Authorization: Bearer <key>` on every path but /v1/health."""

    @app.middleware("http")
    async def _auth(
        request: Request, call_next: Callable[[Request], Awaitable[Any]]
    ) -> Any:
        if request.url.path not in OPEN_PATHS:
            header = request.headers.get("authorization", "")
            scheme, _, given = header.partition(" ")
            if scheme.lower() != "bearer" or not secrets.compare_digest(
                given.strip().encode(), api_key.encode()
            ):
                what = "missing" if not header else "wrong"
                return error_response(
                    InvalidApiKey(
                        f"{what} API key",
                        hint=f"the node's key lives in {where}",
                        details={"key_file": where},
                    )
                )
        return await call_next(request)


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind (and listen) before serving, so a taken port fails at once."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
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
