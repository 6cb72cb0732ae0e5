"""The worker as a real process: HTTP first, then loading, then streaming."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import RbeeHome
from tests.support.procs import start_on_port_0, wait_http


class Worker:
    def __init__(self, home: RbeeHome, model: Path, env: dict[str, str] | None = None) -> None:
        self.key = home.api_key
        self.headers = {"Authorization": f"Bearer {self.key}"}
        self.proc, self.port, self.output = start_on_port_0(
            [sys.executable, "-m", "rbee_fabric.worker", "--worker-id", "w-test",
             "--model", str(model), "--port", "0"],
            env={**home.env, "RBEE_API_KEY": self.key, **(env or {})},
        )  # fmt: skip
        self.url = f"http://127.0.0.1:{self.port}"
        wait_http(f"{self.url}/v1/health", proc=self.proc)

    def wait_ready(self) -> None:
        with httpx.stream("GET", f"{self.url}/v1/loading/progress", headers=self.headers, timeout=30) as r:
            for line in r.iter_lines():
                if line.startswith("data: {") and '"ready"' in line:
                    return
        raise AssertionError("worker never reported ready")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(timeout=20)


@pytest.fixture
def worker(rbee_home: RbeeHome, tiny_model: Path) -> Iterator[Worker]:
    w = Worker(rbee_home, tiny_model)
    yield w
    w.stop()


@pytest.fixture
def slow_worker(rbee_home: RbeeHome, tiny_model: Path) -> Iterator[Worker]:
    w = Worker(rbee_home, tiny_model, env={"RBEE_WORKER_ENGINE": "scripted", "RBEE_SCRIPTED_DELAY_MS": "100"})
    yield w
    w.stop()


def sse_events(lines: Iterator[str]) -> Iterator[dict | str]:
    for line in lines:
        if line.startswith("data: "):
            payload = line[6:]
            yield payload if payload == "[DONE]" else json.loads(payload)


def test_health_is_open_everything_else_needs_the_key(worker: Worker) -> None:
    assert httpx.get(f"{worker.url}/v1/health").json() == {"status": "ok", "version": "0.1.0"}
    r = httpx.get(f"{worker.url}/v1/ready")
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "INVALID_API_KEY"
    r = httpx.get(f"{worker.url}/v1/ready", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401


def test_loads_then_streams_real_tokens_from_llama_cpp(worker: Worker) -> None:
    worker.wait_ready()
    ready = httpx.get(f"{worker.url}/v1/ready", headers=worker.headers).json()
    assert ready["ready"] is True and ready["state"] == "idle"
    assert ready["chat_template"] is False  # as the catalog says: a warm keeper asks no hive
    body = {"prompt": "hello", "max_tokens": 16, "seed": 7, "temperature": 0.0, "request_id": "r1"}
    with httpx.stream("POST", f"{worker.url}/v1/inference", json=body, headers=worker.headers) as r:
        assert r.status_code == 200
        events = list(sse_events(r.iter_lines()))
    tokens = [e for e in events if isinstance(e, dict) and "token" in e]
    done = [e for e in events if isinstance(e, dict) and e.get("done")]
    assert tokens, "no token events"
    assert [t["index"] for t in tokens] == list(range(len(tokens)))
    assert done and done[0]["total_tokens"] <= 16 and done[0]["duration_ms"] >= 0
    assert events[-1] == "[DONE]"


def test_tokens_arrive_as_they_are_generated(slow_worker: Worker) -> None:
    slow_worker.wait_ready()
    body = {"prompt": "x", "max_tokens": 10}
    arrivals: list[float] = []
    start = time.monotonic()
    with httpx.stream("POST", f"{slow_worker.url}/v1/inference", json=body, headers=slow_worker.headers) as r:
        for event in sse_events(r.iter_lines()):
            if isinstance(event, dict) and "token" in event:
                arrivals.append(time.monotonic() - start)
    assert len(arrivals) == 10
    # 10 tokens 100 ms apart: a buffered response would deliver all at once at the end.
    assert arrivals[-1] - arrivals[0] > 0.5


def test_second_generation_waits_its_turn_then_cancel(slow_worker: Worker) -> None:
    slow_worker.wait_ready()
    got: list[dict | str] = []

    def first() -> None:
        body = {"prompt": "x", "max_tokens": 200, "request_id": "long"}
        with httpx.stream("POST", f"{slow_worker.url}/v1/inference", json=body,
                          headers=slow_worker.headers, timeout=60) as r:  # fmt: skip
            got.extend(sse_events(r.iter_lines()))

    t = threading.Thread(target=first)
    t.start()
    deadline = time.monotonic() + 20  # the long one holds the slot before the second asks
    while httpx.get(f"{slow_worker.url}/v1/ready", headers=slow_worker.headers).json()["state"] != "busy":
        assert time.monotonic() < deadline, "the first generation never started"
        time.sleep(0.02)
    second: list[dict | str] = []
    body = {"prompt": "y", "max_tokens": 2}
    with httpx.stream("POST", f"{slow_worker.url}/v1/inference", json=body, headers=slow_worker.headers,
                      timeout=60) as r:  # fmt: skip
        assert r.status_code == 200
        for event in sse_events(r.iter_lines()):
            second.append(event)
            if event == {"queued": True, "position": 1}:  # waiting: stop the long one
                d = httpx.delete(f"{slow_worker.url}/v1/inference/long", headers=slow_worker.headers)
                assert d.status_code == 200 and d.json() == {"request_id": "long", "canceled": True}
    t.join(10)
    done = [e for e in got if isinstance(e, dict) and e.get("done")]
    assert done and done[0]["stop_reason"] == "canceled"
    assert done[0]["total_tokens"] < 200
    assert second[0] == {"queued": True, "position": 1}
    assert [e["token"] for e in second if isinstance(e, dict) and "token" in e] == [" tok0", " tok1"]
    ready = httpx.get(f"{slow_worker.url}/v1/ready", headers=slow_worker.headers).json()
    assert ready["state"] == "idle" and ready["queued"] == 0


def test_invalid_body_names_the_field(worker: Worker) -> None:
    worker.wait_ready()
    r = httpx.post(f"{worker.url}/v1/inference", json={"prompt": "x", "max_tokens": 0}, headers=worker.headers)
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"] == "INVALID_REQUEST" and err["details"]["field"] == "max_tokens"


def test_admin_shutdown_exits_the_process(worker: Worker) -> None:
    worker.wait_ready()
    r = httpx.post(f"{worker.url}/v1/admin/shutdown", headers=worker.headers)
    assert r.status_code == 200
    assert worker.proc.wait(timeout=10) == 0


def test_a_bad_model_file_fails_loading_and_exits(rbee_home: RbeeHome, tmp_path: Path) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    w = Worker(rbee_home, bad)
    with httpx.stream("GET", f"{w.url}/v1/loading/progress", headers=w.headers, timeout=30) as r:
        events = [e for e in sse_events(r.iter_lines()) if isinstance(e, dict)]
    assert events[-1]["stage"] == "failed"
    assert "failed to load" in events[-1]["error"]
    assert w.proc.wait(timeout=10) == 4
