"""Step 8 of `rbee infer`: stream the answer; handle the queue, crash, loss and Ctrl+C."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

from rbee_fabric.errors import (
    QueueTimeout,
    RbeeError,
    RequestCanceled,
    WorkerNotFound,
    from_envelope,
)
from rbee_fabric.keeper import hivectl
from rbee_fabric.keeper.client import Unreachable
from rbee_fabric.keeper.partial import crashed_error, lost_error
from rbee_fabric.keeper.registry import WorkerRecord
from rbee_fabric.keeper.request import Run, Summary, build_request
from rbee_fabric.schemas import DoneEvent, QueuedEvent


async def inference(run: Run, rec: WorkerRecord, *, reused: bool) -> Summary:
    """Step 8: wait in the worker's queue, stream tokens; handle crash, loss and Ctrl+C."""
    o = run.opts
    request_id = uuid.uuid4().hex
    req = build_request(o, request_id)
    worker = await hivectl.connect_worker(run.t, rec.url)
    pieces: list[str] = []
    first: float | None = None
    done: DoneEvent | None = None
    broken: str | None = None
    waiting_since: float | None = None
    queued_s = 0.0
    try:
        async with asyncio.timeout(None) as queue_wait:
            try:
                async with contextlib.aclosing(worker.stream("POST", "/v1/inference", req)) as events:
                    async for event in events:
                        if not isinstance(event, dict):
                            break  # [DONE]
                        if "token" in event:
                            if first is None:
                                first = time.monotonic()
                                queue_wait.reschedule(None)
                                if waiting_since is not None:  # the turn came
                                    queued_s = first - waiting_since
                            pieces.append(event["token"])
                            run.out.token(event["token"])
                        elif event.get("queued"):
                            queued = QueuedEvent.model_validate(event)
                            run.out.info(f"queued (position {queued.position})")
                            if waiting_since is None:
                                waiting_since = time.monotonic()
                                queue_wait.reschedule(asyncio.get_running_loop().time() + o.queue_timeout)
                        elif event.get("done"):
                            done = DoneEvent.model_validate(event)
                        elif "error" in event:
                            raise from_envelope(event, node=run.t.node.name)
            except Unreachable as exc:
                broken = exc.message
    except TimeoutError:
        await asyncio.shield(_cancel(run, rec, request_id))
        raise QueueTimeout(
            f"waited {o.queue_timeout:.0f} s in the queue of worker {rec.id} on "
            f"{run.t.node.name} without a turn",
            details={"request_id": request_id, "worker_id": rec.id},
        ) from None
    except asyncio.CancelledError:
        message = await asyncio.shield(_cancel(run, rec, request_id))
        raise RequestCanceled(
            message,
            details={"request_id": request_id, "tokens": len(pieces), "worker_id": rec.id},
        ) from None
    finally:
        await worker.aclose()
    if done is None:
        # The stream ended early: a lost connection if the worker still answers, else a crash.
        if await _alive(run, rec):
            await asyncio.shield(_cancel(run, rec, request_id))
            run.registry.touch(rec.id, "idle")
            raise lost_error(run.t.node.name, rec.id, o.max_tokens, request_id, pieces, broken)
        run.registry.remove(rec.id)
        raise crashed_error(run.t.node.name, rec.id, o.max_tokens, request_id, pieces, broken)
    run.registry.touch(rec.id, "idle")
    end = time.monotonic()
    return Summary(
        tokens=done.total_tokens,
        seconds=end - run.started,
        first_token_s=(first or end) - run.started,
        worker_id=rec.id,
        reused=reused,
        stop_reason=done.stop_reason,
        queued_s=queued_s,
        prompt_tokens=done.prompt_tokens,
        rendered_as=done.rendered_as,
    )


async def _alive(run: Run, rec: WorkerRecord) -> bool:
    """Does the worker still answer (over a fresh connection)?"""
    try:
        worker = await hivectl.connect_worker(run.t, rec.url)  # may reconnect over SSH
    except RbeeError:
        return False
    try:
        await worker.ready(timeout=3.0)
        return True
    except RbeeError:
        return False
    finally:
        await worker.aclose()


async def _cancel(run: Run, rec: WorkerRecord, request_id: str) -> str:
    """Ctrl+C: ask the worker to stop (5 s at most); say whether it did."""
    cancel = await hivectl.connect_worker(run.t, rec.url)
    try:
        ack = await cancel.cancel(request_id, timeout=5.0)
        return "Canceled." if ack.canceled else "Canceled; the worker may still be working."
    except WorkerNotFound:
        return "Canceled."  # it had already finished
    except RbeeError:
        return "Canceled; the worker did not acknowledge and may still be working."
    finally:
        await cancel.aclose()
