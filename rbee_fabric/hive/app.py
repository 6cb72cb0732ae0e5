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
from rbee_fabric.errors import ModelNotFound, WorkerNotFound
from rbee_fabric.ggufmeta import read_info
from rbee_fabric.hive.provision import Provisioner
from rbee_fabric.hive.safemode import SafeModeStore
from rbee_fabric.hive.supervisor import Supervisor, SupervisorSettings
from rbee_fabric.httpserver import install_api_key, install_error_handlers
from rbee_fabric.resources import check_fit, gather, llama_backend_probe, pick_backend, required_mb
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
            )
        )
        self._llama_backend = settings.llama_backend

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
        hive.supervisor.start()
        log.info("rbee-hive %s listening on %s", __version__, settings.url)
        try:
            yield
        finally:
            log.info("rbee-hive stopping: stopping %d worker(s)", len(hive.supervisor.workers))
            await hive.provisioner.close()
            await hive.supervisor.close()
            hive.catalog.close()

    app = FastAPI(title="rbee-hive", version=__version__, lifespan=lifespan)
    install_error_handlers(app)
    install_api_key(app, settings.api_key, settings.key_file)

    def hive() -> Hive:
        return app.state.hive  # type: ignore[no-any-return]

    @app.get("/v1/health", response_model=HiveHealth)
    async def health() -> HiveHealth:
        return HiveHealth(version=__version__)

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

    @app.delete("/v1/models/{model_id}", response_model=Ack)
    async def delete_model(model_id: str) -> Ack:
        h = hive()
        info = h.catalog.get(model_id)
        if info is None:
            raise ModelNotFound(f"no model {model_id!r} in this node's catalog", hint=None)
        users = [w.id for w in h.supervisor.list() if w.model_id == model_id]
        for wid in users:
            await h.supervisor.stop(wid, reason="model removed")
        h.catalog.remove(model_id)
        owned = Path(info.path).resolve().is_relative_to((settings.data_dir / "models").resolve())
        if owned:  # never delete a user's own file: file: references stay where they are
            Path(info.path).unlink(missing_ok=True)
        return Ack(message=f"removed {model_id}" + (" and its file" if owned else ""))

    # --------------------------------------------------------------- workers

    @app.post("/v1/workers/spawn", response_model=WorkerInfo)
    async def spawn(req: SpawnRequest) -> WorkerInfo:
        h = hive()
        model = h.catalog.get(req.model_id)
        if model is None:
            raise ModelNotFound(
                f"no model {req.model_id!r} in this node's catalog",
                hint="provision it first (POST /v1/models/download)",
            )
        res = await h.resources()
        backend = pick_backend(req.backend, res)
        meta = await asyncio.to_thread(read_info, model.path)
        n_ctx = min(req.n_ctx, meta.context_length or req.n_ctx)
        need = required_mb(model.size_bytes, meta.kv_cache_bytes(n_ctx))
        check_fit(need, backend, req.device, res, model.reference)
        safe, why = await asyncio.to_thread(h.safe_mode.initial, req.safe_mode)
        return await h.supervisor.spawn(
            model, backend, req.device, n_ctx, safe_mode=safe, safe_reason=why,
            safe_policy=req.safe_mode,
        )  # fmt: skip

    @app.post("/v1/workers/ready", response_model=Ack)
    async def worker_ready(cb: WorkerReadyCallback) -> Ack:
        hive().supervisor.on_callback(cb)
        return Ack()

    @app.get("/v1/workers", response_model=WorkerList)
    async def workers() -> WorkerList:
        return WorkerList(workers=hive().supervisor.list())

    @app.get("/v1/workers/{worker_id}", response_model=WorkerInfo)
    async def worker(worker_id: str) -> WorkerInfo:
        return hive().supervisor.get(worker_id)

    @app.post("/v1/workers/{worker_id}/shutdown", response_model=Ack)
    async def shutdown_worker(worker_id: str) -> Ack:
        if not await hive().supervisor.stop(worker_id):
            raise WorkerNotFound(f"no worker {worker_id!r} on this node")
        return Ack(message=f"worker {worker_id} stopped")

    return app
