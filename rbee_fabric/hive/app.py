"""The hive's HTTP API (SPEC section 6): catalog, downloads, workers, resources."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from rbee_fabric import __version__, sse
from rbee_fabric.catalog import Catalog
from rbee_fabric.errors import ModelNotFound, UsageError, WorkerNotFound
from rbee_fabric.hive import vocab, workerview
from rbee_fabric.hive.forker import Template
from rbee_fabric.hive.provision import Provisioner
from rbee_fabric.hive.safemode import SafeModeStore
from rbee_fabric.hive.scheduler import Scheduler
from rbee_fabric.hive.speculate import Speculation
from rbee_fabric.hive.supervisor import Supervisor, SupervisorSettings
from rbee_fabric.httpserver import health_proof, install_api_key, install_error_handlers
from rbee_fabric.resources import gather, llama_backend_probe
from rbee_fabric.schemas import (
    Ack,
    DownloadRequest,
    DownloadStarted,
    HiveHealth,
    ModelInfo,
    ModelList,
    RegisterRequest,
    Resources,
    SpawnRequest,
    TokenCount,
    TokenCountRequest,
    WorkerInfo,
    WorkerList,
    WorkerReadyCallback,
)

log = logging.getLogger("rbee.hive")


@dataclass
class HiveSettings:
    host: str
    port: int
    data_dir: Path
    api_key: str
    key_file: str
    idle_timeout_s: float = 300.0
    worker_ports: tuple[int, int] = (9300, 9399)
    llama_backend: str | None = None  # probed once at start when None
    template: Template | None = None  # the worker template (forker.py), started by __main__
    speculation: Speculation | None = None  # a worker started before the imports (speculate.py)
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


class Hive:
    """The hive's state, in app.state.hive."""

    def __init__(self, settings: HiveSettings) -> None:
        self.settings = settings
        self.catalog = Catalog(settings.data_dir / "catalog.db")
        self.provisioner = Provisioner(self.catalog, settings.data_dir / "models")
        self.safe_mode = SafeModeStore(settings.data_dir)
        self.supervisor = Supervisor(
            SupervisorSettings(
                host=settings.host,
                hive_url=settings.url,
                api_key=settings.api_key,
                logs_dir=settings.data_dir / "logs",
                key_file=settings.key_file,
                idle_timeout_s=settings.idle_timeout_s,
                port_range=settings.worker_ports,
                safe_store=self.safe_mode,
                template=settings.template,
                speculation=settings.speculation,
            )
        )
        self._llama_backend = settings.llama_backend
        self.scheduler = Scheduler(self.supervisor, self.resources, settings.api_key, self.safe_mode)

    async def llama_backend(self) -> str:
        if self._llama_backend is None:
            self._llama_backend = await asyncio.to_thread(llama_backend_probe)
        return self._llama_backend

    async def resources(self) -> Resources:
        backend = await self.llama_backend()
        return await asyncio.to_thread(gather, self.settings.data_dir / "models", backend)


def create_app(settings: HiveSettings) -> FastAPI:
    """The hive app; workers it spawned are stopped when it shuts down."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        hive = Hive(settings)
        app.state.hive = hive
        if settings.template is not None:
            settings.template.attach(asyncio.get_running_loop())
        hive.supervisor.start()
        log.info("rbee-hive %s listening on %s", __version__, settings.url)
        try:
            yield
        finally:
            log.info("rbee-hive stopping: stopping %d worker(s)", len(hive.supervisor.workers))
            await hive.provisioner.close()
            await hive.supervisor.close()
            if settings.template is not None:
                await settings.template.close()
            await hive.scheduler.close()
            hive.catalog.close()

    app = FastAPI(title="rbee-hive", version=__version__, lifespan=lifespan)
    install_error_handlers(app)
    install_api_key(app, settings.api_key, settings.key_file)

    def hive() -> Hive:
        return app.state.hive  # type: ignore[no-any-return]

    @app.get("/v1/health", response_model=HiveHealth, response_model_exclude_none=True)
    async def health(nonce: str | None = None) -> HiveHealth:
        return HiveHealth(version=__version__, **health_proof(settings.api_key, nonce))

    @app.get("/v1/resources", response_model=Resources)
    async def resources() -> Resources:
        return await hive().resources()

    # ---------------------------------------------------------------- models

    @app.get("/v1/models", response_model=ModelList)
    async def models() -> ModelList:
        return ModelList(models=hive().catalog.list())

    @app.post("/v1/models/download", response_model=DownloadStarted)
    async def download(req: DownloadRequest) -> DownloadStarted:
        return await hive().provisioner.ensure(req.reference)

    @app.post("/v1/models/register", response_model=ModelInfo)
    async def register(req: RegisterRequest) -> ModelInfo:
        return await asyncio.to_thread(
            hive().provisioner.register_pushed, req.reference, Path(req.path), req.sha256
        )

    @app.get("/v1/models/download/{job_id}/progress")
    async def download_progress(job_id: str) -> StreamingResponse:
        job = hive().provisioner.job(job_id)

        async def events() -> AsyncIterator[bytes]:
            async for event in job.events():
                yield sse.encode(event)
            yield sse.encode(sse.DONE)

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.delete("/v1/models/{model:path}", response_model=Ack)
    async def delete_model(model: str) -> Ack:
        """Remove a model named by its catalog id or by a reference (gemma3-270m, hf:..., file:...)."""
        h = hive()
        info = _one_model(h, model)
        users = [w.id for w in h.supervisor.list() if w.model_id == info.id]
        for wid in users:
            await h.supervisor.stop(wid, reason="model removed")
        h.catalog.remove(info.id)
        owned = Path(info.path).resolve().is_relative_to((settings.data_dir / "models").resolve())
        if owned:  # never delete a user's own file: file: references stay where they are
            Path(info.path).unlink(missing_ok=True)
            _drop_empty_dirs(Path(info.path).parent, settings.data_dir / "models")
        return Ack(message=f"removed {info.reference} ({info.id})" + (" and its file" if owned else ""))

    # --------------------------------------------------------------- workers

    @app.post("/v1/workers/spawn", response_model=WorkerInfo)
    async def spawn(req: SpawnRequest) -> WorkerInfo:
        """A worker for the configuration: reused, routed to, or started (scheduler.py)."""
        h = hive()
        return await h.scheduler.worker_for(_model(h, req.model_id), req)

    @app.post("/v1/models/{model_id}/tokens", response_model=TokenCount)
    async def count_tokens(model_id: str, req: TokenCountRequest) -> TokenCount:
        """Tokens of a prompt with the model's vocabulary: the weights are not loaded."""
        model = _model(hive(), model_id)
        tokens = await asyncio.to_thread(vocab.count_tokens, model.path, req.text)
        return TokenCount(tokens=tokens, context_length=model.context_length)

    @app.post("/v1/workers/ready", response_model=Ack)
    async def worker_ready(cb: WorkerReadyCallback) -> Ack:
        hive().supervisor.on_callback(cb)
        return Ack()

    @app.get("/v1/workers", response_model=WorkerList)
    async def workers() -> WorkerList:
        """Every worker, made current: state, idle time, queue, memory, unload time."""
        h = hive()
        return WorkerList(workers=await _current(h, h.supervisor.list()))

    @app.get("/v1/workers/{worker_id}", response_model=WorkerInfo)
    async def worker(worker_id: str) -> WorkerInfo:
        return hive().supervisor.get(worker_id)  # polled while loading: the record as it is

    @app.post("/v1/workers/{worker_id}/shutdown", response_model=Ack)
    async def shutdown_worker(worker_id: str) -> Ack:
        if not await hive().supervisor.stop(worker_id):
            raise WorkerNotFound(f"no worker {worker_id!r} on this node")
        return Ack(message=f"worker {worker_id} stopped")

    return app


def _model(h: Hive, model_id: str) -> ModelInfo:
    model = h.catalog.get(model_id)
    if model is None:
        raise ModelNotFound(
            f"no model {model_id!r} in this node's catalog",
            hint="provision it first (POST /v1/models/download)",
        )
    return model


async def _current(h: Hive, infos: list[WorkerInfo]) -> list[WorkerInfo]:
    reserved = {w.id: h.scheduler.reserved_mb(w.id) for w in infos}
    return await workerview.current(infos, h.settings.api_key, h.settings.idle_timeout_s, reserved)


def _one_model(h: Hive, name: str) -> ModelInfo:
    """The one catalog entry `name` (an id or a reference) means; else a clear error."""
    found = h.catalog.matching(name)
    if len(found) == 1:
        return found[0]
    listing = ", ".join(f"{m.id} ({m.reference})" for m in (found or h.catalog.list())[:10])
    if found:
        raise UsageError(
            f"{name!r} matches {len(found)} models in this node's catalog: {listing}",
            hint="name one by its id or by its full reference (hf:ORG/REPO:FILE.gguf)",
            details={"field": "model", "matches": [m.id for m in found]},
        )
    raise ModelNotFound(
        f"no model {name!r} in this node's catalog",
        hint=f"the catalog holds: {listing}" if listing else "the catalog is empty",
        details={"model": name},
    )


def _drop_empty_dirs(directory: Path, root: Path) -> None:
    """Remove the directories a removed model leaves empty, up to (not including) root."""
    root = root.resolve()
    d = directory.resolve()
    while d != root and d.is_relative_to(root):
        try:
            d.rmdir()
        except OSError:
            return
        d = d.parent
