"""`rbee infer`: the 8 steps of SPEC section 5, independent of how they are shown."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from dataclasses import dataclass, field
from typing import Protocol

from rbee_fabric import modelref, paths
from rbee_fabric.errors import (
    AllSlotsBusy,
    LoadingTimeout,
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
from rbee_fabric.keeper.registry import Registry, WorkerRecord
from rbee_fabric.keeper.transport import Transport
from rbee_fabric.schemas import (
    DoneEvent,
    DownloadProgress,
    InferenceRequest,
    LoadingProgress,
    ModelInfo,
    SpawnRequest,
    WorkerInfo,
)

BUSY_RETRIES_S = (1.0, 2.0, 4.0)
FAIL_FAST_ERRORS = 10


@dataclass
class InferOptions:
    model: str
    prompt: str
    max_tokens: int = 20
    temperature: float = 0.7
    top_p: float = 0.95
    seed: int | None = None
    backend: str = "auto"
    device: int = 0
    timeout: float = 300.0
    n_ctx: int = 2048
    start_hive: bool = True
    retry: int = 3


@dataclass
class Summary:
    tokens: int
    seconds: float
    first_token_s: float
    worker_id: str
    reused: bool
    stop_reason: str = "stop"

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


async def infer(t: Transport, opts: InferOptions, out: Reporter, registry: Registry) -> Summary:
    """Run the whole flow on one node; raises RbeeError subclasses on failure."""
    ref = modelref.parse(opts.model).canonical  # bad references fail before any I/O
    run = _Run(t, opts, out, registry, ref)
    rec, reused = await _ready_worker(run)
    # Step 8.
    return await _inference(run, rec, reused=reused)


async def ready_worker(
    t: Transport, opts: InferOptions, out: Reporter, registry: Registry
) -> tuple[WorkerRecord, bool]:
    """Steps 1 to 7: a ready worker for opts.model on t's node; (record, reused)."""
    ref = modelref.parse(opts.model).canonical
    return await _ready_worker(_Run(t, opts, out, registry, ref))


async def _ready_worker(run: _Run) -> tuple[WorkerRecord, bool]:
    t, opts, out, registry, ref = run.t, run.opts, run.out, run.registry, run.ref
    # Step 1: registry hit -> straight to inference.
    if (hit := await _registry_hit(run)) is not None:
        return hit, True
    # Step 2: hive preflight (start it if needed).
    hive = await hivectl.connect_hive(t)
    try:
        await hivectl.ensure_hive(t, hive, out, start=opts.start_hive, attempts=opts.retry)
        # Step 3: the model in the node's catalog.
        model = await _provision(run, hive)
        # Steps 4 and 5: the hive's preflight, then spawn.
        out.info(f"starting a worker for {model.reference} on {t.node.name}")
        info = await hive.spawn(
            SpawnRequest.model_validate(
                {"model_id": model.id, "backend": opts.backend, "device": opts.device,
                 "n_ctx": opts.n_ctx, "safe_mode": t.node.safe_mode}
            )
        )
        # Step 6: register.
        rec = WorkerRecord(
            id=info.id, node=t.node.name, model_ref=ref, backend=info.backend,
            device=info.device, url=info.url, pid=info.pid, state="loading",
            last_health_at=time.time(), created_at=time.time(),
        )  # fmt: skip
        registry.add(rec)
        # Step 7: follow loading to ready.
        try:
            await _wait_ready(run, hive, info)
        except BaseException:
            registry.remove(info.id)
            with contextlib.suppress(RbeeError):
                await asyncio.shield(hive.shutdown_worker(info.id))
            raise
        info = await hive.worker(info.id)  # a safe-mode restart changed its pid
        registry.add(dataclasses.replace(rec, pid=info.pid, state="idle", last_health_at=time.time()))
        if info.safe_mode:
            out.info(f"{t.node.name} runs llama.cpp in safe mode (AMX/repacking off): "
                     f"{info.safe_mode_reason}; decode may be slower")  # fmt: skip
    finally:
        await hive.aclose()
    return rec, False


async def _registry_hit(run: _Run) -> WorkerRecord | None:
    for rec in run.registry.candidates(run.t.node.name, run.ref, run.opts.backend, run.opts.device):
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
    """Step 8: stream tokens to the reporter; handle busy, crash and Ctrl+C."""
    o = run.opts
    request_id = uuid.uuid4().hex
    req = InferenceRequest(
        prompt=o.prompt, max_tokens=o.max_tokens, temperature=o.temperature,
        top_p=o.top_p, seed=o.seed, request_id=request_id,
    )  # fmt: skip
    worker = await hivectl.connect_worker(run.t, rec.url)
    pieces: list[str] = []
    t0 = time.monotonic()
    first: float | None = None
    done: DoneEvent | None = None
    try:
        for delay in (*BUSY_RETRIES_S, None):
            try:
                async with contextlib.aclosing(worker.stream("POST", "/v1/inference", req)) as events:
                    async for event in events:
                        if not isinstance(event, dict):
                            break  # [DONE]
                        if "token" in event:
                            if first is None:
                                first = time.monotonic()
                            pieces.append(event["token"])
                            run.out.token(event["token"])
                        elif event.get("done"):
                            done = DoneEvent.model_validate(event)
                        elif "error" in event:
                            raise from_envelope(event)
                break
            except AllSlotsBusy as exc:
                if delay is None:
                    raise AllSlotsBusy(
                        f"worker {rec.id} on {run.t.node.name} is still busy after "
                        f"{len(BUSY_RETRIES_S)} retries",
                        hint="wait for the running generation to finish, or stop it with "
                        f"rbee workers shutdown --id {rec.id}",
                        details=exc.details,
                    ) from None
                run.out.info(f"worker busy, retrying in {delay:.0f} s")
                await asyncio.sleep(delay)
            except Unreachable as exc:
                if not pieces and done is None:
                    run.registry.remove(rec.id)
                    raise WorkerCrashed(
                        f"worker {rec.id} is unreachable: {exc.message}",
                        hint="run the command again to start a fresh worker",
                    ) from None
                break  # the stream broke mid-way: handled below as a crash
    except asyncio.CancelledError:
        message = await asyncio.shield(_cancel(run, rec, request_id))
        raise RequestCanceled(
            message,
            details={"request_id": request_id, "tokens": len(pieces), "worker_id": rec.id},
        ) from None
    finally:
        await worker.aclose()
    if done is None:
        run.registry.remove(rec.id)
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
    )


def _crashed(run: _Run, rec: WorkerRecord, request_id: str, pieces: list[str]) -> WorkerCrashed:
    """Keep what was generated: save it and say where."""
    crash_dir = paths.ensure_dir(paths.data_dir() / "partial")
    path = crash_dir / f"{request_id}.txt"
    text = "".join(pieces)
    path.write_text(text, encoding="utf-8")
    return WorkerCrashed(
        f"worker {rec.id} on {run.t.node.name} stopped mid-generation "
        f"(tokens generated {len(pieces)} / {run.opts.max_tokens})",
        hint=f"the partial output is saved in {path}; run the command again "
        "to start a fresh worker",
        details={"saved_to": str(path), "tokens": len(pieces), "partial_text": text},
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
