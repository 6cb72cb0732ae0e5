"""Send one generation to a worker: route, get a worker ready, stream, cancel.

`Dispatcher.open` walks the routing plans until a worker accepts the request
and has produced its first event, so every failure before the first token
(unknown model, context too long, full queue, node gone) reaches the client
as a real HTTP status. The returned `Upstream` then yields the worker's
events; leaving it early (the client went away) cancels the generation on
the worker with `DELETE /v1/inference/{id}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

from rbee_fabric.errors import (
    AllSlotsBusy,
    ContextTooLong,
    InvalidApiKey,
    ModelNotFound,
    NodesUnavailable,
    QueueFull,
    RbeeError,
    UsageError,
    WorkerNotFound,
    from_envelope,
)
from rbee_fabric.gateway import routing
from rbee_fabric.gateway.pool import NodeHandle, NodePool, is_unreachable
from rbee_fabric.keeper import infer
from rbee_fabric.keeper.registry import Registry
from rbee_fabric.schemas import DoneEvent, DownloadProgress, InferenceRequest, LoadingProgress
from rbee_fabric.sse import DONE

log = logging.getLogger("rbee.serve")

BUSY_WAIT_S = 300.0  # how long a request waits for a busy worker that has no queue


@dataclass
class SpawnOptions:
    n_ctx: int = 2048
    load_timeout: float = 300.0


class _LogReporter:
    """What the keeper's flow reports while it gets a worker ready, as log lines."""

    def __init__(self, node: str) -> None:
        self.node = node
        self._stage = ""

    def info(self, msg: str) -> None:
        log.info("%s", msg)

    def attempt(self, n: int, total: int, address: str, error: str) -> None:
        log.info("%s: attempt %d/%d to reach %s failed: %s", self.node, n, total, address, error)

    def download(self, p: DownloadProgress) -> None:
        if p.stage != self._stage:
            self._stage = p.stage
            log.info("%s: model download %s %s", self.node, p.stage, p.filename or "")

    def loading(self, p: LoadingProgress) -> None:
        if p.stage != "loading":
            log.info("%s: worker %s", self.node, p.stage)

    def token(self, text: str) -> None:
        return None


@dataclass
class Upstream:
    """One generation under way on a worker, its first event already in hand."""

    pool: NodePool
    handle: NodeHandle
    worker_id: str
    worker_url: str
    request_id: str
    received: float
    first: dict[str, Any]
    rest: AsyncGenerator[dict[str, Any] | str, None]
    release: contextlib.ExitStack
    queued_position: int | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None
    tokens: int = 0
    done: DoneEvent | None = None
    text: list[str] = field(default_factory=list)

    @property
    def node(self) -> str:
        return self.handle.name

    def __post_init__(self) -> None:
        # The worker's stream is read by a task of its own, not by the response
        # being sent: when the client goes away, that response sits in a cancelled
        # scope where the stream could not even be closed; a plain task can be
        # cancelled and closes its connection, which the worker sees at once.
        self._inbox: asyncio.Queue[dict[str, Any] | str | BaseException] = asyncio.Queue()
        self._pump = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            async for event in self.rest:
                self._inbox.put_nowait(event)
                if not isinstance(event, dict):
                    return
            self._inbox.put_nowait(DONE)
        except Exception as exc:  # the typed error reaches the reader
            self._inbox.put_nowait(exc)
        finally:
            await self.rest.aclose()

    async def events(self) -> AsyncGenerator[dict[str, Any], None]:
        """Token and done events; an error event raises its typed error."""
        try:
            if self._take(self.first):
                yield self.first
            while True:
                event = await self._inbox.get()
                if isinstance(event, BaseException):
                    raise event
                if not isinstance(event, dict):
                    break  # [DONE]
                if self._take(event):
                    yield event
        finally:
            self._finish()

    def _take(self, event: dict[str, Any]) -> bool:
        if "token" in event:
            now = time.monotonic()
            self.first_token_at = self.first_token_at or now
            self.last_token_at = now
            self.tokens += 1
            return True
        if event.get("done"):
            self.done = DoneEvent.model_validate(event)
            return True
        if "error" in event:
            raise from_envelope(event)
        return False  # queued events after the first: nothing to tell an OpenAI client

    def _finish(self) -> None:
        # Possibly inside a cancelled scope (the client went away): no await
        # here; closing the upstream stream and the cancel run as a task.
        self.release.close()
        self.handle.freed.set()
        self.pool.spawn_background(self._close(canceled=self.done is None))

    async def _close(self, *, canceled: bool) -> None:
        if not self._pump.done():
            self._pump.cancel()  # closes the connection: the worker stops generating
        with contextlib.suppress(BaseException):
            await self._pump
        if not canceled:
            return
        try:  # and say so explicitly, in case the closed connection went unnoticed
            client = await self.handle.worker(self.worker_url)
            ack = await client.cancel(self.request_id, timeout=8.0)
            log.info("canceled %s on %s: %s", self.request_id, self.node, ack.canceled)
        except WorkerNotFound:
            pass  # it had finished, or stopped when the connection closed
        except RbeeError as exc:
            log.warning("could not cancel %s on %s: %s", self.request_id, self.node, exc)

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.received

    @property
    def decode_tokens_per_second(self) -> float | None:
        if self.first_token_at is None or self.last_token_at is None or self.tokens < 2:
            return None
        span = self.last_token_at - self.first_token_at
        return (self.tokens - 1) / span if span > 0 else None


class Dispatcher:
    def __init__(self, pool: NodePool, registry: Registry, spawn: SpawnOptions) -> None:
        self.pool = pool
        self.registry = registry
        self.spawn = spawn

    async def open(self, target: routing.Target, req: InferenceRequest, received: float) -> Upstream:
        """A worker streaming req, chosen by the routing rules; raises the reason when none can."""
        req = req.model_copy(update={"request_id": req.request_id or uuid.uuid4().hex})
        names = [target.node] if target.node else list(self.pool.nodes)
        deadline = time.monotonic() + BUSY_WAIT_S
        while True:
            await self.pool.fresh(names)
            plans = routing.plans(target, [self.pool.nodes[n].view(target.reference) for n in names])
            failures: dict[str, str] = {}
            busy: list[NodeHandle] = []
            full: QueueFull | None = None
            last: RbeeError | None = None
            for plan in plans:
                if busy and plan.tier == 4:
                    break  # a loaded worker will free up: no new node for this model
                h = self.pool.nodes[plan.node]
                try:
                    if plan.worker is None:
                        wid, url = await self._ready_worker(h, target.reference)
                    else:
                        wid, url = plan.worker.id, plan.worker.url
                    return await self._start(h, wid, url, req, received)
                except AllSlotsBusy:
                    busy.append(h)  # a worker without a queue: wait for it below
                except QueueFull as exc:
                    full = full or exc
                except (ContextTooLong, UsageError, InvalidApiKey):
                    raise
                except RbeeError as exc:
                    last = exc
                    failures[h.name] = exc.message
                    if is_unreachable(exc):
                        if plan.worker is not None:
                            h.forget_worker(plan.worker.id)
                        # The worker or the whole node: the probe tells which.
                        await self.pool.probe(h)
            if busy and time.monotonic() < deadline:
                await _first_freed(busy, timeout=0.5)
                continue
            if full is not None:
                raise full
            if busy:
                raise AllSlotsBusy(
                    f"every worker for {target.label} stayed busy for {BUSY_WAIT_S:.0f} s",
                    details={"retry_after_s": 5},
                )
            if last is None:
                raise NodesUnavailable(f"no node can serve {target.label}")
            if is_unreachable(last) and not isinstance(last, ModelNotFound):
                raise NodesUnavailable(
                    f"no node that could serve {target.label} answers",
                    details={"nodes": failures, "retry_after_s": 5},
                )
            raise last

    async def _ready_worker(self, h: NodeHandle, reference: str) -> tuple[str, str]:
        """Start (or find) a worker for reference on h: one start per node and model."""
        lock = h.spawn_locks.setdefault(reference, asyncio.Lock())
        async with lock:
            for w in h.workers:  # started meanwhile by a request that held the lock
                if w.model_reference == reference and w.state not in ("failed", "stopping"):
                    return w.id, w.url
            opts = infer.InferOptions(
                model=reference, prompt="", n_ctx=self.spawn.n_ctx, timeout=self.spawn.load_timeout
            )
            rec, _reused = await infer.ready_worker(h.t, opts, _LogReporter(h.name), self.registry)
            await self.pool.probe(h)  # its hive now runs and lists the worker
            return rec.id, rec.url

    async def _start(
        self, h: NodeHandle, wid: str, url: str, req: InferenceRequest, received: float
    ) -> Upstream:
        client = await h.worker(url)
        release = contextlib.ExitStack()
        release.enter_context(h.counting(wid))
        stream = client.stream("POST", "/v1/inference", req)
        position: int | None = None
        try:
            while True:
                event = await stream.__anext__()
                if not isinstance(event, dict):
                    raise from_envelope(
                        {"error": {"code": "WORKER_CRASHED", "message": "the worker ended the stream at once"}}
                    )
                if event.get("queued"):
                    position = int(event.get("position", 0))
                    continue
                if "error" in event:
                    raise from_envelope(event)
                break
        except BaseException:
            release.close()
            h.freed.set()
            with contextlib.suppress(BaseException):
                await stream.aclose()
            raise
        assert req.request_id is not None
        return Upstream(
            pool=self.pool, handle=h, worker_id=wid, worker_url=url, request_id=req.request_id,
            received=received, first=event, rest=stream, release=release, queued_position=position,
        )  # fmt: skip


async def _first_freed(handles: list[NodeHandle], timeout: float) -> None:
    """Wait until one of these nodes finishes a request of ours (or timeout)."""
    for h in handles:
        h.freed.clear()
    waits = [asyncio.ensure_future(h.freed.wait()) for h in handles]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
