"""`rbee infer`: the 8 steps of SPEC section 5, independent of how they are shown."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

from rbee_fabric import contextfit, modelref, paths
from rbee_fabric.errors import (
    ConnectionLost,
    LoadingTimeout,
    QueueTimeout,
    RbeeError,
    RequestCanceled,
    WorkerCrashed,
    WorkerNotFound,
    WorkerStartFailed,
    error_class,
    from_envelope,
)
from rbee_fabric.keeper import hivectl
from rbee_fabric.keeper.client import HiveClient, Unreachable
from rbee_fabric.keeper.inventory import DEFAULT_MAX_QUEUE
from rbee_fabric.keeper.registry import Registry, WorkerRecord
from rbee_fabric.keeper.transport import Transport
from rbee_fabric.schemas import (
    ChatMessage,
    DoneEvent,
    DownloadProgress,
    InferenceRequest,
    LoadingProgress,
    ModelInfo,
    QueuedEvent,
    SpawnRequest,
    WorkerInfo,
)

FAIL_FAST_ERRORS = 10
RAW_MAX_TOKENS = 256  # a raw completion has no end of turn: cap it (a paragraph fits)


@dataclass
class InferOptions:
    model: str
    prompt: str = ""
    # None: a chat answer runs to the end of its turn, a raw one to RAW_MAX_TOKENS.
    max_tokens: int | None = None
    system: str | None = None
    raw: bool = False  # plain completion even when the model has a chat template
    chat_format: str | None = None  # render chat with this format (implies chat)
    # Set by the flow: the conversation sent to the worker (None: raw completion).
    messages: list[ChatMessage] | None = None
    temperature: float = 0.7
    top_p: float = 0.95
    seed: int | None = None
    backend: str = "auto"
    device: int = 0
    timeout: float = 300.0
    n_ctx: int = 2048
    start_hive: bool = True
    retry: int = 3
    queue_timeout: float = 600.0  # seconds a request may wait for its turn on the worker


@dataclass
class Summary:
    tokens: int
    seconds: float
    first_token_s: float
    worker_id: str
    reused: bool
    stop_reason: str = "stop"
    queued_s: float = 0.0  # time spent waiting in the worker's queue (not in seconds)
    prompt_tokens: int = 0
    rendered_as: str | None = None

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


class Reporter(Protocol):
    """What the flow tells the user; the CLI draws it, tests record it."""

    def info(self, msg: str) -> None: ...

    def attempt(self, n: int, total: int, address: str, error: str) -> None: ...

    def download(self, p: DownloadProgress) -> None: ...

    def loading(self, p: LoadingProgress) -> None: ...

    def token(self, text: str) -> None: ...


@dataclass
class _Run:
    t: Transport
    opts: InferOptions
    out: Reporter
    registry: Registry
    ref: str
    started: float = field(default_factory=time.monotonic)


@dataclass
class Acquired:
    """A ready worker for the flow's model, and whether the model has a chat template."""

    run: _Run
    rec: WorkerRecord
    reused: bool
    chat_template: bool


async def infer(t: Transport, opts: InferOptions, out: Reporter, registry: Registry) -> Summary:
    """Run the whole flow on one node; raises RbeeError subclasses on failure."""
    got = await acquire(t, opts, out, registry)
    if use_chat(opts, got.chat_template):
        opts.messages = [ChatMessage(role="user", content=opts.prompt)]
        if opts.system:
            opts.messages.insert(0, ChatMessage(role="system", content=opts.system))
        out.info(
            f"answering through the chat format {opts.chat_format}" if opts.chat_format
            else "answering through the model's chat template (--raw for plain completion)"
        )
    else:
        opts.messages = None
        out.info(
            "raw completion (--raw): the model continues the prompt" if opts.raw
            else "this model has no chat template: raw completion, the model continues the prompt"
            + (" (--system is not used; --chat-format NAME renders a chat)" if opts.system else "")
        )
    return await _inference(got.run, got.rec, reused=got.reused)


def use_chat(opts: InferOptions, chat_template: bool) -> bool:
    """Chat when a format is named, else when the model has a template and --raw is off."""
    if opts.chat_format:
        return True
    return chat_template and not opts.raw


def build_request(o: InferOptions, request_id: str) -> InferenceRequest:
    """The worker request: the conversation when there is one, else the raw prompt."""
    common: dict[str, Any] = {
        "temperature": o.temperature, "top_p": o.top_p, "seed": o.seed, "request_id": request_id,
    }  # fmt: skip
    if o.messages is not None:
        return InferenceRequest.model_validate(
            {"messages": o.messages, "chat_format": o.chat_format, "max_tokens": o.max_tokens}
            | common
        )
    return InferenceRequest.model_validate(
        {"prompt": o.prompt, "max_tokens": o.max_tokens or RAW_MAX_TOKENS} | common
    )


async def acquire(t: Transport, opts: InferOptions, out: Reporter, registry: Registry) -> Acquired:
    """Steps 1 to 7: a ready worker for the model on the node (reused or started)."""
    ref = modelref.parse(opts.model).canonical  # bad references fail before any I/O
    return await _acquire(_Run(t, opts, out, registry, ref))


async def ready_worker(
    t: Transport, opts: InferOptions, out: Reporter, registry: Registry
) -> tuple[WorkerRecord, bool]:
    """Steps 1 to 7 for the gateway: a ready worker on t's node; (record, reused)."""
    got = await acquire(t, opts, out, registry)
    return got.rec, got.reused


async def _acquire(run: _Run) -> Acquired:
    t, opts, out, registry, ref = run.t, run.opts, run.out, run.registry, run.ref
    # Step 1: registry hit -> straight to inference.
    if (hit := await _registry_hit(run)) is not None:
        return Acquired(run, hit, True, await _has_template(run))
    # Step 2: hive preflight (start it if needed).
    hive = await hivectl.connect_hive(t)
    try:
        await hivectl.ensure_hive(t, hive, out, start=opts.start_hive, attempts=opts.retry)
        # Step 3: the model in the node's catalog.
        model = await _provision(run, hive)
        # A prompt that cannot fit is refused before anything loads.
        await _check_context(run, hive, model)
        # Steps 4 and 5: the hive's preflight, then a worker (an existing one, or spawned).
        info = await hive.spawn(
            SpawnRequest.model_validate(
                {"model_id": model.id, "backend": opts.backend, "device": opts.device,
                 "n_ctx": opts.n_ctx, "safe_mode": t.node.safe_mode, **_node_settings(t)}
            )
        )  # fmt: skip
        if info.spawned:
            out.info(f"starting a worker for {model.reference} on {t.node.name}")
        else:
            out.info(f"using worker {info.id} ({info.state}) for {model.reference}")
        # Step 6: register.
        rec = WorkerRecord(
            id=info.id, node=t.node.name, model_ref=ref, backend=info.backend,
            device=info.device, url=info.url, pid=info.pid, state=info.state,
            last_health_at=time.time(), created_at=time.time(), n_ctx=opts.n_ctx,
        )  # fmt: skip
        registry.add(rec)
        # Step 7: follow loading to ready (a worker another request started, too).
        if info.state not in ("idle", "busy"):
            try:
                await _wait_ready(run, hive, info)
            except BaseException:
                registry.remove(info.id)
                if info.spawned:  # others may be waiting for a worker they did not start
                    with contextlib.suppress(RbeeError):
                        await asyncio.shield(hive.shutdown_worker(info.id))
                raise
            spawned = info.spawned
            info = await hive.worker(info.id)  # a safe-mode restart changed its pid
            info = info.model_copy(update={"spawned": spawned})
            registry.add(dataclasses.replace(rec, pid=info.pid, state="idle", last_health_at=time.time()))
        if info.safe_mode and info.spawned:
            out.info(f"{t.node.name} runs llama.cpp in safe mode (AMX/repacking off): "
                     f"{info.safe_mode_reason}; decode may be slower")  # fmt: skip
    finally:
        await hive.aclose()
    return Acquired(run, rec, not info.spawned, model.chat_template)


def _node_settings(t: Transport) -> dict[str, int]:
    """The node's queue settings for the hive; defaults are left out (the hive has them)."""
    out = {}
    if t.node.max_queue != DEFAULT_MAX_QUEUE:
        out["max_queue"] = t.node.max_queue
    if t.node.max_replicas != 1:
        out["max_replicas"] = t.node.max_replicas
    return out


async def _check_context(run: _Run, hive: HiveClient, model: ModelInfo) -> None:
    """CONTEXT_TOO_LONG before loading; the node counts tokens only for a long prompt."""
    if not run.opts.prompt:
        return  # `rbee serve` gets a worker ready first; the worker checks each request
    limit = model.context_length
    n_ctx = min(run.opts.n_ctx, limit or run.opts.n_ctx)
    req = build_request(run.opts, "context-check")
    if contextfit.surely_fits(req, n_ctx):
        return  # the common case costs nothing
    count = await hive.count_tokens(model.id, contextfit.text_of(req))
    contextfit.check(req, count.tokens, n_ctx, limit=limit)


async def _has_template(run: _Run) -> bool:
    """Whether the node's catalog says the model has a chat template (reused worker)."""
    if run.opts.raw or run.opts.chat_format:
        return False  # decided by the options; no need to ask
    hive = await hivectl.connect_hive(run.t)
    try:
        models = (await hive.models()).models
    except RbeeError:
        return False
    finally:
        await hive.aclose()
    return any(m.reference == run.ref and m.chat_template for m in models)


async def _registry_hit(run: _Run) -> WorkerRecord | None:
    """The worker this keeper knows for the configuration, if it still answers.

    With max_replicas > 1 there is no shortcut: the hive picks the least-loaded
    replica (or starts one), so every request asks it.
    """
    o = run.opts
    if run.t.node.max_replicas > 1:
        return None
    for rec in run.registry.candidates(run.t.node.name, run.ref, o.backend, o.device, o.n_ctx):
        worker = await hivectl.connect_worker(run.t, rec.url)
        try:
            ready = await worker.ready(timeout=2.0)
        except RbeeError:
            run.registry.remove(rec.id)  # gone or not ours any more
            continue
        finally:
            await worker.aclose()
        if ready.ready:
            run.registry.touch(rec.id, ready.state)
            return rec
    return None


async def _provision(run: _Run, hive: HiveClient) -> ModelInfo:
    started = await hive.ensure_model(run.opts.model)
    if started.model is not None:
        return started.model
    assert started.download_id is not None
    async with contextlib.aclosing(hive.download_progress(started.download_id)) as events:
        async for p in events:
            run.out.download(p)
            if p.stage == "failed" and p.error is not None:
                raise from_envelope({"error": p.error.model_dump()})
            if p.stage == "done" and p.model is not None:
                return p.model
    raise error_class("DOWNLOAD_FAILED")(
        f"the download of {run.opts.model} ended without a result",
        hint=f"see the hive log: rbee hive logs {run.t.node.name}",
    )


async def _wait_ready(run: _Run, hive: HiveClient, info: WorkerInfo) -> None:
    """Follow the worker's loading progress; fail fast when it is gone."""
    worker = await hivectl.connect_worker(run.t, info.url)
    last: LoadingProgress | None = None
    errors = 0
    deadline = run.started + run.opts.timeout

    async def follow() -> None:
        nonlocal last, errors
        while True:
            try:
                async with contextlib.aclosing(worker.loading_progress()) as events:
                    async for p in events:
                        errors = 0
                        last = p
                        run.out.loading(p)
                        if p.stage == "ready":
                            return
                        if p.stage == "failed":
                            raise await _start_failure(run, hive, info, p.error)
            except Unreachable:
                errors += 1
                # Not bound yet, or dead: the hive knows which.
                try:
                    await hive.worker(info.id)
                except WorkerNotFound:
                    raise await _start_failure(run, hive, info, None) from None
                if errors >= FAIL_FAST_ERRORS * 10:
                    raise WorkerStartFailed(
                        f"worker {info.id} at {info.url} never became reachable",
                        hint=f"the worker may have failed to start; see rbee hive logs "
                        f"{run.t.node.name}",
                    ) from None
                await asyncio.sleep(0.1)

    try:
        await asyncio.wait_for(follow(), timeout=max(0.1, deadline - time.monotonic()))
    except TimeoutError:
        seen = f"{last.progress:.0%} loaded" if last else "no progress reported"
        raise LoadingTimeout(
            f"worker {info.id} was not ready within {run.opts.timeout:.0f} s ({seen})",
            hint="raise --timeout for large models, or check the node's disk and memory",
            details={"worker_id": info.id, "last_progress": last.progress if last else None},
        ) from None
    finally:
        await worker.aclose()


async def _start_failure(
    run: _Run, hive: HiveClient, info: WorkerInfo, error: str | None
) -> WorkerStartFailed:
    """Describe a worker that could not start, with the last lines of its log."""
    lines: list[str] = []
    exited: dict[str, object] = {}
    for _ in range(20):  # the worker may still be on its way out
        try:
            await hive.worker(info.id)
        except WorkerNotFound as exc:
            exited = dict(exc.details.get("exited", {}))
            lines = list(exited.get("log_tail", []))  # type: ignore[call-overload]
            break
        await asyncio.sleep(0.1)
    log = "\n".join(f"  {line}" for line in lines[-10:])
    if (crash := _engine_crash(run, info, exited, lines)) is not None:
        return crash
    return WorkerStartFailed(
        f"the worker for {info.model_reference} could not start: {error or 'it exited'}",
        hint="check the model file and the node's resources; worker log:\n" + log
        if log
        else f"see rbee hive logs {run.t.node.name}",
        details={"worker_id": info.id, "log_tail": lines},
    )


def _engine_crash(
    run: _Run, info: WorkerInfo, exited: dict[str, object], lines: list[str]
) -> WorkerStartFailed | None:
    """A worker killed by its own engine (SIGSEGV, SIGILL, SIGBUS): retrying will not help."""
    sig = exited.get("signal")
    if sig not in ("SIGSEGV", "SIGILL", "SIGBUS"):
        return None
    node = run.t.node.name
    log = "\n".join(f"  {line}" for line in lines[-16:])  # room for the crash's stack
    if exited.get("safe_mode"):
        what = f"it crashed with {sig} while loading, in safe mode too (AMX/repacking off)"
        hint = (f"llama.cpp itself crashes on {node} with this model; the same command will "
                f"crash the same way. Report it with the log below; meanwhile try another "
                f"backend (--backend), another quantization, or another llama-cpp-python "
                f"build on the node (rbee nodes install {node} --upgrade)")  # fmt: skip
    else:
        what = f"it crashed with {sig} while loading"
        hint = (f'safe mode is off for {node} (safe_mode = "off" in the inventory); set it to '
                f'"auto" or "on" to run llama.cpp without AMX/repacking there')  # fmt: skip
    return WorkerStartFailed(
        f"the worker for {info.model_reference} could not start: {what}",
        hint=hint + (f"; worker log:\n{log}" if log else f"; see rbee hive logs {node}"),
        details={
            "worker_id": info.id, "signal": sig, "safe_mode": bool(exited.get("safe_mode")),
            "log_tail": exited.get("log_tail", []),
        },
    )


async def _inference(run: _Run, rec: WorkerRecord, *, reused: bool) -> Summary:
    """Step 8: wait in the worker's queue, stream tokens; handle crash, loss and Ctrl+C."""
    o = run.opts
    request_id = uuid.uuid4().hex
    req = build_request(o, request_id)
    worker = await hivectl.connect_worker(run.t, rec.url)
    pieces: list[str] = []
    t0 = time.monotonic()
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
                                if waiting_since is not None:  # the turn came: clock restarts
                                    queued_s = first - waiting_since
                                    t0 = first
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
                            raise from_envelope(event)
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
            raise _lost(run, rec, request_id, pieces, broken)
        run.registry.remove(rec.id)
        if not pieces and broken is not None:
            raise WorkerCrashed(
                f"worker {rec.id} is unreachable: {broken}",
                hint="run the command again to start a fresh worker",
            )
        raise _crashed(run, rec, request_id, pieces)
    run.registry.touch(rec.id, "idle")
    end = time.monotonic()
    return Summary(
        tokens=done.total_tokens,
        seconds=end - t0,
        first_token_s=(first or end) - run.started,
        worker_id=rec.id,
        reused=reused,
        stop_reason=done.stop_reason,
        queued_s=queued_s,
        prompt_tokens=done.prompt_tokens,
        rendered_as=done.rendered_as,
    )


async def _alive(run: _Run, rec: WorkerRecord) -> bool:
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


def _save_partial(request_id: str, pieces: list[str]) -> tuple[str, str]:
    crash_dir = paths.ensure_dir(paths.data_dir() / "partial")
    path = crash_dir / f"{request_id}.txt"
    text = "".join(pieces)
    path.write_text(text, encoding="utf-8")
    return str(path), text


def _lost(
    run: _Run, rec: WorkerRecord, request_id: str, pieces: list[str], reason: str | None
) -> ConnectionLost:
    """The worker is fine, the way to it broke: keep the output and the worker."""
    path, text = _save_partial(request_id, pieces)
    return ConnectionLost(
        f"the connection to worker {rec.id} on {run.t.node.name} was lost mid-generation "
        f"(tokens received {len(pieces)} / {run.opts.max_tokens}): {reason or 'stream ended'}",
        hint=f"the partial output is saved in {path}; the worker is still up and the "
        "generation was stopped; run the command again to reuse it",
        details={"saved_to": path, "tokens": len(pieces), "partial_text": text,
                 "worker_id": rec.id},
    )  # fmt: skip


def _crashed(run: _Run, rec: WorkerRecord, request_id: str, pieces: list[str]) -> WorkerCrashed:
    """Keep what was generated: save it and say where."""
    path, text = _save_partial(request_id, pieces)
    return WorkerCrashed(
        f"worker {rec.id} on {run.t.node.name} stopped mid-generation "
        f"(tokens generated {len(pieces)} / {run.opts.max_tokens or 'end of turn'})",
        hint=f"the partial output is saved in {path}; run the command again "
        "to start a fresh worker",
        details={"saved_to": path, "tokens": len(pieces), "partial_text": text},
    )


async def _cancel(run: _Run, rec: WorkerRecord, request_id: str) -> str:
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
