"""The worker's calls to its hive: "loading", then "idle" or "failed" (SPEC section 6).

With the standard library's HTTP (minihttp.py) in a thread: httpx would add
~0.15 s of imports to a worker's start, on the cores its model is loading on.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING

from rbee_fabric import minihttp
from rbee_fabric.schemas import WorkerReadyCallback

if TYPE_CHECKING:
    from rbee_fabric.worker.app import WorkerSettings

log = logging.getLogger("rbee.worker")


async def callback(s: WorkerSettings, state: str, error: str | None = None) -> None:
    if not s.hive_url:
        return
    body = WorkerReadyCallback(worker_id=s.worker_id, url=s.url, state=state, error=error)  # type: ignore[arg-type]
    payload = json.dumps(body.model_dump()).encode()
    for attempt in range(3):
        try:
            status = await asyncio.to_thread(_post, s.hive_url, "/v1/workers/ready", payload, s.api_key)
            if status < 500:
                return
        except (OSError, minihttp.ProtocolError) as exc:
            log.warning("hive callback failed (attempt %d): %s", attempt + 1, exc)
        await asyncio.sleep(0.2 * 2**attempt)


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
