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

import httpx
from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from rbee_fabric import sse
from rbee_fabric.errors import AllSlotsBusy, RbeeError, WorkerNotFound
from rbee_fabric.httpserver import install_api_key, install_error_handlers
from rbee_fabric.schemas import (
    Ack,
    CancelAck,
    DoneEvent,
    ErrorEnvelope,
    InferenceRequest,
    LoadingProgress,
    TokenEvent,
    WorkerReady,
    WorkerReadyCallback,
)
from rbee_fabric.worker.engine import Engine, Generation

log = logging.getLogger("rbee.worker")


class WorkerNotReady(RbeeError):
    code = "WORKER_NOT_READY"
    http_status = 503
    default_hint = "the model is still loading; follow /v1/loading/progress"


@dataclass
class WorkerSettings:
    worker_id: str
    model_path: str
    url: str
    api_key: str
    hive_url: str | None = None
    key_file: str = "~/.config/rbee/api_key"


@dataclass
class _Current:
    request_id: str
    cancel: threading.Event = field(default_factory=threading.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)


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
        self.idle_since = time.monotonic()
        self.stopping = False
        self.cleanup: asyncio.Task[None] | None = None

    async def set_progress(self, stage: str, progress: float, error: str | None = None) -> None:
        async with self.changed:
            self.state = stage
            self.progress = progress
            self.error = error
            self.changed.notify_all()

    def progress_event(self) -> LoadingProgress:
        stage = {"loading": "loading", "failed": "failed"}.get(self.state, "ready")
        return LoadingProgress(stage=stage, progress=self.progress, error=self.error)  # type: ignore[arg-type]


def create_app(settings: WorkerSettings, engine: Engine) -> FastAPI:
    """The worker app; the model loads in the background once HTTP is up."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = WorkerState(settings, engine)
        app.state.worker = state
        boot = asyncio.create_task(_boot(app, state))
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

    @app.get("/v1/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/ready", response_model=WorkerReady)
    async def ready() -> WorkerReady:
        w: WorkerState = app.state.worker
        idle = time.monotonic() - w.idle_since if w.state == "idle" else None
        return WorkerReady(
            ready=w.state in ("idle", "busy"),
            state=w.state,  # type: ignore[arg-type]
            progress_url="/v1/loading/progress",
            model=settings.model_path,
            idle_seconds=idle,
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
        if w.state == "busy":
            raise AllSlotsBusy(
                "the worker is already generating",
                details={"request_id": w.current.request_id if w.current else None},
            )
        if w.state != "idle" or w.stopping:
            raise WorkerNotReady(f"the worker is {w.state}", details={"state": w.state})
        # No await between the check above and this line: the slot is ours.
        current = _Current(request_id=req.request_id or uuid.uuid4().hex)
        w.current, w.state = current, "busy"
        stream = _generate(w, req, current)
        try:
            first = await stream.__anext__()  # setup errors still get a real status
        except BaseException:
            _release(w, current)
            raise
        return StreamingResponse(
            _stream(first, stream), media_type="text/event-stream",
            headers={"X-Request-Id": current.request_id},
        )

    @app.delete("/v1/inference/{request_id}", response_model=CancelAck)
    async def cancel(request_id: str) -> CancelAck:
        w: WorkerState = app.state.worker
        current = w.current
        if current is None or current.request_id != request_id:
            raise WorkerNotFound(
                f"no generation {request_id!r} is running here",
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


def _release(w: WorkerState, current: _Current) -> None:
    current.finished.set()
    if w.current is current:
        w.current = None
        w.state = "idle"
        w.idle_since = time.monotonic()


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
                body = {"code": "GENERATION_FAILED", "message": str(value), "details": {}}
                yield sse.encode(ErrorEnvelope.model_validate({"error": body}))
                return
            else:
                duration_ms = int((time.monotonic() - started) * 1000)
                yield sse.encode(
                    DoneEvent(
                        total_tokens=result.tokens,
                        duration_ms=duration_ms,
                        stop_reason=result.stop_reason,  # type: ignore[arg-type]
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


async def _release_after(w: WorkerState, current: _Current, thread: threading.Thread) -> None:
    await asyncio.to_thread(thread.join)
    _release(w, current)


async def _boot(app: FastAPI, w: WorkerState) -> None:
    """After HTTP is up: call the hive back, load the model, report the outcome."""
    s = w.settings
    await _callback(s, "loading")
    loop = asyncio.get_running_loop()

    def progress(value: float) -> bool:
        loop.call_soon_threadsafe(
            lambda: asyncio.ensure_future(w.set_progress("loading", min(max(value, 0.0), 1.0)))
        )
        return not w.stopping

    try:
        await asyncio.to_thread(w.engine.load, progress)
        # Prove the engine before reporting ready: a crash of its kernels (AMX on
        # some CPUs) then happens while loading, where the hive can react.
        t0 = time.monotonic()
        await asyncio.to_thread(w.engine.warm_up)
        log.info("warm-up done in %.0f ms", (time.monotonic() - t0) * 1000)
    except Exception as exc:
        message = f"model failed to load: {exc}"
        log.error("%s (%s)", message, s.model_path)
        await w.set_progress("failed", w.progress, message)
        await _callback(s, "failed", message)
        # A worker that cannot load has nothing to offer: leave, so the hive reaps it.
        await asyncio.sleep(0.5)
        app.state.exit_code = 4
        app.state.request_exit()
        return
    w.idle_since = time.monotonic()
    await w.set_progress("idle", 1.0)
    log.info("model loaded: %s", s.model_path)
    await _callback(s, "idle")


async def _callback(s: WorkerSettings, state: str, error: str | None = None) -> None:
    if not s.hive_url:
        return
    body = WorkerReadyCallback(worker_id=s.worker_id, url=s.url, state=state, error=error)  # type: ignore[arg-type]
    headers = {"Authorization": f"Bearer {s.api_key}"}
    for attempt in range(3):
        try:
            async with httpx.AsyncClient(timeout=5.0) as client:
                r = await client.post(
                    f"{s.hive_url}/v1/workers/ready", json=body.model_dump(), headers=headers
                )
            if r.status_code < 500:
                return
        except httpx.HTTPError as exc:
            log.warning("hive callback failed (attempt %d): %s", attempt + 1, exc)
        await asyncio.sleep(0.2 * 2**attempt)
