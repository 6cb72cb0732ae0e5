"""The worker's HTTP API (SPEC section 6): load, report progress, stream tokens."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from rbee_fabric import __version__, contextfit, sse
from rbee_fabric.errors import GenerationFailed, RbeeError, WorkerNotFound, WorkerNotReady
from rbee_fabric.ggufmeta import has_chat_template
from rbee_fabric.httpserver import health_proof, install_api_key, install_error_handlers
from rbee_fabric.schemas import (
    Ack,
    CancelAck,
    DoneEvent,
    ErrorEnvelope,
    InferenceRequest,
    LoadingProgress,
    QueuedEvent,
    TokenEvent,
    WorkerHealth,
    WorkerReady,
)
from rbee_fabric.worker.admission import DEFAULT_MAX_QUEUE, Admission, Ticket
from rbee_fabric.worker.callback import report
from rbee_fabric.worker.engine import Engine, Generation
from rbee_fabric.worker.preload import EarlyLoad

log = logging.getLogger("rbee.worker")

FAILED_REPORT_S = 10.0
"""A worker that failed to load waits this long at most for the hive to hear it."""
HEARTBEAT_S = 1.0
"""A waiting request hears from the worker this often, so a gone client is noticed."""


@dataclass
class WorkerSettings:
    worker_id: str
    model_path: str
    url: str
    api_key: str
    hive_url: str | None = None
    key_file: str = "~/.config/rbee/api_key"
    n_ctx: int | None = None
    max_queue: int = DEFAULT_MAX_QUEUE


@dataclass
class _Current:
    request_id: str
    ticket: Ticket
    cancel: threading.Event = field(default_factory=threading.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    started: float = field(default_factory=time.monotonic)


class WorkerState:
    """Everything the worker knows; lives in app.state.worker."""

    def __init__(self, settings: WorkerSettings, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine
        self.state = "loading"
        self.progress = 0.0
        self.error: str | None = None
        self.changed = asyncio.Condition()
        self.current: _Current | None = None
        self.admission = Admission(settings.max_queue)
        self.idle_since = time.monotonic()
        self.stopping = False
        self.cleanup: asyncio.Task[None] | None = None
        self.reports: list[asyncio.Task[None]] = []  # to the hive (worker/callback.py)

    async def set_progress(self, stage: str, progress: float, error: str | None = None) -> None:
        async with self.changed:
            self.state = stage
            self.progress = progress
            self.error = error
            self.changed.notify_all()

    def progress_event(self) -> LoadingProgress:
        stage = {"loading": "loading", "failed": "failed"}.get(self.state, "ready")
        return LoadingProgress(stage=stage, progress=self.progress, error=self.error)  # type: ignore[arg-type]


def create_app(settings: WorkerSettings, engine: Engine, loader: EarlyLoad | None = None) -> FastAPI:
    """The worker app; the model loads in the background (started by loader already,
    or once HTTP is up)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = WorkerState(settings, engine)
        app.state.worker = state
        boot = asyncio.create_task(_boot(app, state, loader))
        try:
            yield
        finally:
            state.stopping = True
            if state.current:
                state.current.cancel.set()
            boot.cancel()
            with contextlib.suppress(BaseException):
                await boot
            await asyncio.to_thread(engine.close)

    app = FastAPI(title="llm-worker-rbee", lifespan=lifespan)
    install_error_handlers(app)
    install_api_key(app, settings.api_key, settings.key_file)

    @app.get("/v1/health", response_model=WorkerHealth, response_model_exclude_none=True)
    async def health(nonce: str | None = None) -> WorkerHealth:
        return WorkerHealth(version=__version__, **health_proof(settings.api_key, nonce))

    @app.get("/v1/ready", response_model=WorkerReady)
    async def ready() -> WorkerReady:
        w: WorkerState = app.state.worker
        state = w.state
        if state == "idle" and w.admission.running is not None:
            state = "busy"  # handed to the next request, which is about to start
        idle = time.monotonic() - w.idle_since if state == "idle" else None
        return WorkerReady(
            ready=state in ("idle", "busy"),
            state=state,  # type: ignore[arg-type]
            progress_url="/v1/loading/progress",
            model=settings.model_path,
            idle_seconds=idle,
            queued=w.admission.queued,
            n_ctx=settings.n_ctx,
            chat_template=_has_template(w.engine) if state in ("idle", "busy") else None,
        )

    @app.get("/v1/loading/progress")
    async def loading_progress() -> StreamingResponse:
        w: WorkerState = app.state.worker

        async def events() -> AsyncIterator[bytes]:
            last: LoadingProgress | None = None
            while True:
                async with w.changed:
                    event = w.progress_event()
                    if event == last:
                        await w.changed.wait()
                        continue
                last = event
                yield sse.encode(event)
                if event.stage != "loading":
                    yield sse.encode(sse.DONE)
                    return

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/inference")
    async def inference(req: InferenceRequest) -> StreamingResponse:
        w: WorkerState = app.state.worker
        _check_ready(w)
        await _check_context(w, req)  # a prompt that cannot fit never queues
        _check_ready(w)
        # No await from here to the admission: the slot or the place is ours.
        ticket = w.admission.admit(req.request_id or uuid.uuid4().hex)  # or QUEUE_FULL
        headers = {"X-Request-Id": ticket.request_id}
        if not ticket.granted.is_set():
            return StreamingResponse(
                _wait_then_generate(w, req, ticket), media_type="text/event-stream",
                headers=headers,
            )  # fmt: skip
        current = _start(w, ticket)
        stream = _generate(w, req, current)
        try:
            first = await stream.__anext__()  # setup errors still get a real status
        except BaseException:
            _release(w, current)
            raise
        return StreamingResponse(
            _stream(first, stream), media_type="text/event-stream", headers=headers
        )

    @app.delete("/v1/inference/{request_id}", response_model=CancelAck)
    async def cancel(request_id: str) -> CancelAck:
        w: WorkerState = app.state.worker
        if (waiting := w.admission.find(request_id)) is not None:
            w.admission.leave(waiting)  # it never runs
            return CancelAck(request_id=request_id, canceled=True)
        current = w.current
        if current is None or current.request_id != request_id:
            raise WorkerNotFound(
                f"no generation {request_id!r} is running or waiting here",
                details={"request_id": request_id},
            )
        current.cancel.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(current.finished.wait(), timeout=5.0)
        return CancelAck(request_id=request_id, canceled=current.finished.is_set())

    @app.post("/v1/admin/shutdown", response_model=Ack)
    async def shutdown() -> Ack:
        w: WorkerState = app.state.worker
        w.stopping = True
        if w.current:
            w.current.cancel.set()
        for waiting in list(w.admission.waiting):
            w.admission.leave(waiting)
        asyncio.get_running_loop().call_later(0.05, app.state.request_exit)
        return Ack(message="shutting down")

    return app


async def _stream(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    try:
        yield first
        async for chunk in rest:
            yield chunk
    finally:
        await rest.aclose()  # type: ignore[attr-defined]  # runs _generate's cleanup


def _check_ready(w: WorkerState) -> None:
    if w.state not in ("idle", "busy") or w.stopping:
        state = "stopping" if w.stopping else w.state
        raise WorkerNotReady(f"the worker is {state}", details={"state": state})


async def _check_context(w: WorkerState, req: InferenceRequest) -> None:
    """CONTEXT_TOO_LONG when the prompt and max_tokens cannot fit this worker's context."""
    n_ctx = w.settings.n_ctx
    if not n_ctx or contextfit.surely_fits(req, n_ctx):
        return
    tokens = await asyncio.to_thread(w.engine.count_tokens, contextfit.text_of(req))
    contextfit.check(req, tokens, n_ctx)


def _start(w: WorkerState, ticket: Ticket) -> _Current:
    current = _Current(request_id=ticket.request_id, ticket=ticket)
    w.current, w.state = current, "busy"
    log.info("generating %s (%d waiting)", ticket.request_id, w.admission.queued)
    return current


def _release(w: WorkerState, current: _Current) -> None:
    current.finished.set()
    if w.current is current:
        w.current = None
        w.state = "idle"
        w.idle_since = time.monotonic()
    w.admission.release(current.ticket, time.monotonic() - current.started)


async def _wait_then_generate(
    w: WorkerState, req: InferenceRequest, ticket: Ticket
) -> AsyncIterator[bytes]:
    """Queued: tell the client its position as it moves, then generate in turn."""
    current: _Current | None = None
    try:
        last = 0
        async for position in w.admission.positions(ticket, HEARTBEAT_S):
            if position != last:
                yield sse.encode(QueuedEvent(position=position))
                last = position
            else:
                yield b": waiting\n\n"  # an SSE comment: fails fast when the client is gone
        if not ticket.granted.is_set():  # taken out of the queue (DELETE or shutdown)
            if w.stopping:
                body = WorkerNotReady("the worker is stopping").envelope()
                yield sse.encode(ErrorEnvelope.model_validate(body))
            else:
                yield sse.encode(DoneEvent(total_tokens=0, duration_ms=0, stop_reason="canceled"))
                yield sse.encode(sse.DONE)
            return
        if w.stopping:
            w.admission.release(ticket)
            body = WorkerNotReady("the worker is stopping").envelope()
            yield sse.encode(ErrorEnvelope.model_validate(body))
            return
        current = _start(w, ticket)
        stream = _generate(w, req, current)
        try:
            async for chunk in stream:
                yield chunk
        finally:
            await stream.aclose()  # type: ignore[attr-defined]  # runs _generate's cleanup
    finally:
        # The client went away while waiting: leave the queue, or hand on a slot
        # granted but not used. (No await here: this may run in a cancelled scope.)
        if current is None and not w.admission.leave(ticket) and w.admission.running is ticket:
            w.admission.release(ticket)


async def _generate(
    w: WorkerState, req: InferenceRequest, current: _Current
) -> AsyncIterator[bytes]:
    """Run the engine in a thread, yielding SSE frames as tokens arrive."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, object]] = asyncio.Queue()
    result = Generation()
    started = time.monotonic()

    def produce() -> None:
        try:
            for text in w.engine.generate(req, current.cancel, result):
                loop.call_soon_threadsafe(queue.put_nowait, ("token", text))
        except Exception as exc:  # reported to the client as an error event
            log.exception("generation failed")
            loop.call_soon_threadsafe(queue.put_nowait, ("error", exc))
        else:
            loop.call_soon_threadsafe(queue.put_nowait, ("end", None))

    thread = threading.Thread(target=produce, name=f"gen-{current.request_id}", daemon=True)
    thread.start()
    index = 0
    try:
        while True:
            kind, value = await queue.get()
            if kind == "token":
                yield sse.encode(TokenEvent(token=str(value), index=index))
                index += 1
            elif kind == "error":
                yield sse.encode(_error_event(value))
                return
            else:
                duration_ms = int((time.monotonic() - started) * 1000)
                yield sse.encode(
                    DoneEvent(
                        total_tokens=result.tokens,
                        duration_ms=duration_ms,
                        stop_reason=result.stop_reason,  # type: ignore[arg-type]
                        prompt_tokens=result.prompt_tokens,
                        rendered_as=result.rendered_as,
                    )
                )
                yield sse.encode(sse.DONE)
                return
    finally:
        # Also reached when the client goes away. Then this task sits in a cancelled
        # (anyio) scope where every await raises again, so nothing here awaits: the
        # slot is freed by a separate task once the engine thread has stopped.
        current.cancel.set()
        if thread.is_alive():
            w.cleanup = asyncio.get_running_loop().create_task(_release_after(w, current, thread))
        else:
            _release(w, current)


def _error_event(exc: object) -> ErrorEnvelope:
    """A generation error as an SSE error event; typed errors keep their code."""
    err = exc if isinstance(exc, RbeeError) else GenerationFailed(str(exc))
    return ErrorEnvelope.model_validate(err.envelope())


async def _release_after(w: WorkerState, current: _Current, thread: threading.Thread) -> None:
    await asyncio.to_thread(thread.join)
    _release(w, current)


def _has_template(engine: Engine) -> bool | None:
    """Whether the loaded model's metadata holds a chat template, by the catalog's rule,
    so a warm keeper needs not ask the hive; None when the engine cannot say."""
    chat = getattr(engine, "chat", None)
    if chat is None:
        return None
    return has_chat_template({"tokenizer.chat_template": chat.template})


async def _boot(app: FastAPI, w: WorkerState, loader: EarlyLoad | None) -> None:
    """After HTTP is up: call the hive back, load the model, report the outcome.

    The reports go from tasks, in order (worker/callback.py): a hive that is not
    up yet delays neither the load nor the first request."""
    s = w.settings
    loading = report(s, "loading")
    w.reports.append(loading)
    loop = asyncio.get_running_loop()

    def progress(value: float) -> bool:
        loop.call_soon_threadsafe(
            lambda: asyncio.ensure_future(w.set_progress("loading", min(max(value, 0.0), 1.0)))
        )
        return not w.stopping

    try:
        # The load and the warm-up (worker/preload.py), started before the imports or now.
        await asyncio.to_thread((loader or EarlyLoad(w.engine)).finish, progress)
    except Exception as exc:
        message = f"model failed to load: {exc}"
        log.error("%s (%s)", message, s.model_path)
        await w.set_progress("failed", w.progress, message)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(report(s, "failed", message, after=loading), FAILED_REPORT_S)
        # A worker that cannot load has nothing to offer: leave, so the hive reaps it.
        await asyncio.sleep(0.5)
        app.state.exit_code = 4
        app.state.request_exit()
        return
    w.idle_since = time.monotonic()
    await w.set_progress("idle", 1.0)
    log.info("model loaded: %s", s.model_path)
    w.reports.append(report(s, "idle", after=loading))
