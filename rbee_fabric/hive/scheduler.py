"""Which worker serves a model configuration: reuse one, route, or start one.

A configuration is (model, backend, device, context size). For each, the
hive takes one decision at a time (an asyncio lock per configuration), so ten
concurrent spawn requests for a cold model start one worker and the other
nine get that same worker, still loading, to wait for.

Routing lives here, in the hive, because only the hive sees every worker of
the node. `POST /v1/workers/spawn` is "give me a worker for this
configuration": the least-loaded live worker of it (load = the generation
running plus the requests queued, asked from each ready worker, plus requests
just sent its way), or a new one when there is none; or a new replica when
`max_replicas` allows one more, every live one has requests waiting, none is
still loading, and memory fits.

Memory is reserved from the moment a worker is spawned: the fit check
subtracts what every worker still starting or loading will need, because the
free memory it reads does not show them yet.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx

from rbee_fabric.errors import RbeeError
from rbee_fabric.ggufmeta import read_info
from rbee_fabric.hive.safemode import SafeModeStore
from rbee_fabric.hive.supervisor import Supervisor
from rbee_fabric.resources import check_fit, pick_backend, required_mb
from rbee_fabric.schemas import ModelInfo, Resources, SpawnRequest, WorkerInfo

log = logging.getLogger("rbee.hive")

DEFAULT_MAX_REPLICAS = 1
DEFAULT_MAX_QUEUE = 64
LIVE = ("starting", "loading", "idle", "busy")
LOADING = ("starting", "loading")
RECENT_S = 1.0
"""A request routed to a worker counts towards its load this long (until the worker reports it)."""


@dataclass(frozen=True)
class Config:
    model_id: str
    backend: str
    device: int
    n_ctx: int


@dataclass
class _Routed:
    need_mb: int
    config: Config
    sent: list[float] = field(default_factory=list)  # when requests were routed here

    def recent(self, now: float) -> int:
        self.sent = [t for t in self.sent if now - t < RECENT_S]
        return len(self.sent)


class Scheduler:
    def __init__(
        self,
        supervisor: Supervisor,
        resources: Callable[[], Awaitable[Resources]],
        api_key: str,
        safe_mode: SafeModeStore,
    ) -> None:
        self.supervisor = supervisor
        self.resources = resources
        self.safe_mode = safe_mode
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(2.0), headers={"Authorization": f"Bearer {api_key}"},
            verify=False,  # plain HTTP to local workers: no TLS context to build at start
        )
        self._locks: dict[Config, asyncio.Lock] = {}
        self._routed: dict[str, _Routed] = {}

    async def close(self) -> None:
        await self.client.aclose()

    async def worker_for(self, model: ModelInfo, req: SpawnRequest) -> WorkerInfo:
        """A worker for the request's configuration (see the module docstring)."""
        res = await self.resources()
        backend = pick_backend(req.backend, res)
        meta = await asyncio.to_thread(read_info, model.path)
        n_ctx = min(req.n_ctx, meta.context_length or req.n_ctx)
        config = Config(model.id, backend, req.device if backend != "cpu" else 0, n_ctx)
        need = required_mb(model.size_bytes, meta.kv_cache_bytes(n_ctx))
        max_replicas = req.max_replicas or DEFAULT_MAX_REPLICAS
        max_queue = req.max_queue if req.max_queue is not None else DEFAULT_MAX_QUEUE
        async with self._locks.setdefault(config, asyncio.Lock()):
            live = self._live(config)
            if not live:
                # A speculative worker of this model has its memory already: no check.
                if not self.supervisor.speculating(model.path, backend, config.device, n_ctx):
                    check_fit(need, backend, req.device, self._unreserved(res), model.reference)
                return await self._spawn(model, config, need, max_queue, req.safe_mode)
            if len(live) == 1 and max_replicas <= 1:
                return self._send(live[0])  # the common case: no probe needed
            loads = await self._loads(live)
            best = min(live, key=lambda w: (loads[w.id], w.state in LOADING, w.started_at))
            grow = (
                len(live) < max_replicas
                and loads[best.id] >= 2  # even the least loaded has a request waiting
                and not any(w.state in LOADING for w in live)
            )
            if grow:
                try:
                    check_fit(need, backend, req.device, self._unreserved(res), model.reference)
                except RbeeError as exc:  # no room for a replica: queue on the best one
                    log.info("no replica for %s: %s", model.reference, exc)
                else:
                    log.info("queue of %s is growing: starting replica %d", model.reference, len(live) + 1)
                    return await self._spawn(model, config, need, max_queue, req.safe_mode)
            return self._send(best)

    def reserved_mb(self, worker_id: str) -> int | None:
        """The memory the fit check reserved for a worker this hive started (None: unknown)."""
        routed = self._routed.get(worker_id)
        return routed.need_mb if routed is not None else None

    def _live(self, config: Config) -> list[WorkerInfo]:
        out = []
        for w in self.supervisor.workers.values():
            routed = self._routed.get(w.info.id)
            if routed and routed.config == config and not w.stopping and w.info.state in LIVE:
                out.append(w.info)
        return out

    async def _spawn(
        self, model: ModelInfo, config: Config, need: int, max_queue: int, safe_policy: str
    ) -> WorkerInfo:
        safe, why = await asyncio.to_thread(self.safe_mode.initial, safe_policy)
        info = await self.supervisor.spawn(
            model, config.backend, config.device, config.n_ctx, safe_mode=safe,
            safe_reason=why, safe_policy=safe_policy, max_queue=max_queue,
        )  # fmt: skip
        self._routed[info.id] = _Routed(need_mb=need, config=config, sent=[time.monotonic()])
        self._forget_gone()
        return info.model_copy(update={"spawned": True})

    def _send(self, info: WorkerInfo) -> WorkerInfo:
        self._routed[info.id].sent.append(time.monotonic())
        return info

    async def _loads(self, live: list[WorkerInfo]) -> dict[str, int]:
        """Running + queued requests of each worker, plus those just routed to it."""
        now = time.monotonic()

        async def one(w: WorkerInfo) -> tuple[str, int]:
            recent = self._routed[w.id].recent(now)
            if w.state in LOADING:
                return w.id, recent
            try:
                r = await self.client.get(f"{w.url}/v1/ready", timeout=2.0)
                ready = r.json()
                probed = int(ready.get("state") == "busy") + int(ready.get("queued", 0))
            except (httpx.HTTPError, ValueError):
                return w.id, 1_000_000  # unreachable: last choice
            return w.id, max(probed, recent)

        return dict(await asyncio.gather(*(one(w) for w in live)))

    def _unreserved(self, res: Resources) -> Resources:
        """The node's resources minus what workers still loading will take."""
        reserved: dict[tuple[str, int], int] = {}
        for w in self.supervisor.workers.values():
            routed = self._routed.get(w.info.id)
            if routed and w.info.state in LOADING and not w.stopping:
                key = (routed.config.backend, routed.config.device)
                reserved[key] = reserved.get(key, 0) + routed.need_mb
        ram = sum(mb for (backend, _), mb in reserved.items() if backend != "cuda")
        devices = {
            kind: [
                d.model_copy(update={"free_mb": max(0, d.free_mb - reserved.get((kind, d.index), 0))})
                for d in ds
            ]
            for kind, ds in res.devices.items()
        }
        return res.model_copy(
            update={"ram_available_mb": max(0, res.ram_available_mb - ram), "devices": devices}
        )

    def _forget_gone(self) -> None:
        for wid in [wid for wid in self._routed if wid not in self.supervisor.workers]:
            del self._routed[wid]
