"""The gateway's nodes: one transport (one SSH connection) each, kept open.

A node's handle caches what its hive last said (workers, catalog) and what
this gateway has in flight there. A node that stops answering is marked down
and skipped by routing; a background loop probes it (reconnecting SSH from
scratch, since tunnels die with their connection) and brings it back when
its hive answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator

from rbee_fabric.errors import ConnectionTimeout, InvalidApiKey, NotInstalled, RbeeError, SshError
from rbee_fabric.gateway.routing import NodeView, WorkerView
from rbee_fabric.keeper import hivectl
from rbee_fabric.keeper.client import HiveClient, Unreachable, WorkerClient
from rbee_fabric.keeper.inventory import Inventory, Node
from rbee_fabric.keeper.transport import Transport, for_node
from rbee_fabric.schemas import ModelInfo, WorkerInfo

log = logging.getLogger("rbee.serve")

REFRESH_S = 2.0  # how often the background loop asks each running hive for its workers
IDLE_PROBE_S = 10.0  # how often it looks at nodes without a running hive, or down
STALE_S = 5.0  # routing refreshes inline when what it knows is older than this
PROBE_TIMEOUT_S = 5.0


def is_unreachable(exc: BaseException) -> bool:
    """Errors that mean the node (not the request) is the problem."""
    return isinstance(exc, ConnectionTimeout | SshError | NotInstalled)


class NodeHandle:
    """One node: its transport, clients, cached state and in-flight counts."""

    def __init__(self, node: Node, make_transport: Callable[[Node], Transport] = for_node) -> None:
        self.node = node
        self.name = node.name
        self._make = make_transport
        self.t: Transport = make_transport(node)
        self.up = True
        self.down_reason: str | None = None
        self.hive_up = False
        self.workers: list[WorkerInfo] = []
        self.catalog: list[ModelInfo] = []
        self.seen_at = 0.0
        self.probed_at = 0.0
        self.inflight: dict[str, int] = {}
        self._hive: HiveClient | None = None
        self._workers: dict[str, WorkerClient] = {}
        self._lock = asyncio.Lock()
        self.spawn_locks: dict[str, asyncio.Lock] = {}
        self.freed = asyncio.Event()  # set whenever a request of ours ends here

    # ------------------------------------------------------------ clients

    async def hive(self) -> HiveClient:
        async with self._lock:
            if self._hive is None:
                self._hive = await hivectl.connect_hive(self.t)
            return self._hive

    async def worker(self, url: str) -> WorkerClient:
        """A kept-open client for a worker of this node (tunnelled if need be)."""
        async with self._lock:
            client = self._workers.get(url)
            if client is None:
                client = await hivectl.connect_worker(self.t, url)
                self._workers[url] = client
            return client

    async def reconnect(self) -> None:
        """Drop the transport and every client built on it; the next call reconnects."""
        async with self._lock:
            await self._close_clients()
            with contextlib.suppress(Exception):
                await self.t.close()
            self.t = self._make(self.node)

    async def _close_clients(self) -> None:
        clients: list[HiveClient | WorkerClient] = list(self._workers.values())
        if self._hive is not None:
            clients.append(self._hive)
        self._hive, self._workers = None, {}
        for c in clients:
            with contextlib.suppress(Exception):
                await c.aclose()

    async def close(self) -> None:
        async with self._lock:
            await self._close_clients()
            with contextlib.suppress(Exception):
                await self.t.close()

    # -------------------------------------------------------------- state

    async def refresh(self) -> None:
        """Ask the hive for its workers and catalog; a hive that is not running is no error."""
        hive = await self.hive()
        try:
            await hive.health(timeout=PROBE_TIMEOUT_S)
        except Unreachable:
            # Nothing listens there: if the node itself answers, its hive will be
            # started on demand (with a key read afresh, so drop this client).
            await self._node_answers()
            async with self._lock:
                await self._close_clients()
            self.hive_up, self.workers, self.catalog = False, [], []
            self.seen_at = time.monotonic()
            return
        except InvalidApiKey:
            await self.reconnect()  # the key changed (a fresh hive): read it again
            raise
        self.workers = (await hive.workers()).workers
        self.catalog = (await hive.models()).models
        self.hive_up = True
        self.seen_at = time.monotonic()

    async def _node_answers(self) -> None:
        if not self.node.local:
            await self.t.run(["true"], check=True, timeout=PROBE_TIMEOUT_S)

    def mark_down(self, exc: BaseException) -> None:
        reason = exc.message if isinstance(exc, RbeeError) else repr(exc)
        if self.up:
            log.warning("node %s stopped answering: %s; skipping it until it answers", self.name, reason)
        self.up, self.down_reason = False, reason

    def mark_up(self) -> None:
        if not self.up:
            log.info("node %s answers again", self.name)
        self.up, self.down_reason = True, None

    def view(self, reference: str) -> NodeView:
        workers = [
            WorkerView(
                id=w.id, url=w.url, state=w.state, queued=w.queued, inflight=self.inflight.get(w.id, 0)
            )
            for w in self.workers
            if w.model_reference == reference
        ]
        return NodeView(
            name=self.name,
            up=self.up,
            local=self.node.local,
            down_reason=self.down_reason,
            catalog_known=self.hive_up,
            holds=any(m.reference == reference for m in self.catalog),
            workers=workers,
        )

    def add_worker(self, info: WorkerInfo) -> None:
        self.workers = [w for w in self.workers if w.id != info.id] + [info]

    def forget_worker(self, worker_id: str) -> None:
        self.workers = [w for w in self.workers if w.id != worker_id]

    @contextlib.contextmanager
    def counting(self, worker_id: str) -> Iterator[None]:
        self.inflight[worker_id] = self.inflight.get(worker_id, 0) + 1
        try:
            yield
        finally:
            self.inflight[worker_id] -= 1
            if self.inflight[worker_id] <= 0:
                del self.inflight[worker_id]


class NodePool:
    """Every node of the inventory, refreshed in the background."""

    def __init__(
        self, inv: Inventory, make_transport: Callable[[Node], Transport] = for_node
    ) -> None:
        self.nodes = {name: NodeHandle(node, make_transport) for name, node in inv.nodes.items()}
        self._loop: asyncio.Task[None] | None = None
        self.background: set[asyncio.Task[object]] = set()

    async def start(self) -> None:
        await self.refresh_all()
        self._loop = asyncio.create_task(self._refresh_loop())

    async def refresh_all(self, names: list[str] | None = None) -> None:
        handles = [self.nodes[n] for n in names] if names else list(self.nodes.values())
        async with asyncio.TaskGroup() as tg:
            for h in handles:
                tg.create_task(self.probe(h))

    async def probe(self, h: NodeHandle) -> None:
        """Refresh one node; on failure reconnect once, then mark it down."""
        h.probed_at = time.monotonic()
        for attempt in (1, 2):
            try:
                await asyncio.wait_for(h.refresh(), PROBE_TIMEOUT_S * 2)
                h.mark_up()
                return
            except (RbeeError, TimeoutError, OSError) as exc:
                retry = is_unreachable(exc) or isinstance(exc, TimeoutError | InvalidApiKey)
                if attempt == 2 or not retry:
                    h.mark_down(exc)
                    return
                await h.reconnect()

    async def fresh(self, names: list[str]) -> None:
        """Make sure what routing reads about these nodes is recent enough."""
        now = time.monotonic()
        stale = [n for n in names if self.nodes[n].up and now - self.nodes[n].seen_at > STALE_S]
        if stale:
            await self.refresh_all(stale)

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_S)
            now = time.monotonic()
            due = [
                h.name for h in self.nodes.values()
                if now - h.probed_at >= (REFRESH_S if h.up and h.hive_up else IDLE_PROBE_S) - 0.1
            ]  # fmt: skip
            with contextlib.suppress(Exception):
                if due:
                    await self.refresh_all(due)

    def spawn_background(self, coro: Awaitable[object]) -> None:
        """Run coro to its end even if the request that wanted it is gone."""
        task: asyncio.Task[object] = asyncio.ensure_future(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def close(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(BaseException):
                await self._loop
        if self.background:
            await asyncio.wait(self.background, timeout=6.0)
        for h in self.nodes.values():
            await h.close()
