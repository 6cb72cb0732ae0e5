"""What `GET /v1/workers` says about each worker: the supervisor's record, made current.

`rbee workers list` shows what `ollama ps` users expect: state, memory,
backend and device, context, queue, idle time and when the worker will be
unloaded. The supervisor's record holds what the idle reaper last probed (up
to five seconds old); this view asks each ready worker again, measures its
resident memory, and works out its unload time from the hive's idle timeout.
The key goes only to a listener that proves it holds it, as the reaper's does.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import psutil

from rbee_fabric import proof
from rbee_fabric.schemas import WorkerInfo

PROBE_TIMEOUT_S = 2.0


async def current(
    workers: list[WorkerInfo],
    api_key: str,
    idle_timeout_s: float,
    reserved_mb: dict[str, int | None],
) -> list[WorkerInfo]:
    """Each worker with fresh state, idle time, queue, memory and unload time."""
    # No key by default; plain HTTP to local workers (verify=False: no TLS context to build).
    async with httpx.AsyncClient(timeout=PROBE_TIMEOUT_S, verify=False) as client:
        return list(
            await asyncio.gather(
                *(_one(w, client, api_key, idle_timeout_s, reserved_mb.get(w.id)) for w in workers)
            )
        )


async def _one(
    w: WorkerInfo, client: httpx.AsyncClient, api_key: str, idle_timeout_s: float, reserved: int | None
) -> WorkerInfo:
    update: dict[str, object] = {"idle_timeout_s": idle_timeout_s, "memory_estimate_mb": reserved}
    if w.state in ("idle", "busy"):
        try:
            # The key goes only to a listener that proves it holds it (as the reaper does):
            # after a worker dies, another program may hold its port.
            nonce = proof.new_nonce()
            health = (await client.get(f"{w.url}/v1/health", params={"nonce": nonce})).json()
            given = health.get("proof")
            if not proof.check(api_key, nonce, given if isinstance(given, str) else None):
                raise ValueError("not our worker on that port")
            r = await client.get(f"{w.url}/v1/ready", headers={"Authorization": f"Bearer {api_key}"})
            ready = r.json()
            update.update(
                state=ready.get("state", w.state),
                idle_seconds=ready.get("idle_seconds"),
                queued=int(ready.get("queued", 0)),
            )
        except (httpx.HTTPError, ValueError, TypeError, AttributeError):
            pass  # keep what the reaper saw last
    state, idle = update.get("state", w.state), update.get("idle_seconds", w.idle_seconds)
    if state == "idle" and isinstance(idle, int | float):
        update["unload_at"] = time.time() + max(0.0, idle_timeout_s - idle)
    else:
        update["idle_seconds"] = None  # busy or loading: not idle, not due for unloading
    update["memory_mb"] = await asyncio.to_thread(rss_mb, w.pid)
    return w.model_copy(update=update)


def rss_mb(pid: int) -> int | None:
    """Resident memory of a process in MB (None when it is gone or not ours to read)."""
    try:
        return int(psutil.Process(pid).memory_info().rss / 2**20)
    except (psutil.Error, OSError):
        return None
