"""The worker's calls to its hive: "loading", then "idle" or "failed" (SPEC section 6).

With the standard library's HTTP (minihttp.py) in a thread: httpx would add
~0.15 s of imports to a worker's start, on the cores its model is loading on.

Each report goes in order, from a task, and keeps trying for a while: a worker
a hive started before its own imports (hive/speculate.py) may be ready before
the hive answers, or before the hive has taken it into its table (404).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from typing import TYPE_CHECKING

from rbee_fabric import minihttp
from rbee_fabric.schemas import WorkerReadyCallback

if TYPE_CHECKING:
    from rbee_fabric.worker.app import WorkerSettings

log = logging.getLogger("rbee.worker")

def patience_s() -> float:
    """How long a report keeps trying (a hive importing at low priority, a claim on its
    way): longer than the hive keeps an unclaimed worker (RBEE_SPECULATION_TTL_S)."""
    try:
        ttl = float(os.environ.get("RBEE_SPECULATION_TTL_S", "60"))
    except ValueError:
        ttl = 60.0
    return max(60.0, ttl + 10.0)


def report(s: WorkerSettings, state: str, error: str | None = None,
           after: asyncio.Task[None] | None = None) -> asyncio.Task[None]:  # fmt: skip
    """Send a report from a task, after the report `after` (in order); the task."""

    async def send() -> None:
        if after is not None:
            with contextlib.suppress(Exception):
                await after
        await callback(s, state, error)

    return asyncio.create_task(send())


async def callback(s: WorkerSettings, state: str, error: str | None = None) -> None:
    if not s.hive_url:
        return
    body = WorkerReadyCallback(worker_id=s.worker_id, url=s.url, state=state, error=error)  # type: ignore[arg-type]
    payload = json.dumps(body.model_dump()).encode()
    deadline = time.monotonic() + patience_s()
    delay, attempt = 0.1, 0
    while True:
        attempt += 1
        try:
            status = await asyncio.to_thread(_post, s.hive_url, "/v1/workers/ready", payload, s.api_key)
            if status < 500 and status != 404:
                return
            why = f"HTTP {status}"
        except (OSError, minihttp.ProtocolError) as exc:
            why = str(exc)
        if time.monotonic() + delay > deadline:
            log.warning("hive callback %r failed after %d attempts: %s", state, attempt, why)
            return
        if attempt in (1, 10):
            log.info("hive callback %r: %s; trying again", state, why)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)


def _post(base_url: str, path: str, payload: bytes, api_key: str) -> int:
    """POST JSON to a daemon (blocking); its status."""
    from urllib.parse import urlsplit

    u = urlsplit(base_url)
    if u.hostname is None:
        raise OSError(f"not an HTTP URL: {base_url}")
    conn = minihttp.Connection(u.hostname, u.port or 80, timeout=5.0)
    try:
        conn.request("POST", path, body=payload, headers={
            "Authorization": f"Bearer {api_key}", "Content-Type": "application/json"})  # fmt: skip
        r = conn.getresponse()
        r.read()
        return r.status
    finally:
        conn.close()
