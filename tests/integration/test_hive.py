"""The hive as a real process, spawning real workers on the tiny model."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import Hive, RbeeHome, start_hive, stop_hive


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return ") Z " not in stat


def provision(hive: Hive, model: Path) -> dict:
    r = httpx.post(f"{hive.url}/v1/models/download", json={"reference": f"file:{model}"}, headers=hive.headers)
    assert r.status_code == 200, r.text
    return r.json()["model"]


def spawn(hive: Hive, model_id: str, **extra: object) -> dict:
    r = httpx.post(f"{hive.url}/v1/workers/spawn", json={"model_id": model_id, **extra}, headers=hive.headers, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def wait_state(hive: Hive, wid: str, state: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = httpx.get(f"{hive.url}/v1/workers/{wid}", headers=hive.headers)
        if r.status_code == 200 and r.json()["state"] == state:
            return r.json()
        time.sleep(0.05)
    raise AssertionError(f"worker {wid} never reached {state}: {r.text}")


def test_health_reports_version_without_a_key(hive: Hive) -> None:
    body = httpx.get(f"{hive.url}/v1/health").json()
    assert body == {"status": "ok", "version": "0.1.0", "api_version": "1"}
    assert httpx.get(f"{hive.url}/v1/workers").status_code == 401


def test_spawn_callback_list_stop(hive: Hive, tiny_model: Path) -> None:
    model = provision(hive, tiny_model)
    assert model["architecture"] == "llama"
    w = spawn(hive, model["id"], backend="auto")
    assert w["backend"] == "cpu"  # auto resolved on a CPU-only build, not hard-coded
    assert os.getpgid(w["pid"]) == w["pid"], "a worker runs in its own process group"
    wait_state(hive, w["id"], "idle")
    listed = httpx.get(f"{hive.url}/v1/workers", headers=hive.headers).json()["workers"]
    assert [x["id"] for x in listed] == [w["id"]]
    r = httpx.post(f"{hive.url}/v1/workers/{w['id']}/shutdown", headers=hive.headers, timeout=30)
    assert r.status_code == 200
    assert not alive(w["pid"])
    assert httpx.get(f"{hive.url}/v1/workers", headers=hive.headers).json()["workers"] == []


def test_two_workers_get_two_free_ports_and_die_with_the_hive(rbee_home: RbeeHome, tiny_model: Path) -> None:
    h = start_hive(rbee_home)
    model = provision(h, tiny_model)
    a, b = spawn(h, model["id"], n_ctx=256), spawn(h, model["id"], n_ctx=128)  # two configurations
    assert a["url"] != b["url"]
    wait_state(h, a["id"], "idle")
    wait_state(h, b["id"], "idle")
    assert stop_hive(h) == 0
    assert not alive(a["pid"]) and not alive(b["pid"])


def test_one_spawn_per_configuration(hive: Hive, tiny_model: Path) -> None:
    model = provision(hive, tiny_model)
    first = spawn(hive, model["id"], n_ctx=256)
    again = spawn(hive, model["id"], n_ctx=256)  # still starting or loading: the same worker
    assert again["id"] == first["id"] and first["spawned"] is True and again["spawned"] is False
    assert first["n_ctx"] == 256
    other = spawn(hive, model["id"], n_ctx=128)  # another context size: another worker
    assert other["id"] != first["id"] and other["spawned"] is True
    listed = httpx.get(f"{hive.url}/v1/workers", headers=hive.headers).json()["workers"]
    assert sorted(w["id"] for w in listed) == sorted([first["id"], other["id"]])


def test_memory_of_a_loading_worker_is_reserved(rbee_home: RbeeHome, tiny_model: Path, tmp_path: Path) -> None:
    """Free memory does not show a worker still loading: the fit check must count it."""
    h = start_hive(rbee_home, env={"RBEE_WORKER_ENGINE": "scripted", "RBEE_SCRIPTED_LOAD_S": "60"})
    try:
        available = httpx.get(f"{h.url}/v1/resources", headers=h.headers).json()["ram_available_mb"]
        big = tmp_path / "big-Q8_0.gguf"
        big.write_bytes(tiny_model.read_bytes())
        os.truncate(big, int(available * 0.6 / 1.2 * 2**20))  # sparse: needs 60% of free RAM
        model = provision(h, big)
        first = spawn(h, model["id"], n_ctx=256)
        assert first["spawned"] is True
        r = httpx.post(f"{h.url}/v1/workers/spawn", json={"model_id": model["id"], "n_ctx": 128},
                       headers=h.headers, timeout=30)  # fmt: skip
        assert r.status_code == 507, r.text
        assert r.json()["error"]["code"] == "INSUFFICIENT_RAM"
        assert httpx.get(f"{h.url}/v1/workers/{first['id']}", headers=h.headers).json()["state"] in ("starting", "loading")
    finally:
        stop_hive(h)


def test_a_killed_worker_is_noticed_and_forgotten(hive: Hive, tiny_model: Path) -> None:
    w = spawn(hive, provision(hive, tiny_model)["id"])
    wait_state(hive, w["id"], "idle")
    os.kill(w["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        r = httpx.get(f"{hive.url}/v1/workers/{w['id']}", headers=hive.headers)
        if r.status_code == 404:
            break
        time.sleep(0.05)
    err = r.json()["error"]
    assert err["code"] == "WORKER_NOT_FOUND"
    assert err["details"]["exited"]["exit_code"] == -9
    assert err["details"]["exited"]["reason"] == "exited unexpectedly"


def test_idle_workers_are_stopped(rbee_home: RbeeHome, tiny_model: Path) -> None:
    h = start_hive(rbee_home, "--idle-timeout", "1")
    try:
        w = spawn(h, provision(h, tiny_model)["id"])
        wait_state(h, w["id"], "idle")
        deadline = time.monotonic() + 15
        while alive(w["pid"]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(w["pid"]), "idle worker was not stopped"
        assert httpx.get(f"{h.url}/v1/workers", headers=h.headers).json()["workers"] == []
    finally:
        stop_hive(h)


def test_a_model_too_big_for_ram_is_refused_before_any_worker(hive: Hive, tiny_model: Path, tmp_path: Path) -> None:
    # A real GGUF header followed by a sparse hole: 200 GB on paper, nothing on disk.
    huge = tmp_path / "huge.gguf"
    huge.write_bytes(tiny_model.read_bytes())
    os.truncate(huge, 200 * 2**30)
    model = provision(hive, huge)
    r = httpx.post(f"{hive.url}/v1/workers/spawn", json={"model_id": model["id"]}, headers=hive.headers)
    assert r.status_code == 507
    err = r.json()["error"]
    assert err["code"] == "INSUFFICIENT_RAM"
    assert err["details"]["required_mb"] > err["details"]["available_mb"]
    assert "smaller quant" in err["details"]["hint"]
    assert httpx.get(f"{hive.url}/v1/workers", headers=hive.headers).json()["workers"] == []


@pytest.mark.parametrize(
    ("reference", "status", "code"),
    [
        ("no-such-model", 404, "MODEL_NOT_FOUND"),
        ("file:/nonexistent/m.gguf", 404, "MODEL_NOT_FOUND"),
        ("file:relative.gguf", 422, "INVALID_REQUEST"),
        ("hf:bad", 422, "INVALID_REQUEST"),
    ],
)
def test_bad_references(hive: Hive, reference: str, status: int, code: str) -> None:
    r = httpx.post(f"{hive.url}/v1/models/download", json={"reference": reference}, headers=hive.headers)
    assert r.status_code == status
    assert r.json()["error"]["code"] == code


def test_unknown_backend_is_refused_with_what_exists(hive: Hive, tiny_model: Path) -> None:
    model = provision(hive, tiny_model)
    r = httpx.post(f"{hive.url}/v1/workers/spawn", json={"model_id": model["id"], "backend": "metal"}, headers=hive.headers)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "BACKEND_UNAVAILABLE"
    assert "cpu" in r.json()["error"]["details"]["available"]


def test_removing_a_file_model_keeps_the_users_file(hive: Hive, tiny_model: Path) -> None:
    model = provision(hive, tiny_model)
    r = httpx.delete(f"{hive.url}/v1/models/{model['id']}", headers=hive.headers)
    assert r.status_code == 200
    assert tiny_model.exists()
    assert httpx.get(f"{hive.url}/v1/models", headers=hive.headers).json()["models"] == []
