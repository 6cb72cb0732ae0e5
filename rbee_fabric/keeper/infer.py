"""`rbee infer`: the 8 steps of SPEC section 5, independent of how they are shown."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time

from rbee_fabric import contextfit, modelref
from rbee_fabric.errors import (
    LoadingTimeout,
    RbeeError,
    WorkerNotFound,
    WorkerStartFailed,
    error_class,
    from_envelope,
)
from rbee_fabric.keeper import hivectl
from rbee_fabric.keeper.client import HiveClient, Unreachable
from rbee_fabric.keeper.generate import inference as _inference
from rbee_fabric.keeper.inventory import DEFAULT_MAX_QUEUE
from rbee_fabric.keeper.preloadhint import preload_hint
from rbee_fabric.keeper.registry import Registry, WorkerRecord
from rbee_fabric.keeper.request import (
    RAW_MAX_TOKENS,
    Acquired,
    InferOptions,
    Reporter,
    Run,
    Summary,
    build_request,
    use_chat,
)
from rbee_fabric.keeper.transport import Transport
from rbee_fabric.schemas import (
    ChatMessage,
    LoadingProgress,
    ModelInfo,
    SpawnRequest,
    WorkerInfo,
)

__all__ = [
    "RAW_MAX_TOKENS", "Acquired", "InferOptions", "Reporter", "Summary", "_inference",
    "acquire", "build_request", "infer", "ready_worker", "use_chat",
]  # fmt: skip

FAIL_FAST_ERRORS = 10


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


async def acquire(t: Transport, opts: InferOptions, out: Reporter, registry: Registry) -> Acquired:
    """Steps 1 to 7: a ready worker for the model on the node (reused or started)."""
    ref = modelref.parse(opts.model).canonical  # bad references fail before any I/O
    return await _acquire(Run(t, opts, out, registry, ref))


async def ready_worker(
    t: Transport, opts: InferOptions, out: Reporter, registry: Registry
) -> tuple[WorkerRecord, bool]:
    """Steps 1 to 7 for the gateway: a ready worker on t's node; (record, reused)."""
    got = await acquire(t, opts, out, registry)
    return got.rec, got.reused


async def _acquire(run: Run) -> Acquired:
    t, opts, out, registry, ref = run.t, run.opts, run.out, run.registry, run.ref
    # Step 1: registry hit -> straight to inference.
    if (hit := await _registry_hit(run)) is not None:
        return Acquired(run, hit, True, await _has_template(run))
    # Step 2: hive preflight (start it if needed).
    hive = await hivectl.connect_hive(t)
    try:
        preload = preload_hint(ref, opts.n_ctx, opts.backend, opts.device, t.node.safe_mode,
                               t.node.max_queue)  # fmt: skip
        await hivectl.ensure_hive(
            t, hive, out, start=opts.start_hive, attempts=opts.retry, preload=preload
        )
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


async def _check_context(run: Run, hive: HiveClient, model: ModelInfo) -> None:
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


async def _has_template(run: Run) -> bool:
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


async def _registry_hit(run: Run) -> WorkerRecord | None:
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


async def _provision(run: Run, hive: HiveClient) -> ModelInfo:
    started = await hive.ensure_model(run.opts.model)
    if started.model is not None:
        return started.model
    assert started.download_id is not None
    async with contextlib.aclosing(hive.download_progress(started.download_id)) as events:
        async for p in events:
            run.out.download(p)
            if p.stage == "failed" and p.error is not None:
                raise from_envelope({"error": p.error.model_dump()}, node=run.t.node.name)
            if p.stage == "done" and p.model is not None:
                return p.model
    raise error_class("DOWNLOAD_FAILED")(
        f"the download of {run.opts.model} ended without a result",
        hint=f"see the hive log: rbee hive logs {run.t.node.name}",
    )


async def _wait_ready(run: Run, hive: HiveClient, info: WorkerInfo) -> None:
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
    run: Run, hive: HiveClient, info: WorkerInfo, error: str | None
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
    run: Run, info: WorkerInfo, exited: dict[str, object], lines: list[str]
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
