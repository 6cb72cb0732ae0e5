"""The worker's reports to its hive keep trying while the hive is not up, or does not
know the worker yet (a worker the hive placed before its imports), and go in order."""

from __future__ import annotations

import asyncio
import json
import socket

from rbee_fabric.worker import callback
from rbee_fabric.worker.app import WorkerSettings
from tests.unit.test_minihttp import Canned


def _answer(status: int) -> bytes:
    reason = {200: b"OK", 404: b"Not Found", 400: b"Bad Request"}[status]
    return b"HTTP/1.1 %d %s\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}" % (status, reason)


def _settings(port: int) -> WorkerSettings:
    return WorkerSettings(worker_id="w-1", model_path="/m.gguf", url="http://127.0.0.1:1",
                          api_key="k", hive_url=f"http://127.0.0.1:{port}")  # fmt: skip


def _states(server: Canned) -> list[str]:
    return [json.loads(r.partition(b"\r\n\r\n")[2])["state"] for r in server.requests]


async def test_a_report_the_hive_cannot_take_yet_is_sent_again() -> None:
    server = Canned([_answer(404), _answer(404), _answer(200)])
    try:
        await callback.callback(_settings(server.port), "idle")
        assert _states(server) == ["idle", "idle", "idle"]
    finally:
        server.close()


async def test_a_refused_report_is_not_sent_again() -> None:
    server = Canned([_answer(400), _answer(200)])
    try:
        await callback.callback(_settings(server.port), "idle")
        assert _states(server) == ["idle"]
    finally:
        server.close()


async def test_reports_wait_for_a_hive_that_is_not_up_and_keep_their_order() -> None:
    with socket.socket() as s:  # a port nobody listens on yet
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = _settings(port)
    loading = callback.report(settings, "loading")
    idle = callback.report(settings, "idle", after=loading)
    await asyncio.sleep(0.5)
    assert not loading.done() and not idle.done()  # both waiting: the hive is not up
    server = Canned([_answer(200), _answer(200)], port=port)  # the hive comes up
    try:
        await asyncio.wait_for(asyncio.gather(loading, idle), 10)
        assert _states(server) == ["loading", "idle"]
    finally:
        server.close()
