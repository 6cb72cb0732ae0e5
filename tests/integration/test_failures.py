"""SPEC section 7 and issue 5: every failure induced for real, seen as a user sees it.

Each test runs the real programs as processes, causes the fault (kill a
process, hold a slot, send SIGINT, rotate a key...), then checks the message,
the exit code, that the registry and the hive agree, and what is left running.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import RbeeHome
from tests.support.procs import processes_with_env

SCRIPTED = {"RBEE_WORKER_ENGINE": "scripted", "RBEE_SCRIPTED_DELAY_MS": "100"}


def popen_rbee(home: RbeeHome, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "rbee_fabric.cli", *args], env={**home.env, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip




def hive_workers(home: RbeeHome, port: int) -> list[dict]:
    key = home.api_key
    r = httpx.get(f"http://127.0.0.1:{port}/v1/workers", headers={"Authorization": f"Bearer {key}"})
    return r.json()["workers"]


def registry_ids(home: RbeeHome) -> list[str]:
    from rbee_fabric.keeper.registry import Registry

    reg = Registry(home.data / "registry.db")
    try:
        return [r.id for r in reg.list()]
    finally:
        reg.close()


def wait_for(predicate, timeout: float = 15.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def alive(pid: int) -> bool:
    try:
        return ") Z " not in Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False


def stop(home: RbeeHome) -> None:
    r = home.run("hive", "stop", "localhost")
    assert r.returncode == 0, r.stderr


@pytest.fixture
def local(rbee_home: RbeeHome) -> RbeeHome:
    rbee_home.hive_port = rbee_home.local_node()  # type: ignore[attr-defined]
    return rbee_home


def warm_worker(home: RbeeHome, model: Path, env: dict[str, str] | None = None) -> dict:
    r = home.run("infer", "--model", f"file:{model}", "--prompt", "x", "--max-tokens", "2", "--json", env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


# 1 ---------------------------------------------------------------------------


def test_1_hive_unreachable_three_attempts_then_hive_not_running(local: RbeeHome, tiny_model: Path) -> None:
    t0 = time.monotonic()
    r = local.run("infer", "--no-start-hive", "--model", f"file:{tiny_model}", "--prompt", "x")
    assert r.returncode == 1
    for n in (1, 2, 3):
        assert f"attempt {n}/3" in r.stderr
    # A refused connection is not a timeout: it says plainly that the hive is not running.
    assert f"HIVE_NOT_RUNNING: rbee-hive is not running on localhost: nothing listens at http://127.0.0.1:{local.hive_port} after 3 attempts" in r.stderr  # type: ignore[attr-defined]
    assert "Suggestion: start it: rbee hive start localhost, or run without --no-start-hive" in r.stderr
    assert time.monotonic() - t0 >= 0.6  # 200 ms + 400 ms of backoff
    assert registry_ids(local) == []


# 3 ---------------------------------------------------------------------------


def test_3_model_too_big_is_refused_before_any_worker(local: RbeeHome, tiny_model: Path, tmp_path: Path) -> None:
    huge = tmp_path / "huge-Q8_0.gguf"
    huge.write_bytes(tiny_model.read_bytes())
    os.truncate(huge, 300 * 2**30)  # sparse: 300 GB on paper
    try:
        r = local.run("infer", "--model", f"file:{huge}", "--prompt", "x")
        assert r.returncode == 1
        assert "INSUFFICIENT_RAM" in r.stderr
        assert "MB of RAM" in r.stderr and "available" in r.stderr
        assert "smaller quantization" in r.stderr
        assert hive_workers(local, local.hive_port) == []  # type: ignore[attr-defined]
        assert registry_ids(local) == []
    finally:
        stop(local)


# 4 ---------------------------------------------------------------------------


def test_4_worker_killed_mid_generation(local: RbeeHome, tiny_model: Path) -> None:
    first = warm_worker(local, tiny_model, env=SCRIPTED)
    worker = hive_workers(local, local.hive_port)[0]  # type: ignore[attr-defined]
    p = popen_rbee(local, "infer", "--model", f"file:{tiny_model}", "--prompt", "x", "--max-tokens", "300", env=SCRIPTED)
    try:
        assert p.stdout is not None
        seen = p.stdout.read(20)  # a few tokens have reached the terminal
        assert "tok" in seen
        os.kill(worker["pid"], signal.SIGKILL)
        out, err = p.communicate(timeout=30)
        assert p.returncode == 1
        printed = seen + out
        assert "WORKER_CRASHED" in err
        assert "/ 300)" in err and "tokens generated" in err
        saved = Path(err.split("saved in ")[1].split(";")[0].strip())
        assert saved.read_text() == printed.rstrip("\n")
        assert wait_for(lambda: hive_workers(local, local.hive_port) == [])  # type: ignore[attr-defined]
        assert first["worker_id"] not in registry_ids(local)
        # No automatic restart; the next call starts a fresh worker and works.
        again = warm_worker(local, tiny_model, env=SCRIPTED)
        assert again["worker_id"] != first["worker_id"] and not again["reused_worker"]
    finally:
        p.kill() if p.poll() is None else None
        stop(local)


# 5 ---------------------------------------------------------------------------


def test_5_ctrl_c_cancels_the_generation_and_exits_130(local: RbeeHome, tiny_model: Path) -> None:
    warm_worker(local, tiny_model, env=SCRIPTED)
    p = popen_rbee(local, "infer", "--model", f"file:{tiny_model}", "--prompt", "x", "--max-tokens", "300", env=SCRIPTED)
    try:
        assert p.stdout is not None
        assert "tok" in p.stdout.read(20)
        t0 = time.monotonic()
        p.send_signal(signal.SIGINT)
        _out, err = p.communicate(timeout=15)
        assert p.returncode == 130
        assert err.strip().endswith("Canceled.")
        assert "Traceback" not in err
        assert time.monotonic() - t0 < 6  # acknowledged within the 5 s budget
        worker = hive_workers(local, local.hive_port)[0]  # type: ignore[attr-defined]
        ready = httpx.get(f"{worker['url']}/v1/ready", headers={"Authorization": f"Bearer {local.api_key}"}).json()
        assert ready["state"] == "idle"  # stopped generating, ready for the next request
    finally:
        p.kill() if p.poll() is None else None
        stop(local)


# 6 ---------------------------------------------------------------------------


def test_6_busy_worker_queues_the_request_until_the_queue_timeout(local: RbeeHome, tiny_model: Path) -> None:
    warm_worker(local, tiny_model, env=SCRIPTED)
    long = popen_rbee(local, "infer", "--model", f"file:{tiny_model}", "--prompt", "x", "--max-tokens", "400", env=SCRIPTED)
    try:
        assert long.stdout is not None and "tok" in long.stdout.read(10)
        r = local.run("infer", "--model", f"file:{tiny_model}", "--prompt", "y", "--queue-timeout", "2", env=SCRIPTED)
        assert r.returncode == 1
        assert "queued (position 1)" in r.stderr
        assert "QUEUE_TIMEOUT" in r.stderr and "waited 2 s in the queue" in r.stderr
        assert "Suggestion:" in r.stderr
        assert "ALL_SLOTS_BUSY" not in r.stderr
        assert long.poll() is None, "the running generation must not be disturbed"
        worker = hive_workers(local, local.hive_port)[0]  # type: ignore[attr-defined]
        ready = httpx.get(f"{worker['url']}/v1/ready", headers={"Authorization": f"Bearer {local.api_key}"}).json()
        assert ready["queued"] == 0  # the timed-out request left the queue
    finally:
        long.send_signal(signal.SIGINT)
        long.communicate(timeout=15)
        stop(local)


# 7 ---------------------------------------------------------------------------


def test_7_loading_timeout_stops_the_stuck_worker(local: RbeeHome, tiny_model: Path) -> None:
    slow_load = {**SCRIPTED, "RBEE_SCRIPTED_LOAD_S": "120"}
    try:
        # The hive is up first, so the timeout measures loading, not a hive start on a busy machine.
        assert local.run("hive", "start", "localhost", env=slow_load).returncode == 0
        r = local.run("infer", "--model", f"file:{tiny_model}", "--prompt", "x", "--timeout", "6", env=slow_load)
        assert r.returncode == 1
        assert "LOADING_TIMEOUT" in r.stderr and "within 6 s" in r.stderr
        assert "% loaded" in r.stderr  # the last progress seen
        assert hive_workers(local, local.hive_port) == []  # type: ignore[attr-defined]
        assert registry_ids(local) == []
        workers = [pid for pid in processes_with_env("RBEE_TEST_MARKER", local.marker)
                   if b"rbee_fabric.worker" in Path(f"/proc/{pid}/cmdline").read_bytes()]  # fmt: skip
        assert workers == [], "the stuck worker was leaked"
    finally:
        stop(local)


# 8 ---------------------------------------------------------------------------


def test_8_version_mismatch(local: RbeeHome, tiny_model: Path, tmp_path: Path) -> None:
    # A real hive of another version: a copy of the package that says 0.0.9.
    old = tmp_path / "old"
    shutil.copytree(Path(__file__).parents[2] / "rbee_fabric", old / "rbee_fabric")
    init = old / "rbee_fabric" / "__init__.py"
    init.write_text(init.read_text().replace('__version__ = "0.1.0"', '__version__ = "0.0.9"'))
    hive = subprocess.Popen([sys.executable, "-m", "rbee_fabric.hive", "--port", str(local.hive_port)],  # type: ignore[attr-defined]
                            env={**local.env, "PYTHONPATH": str(old)}, cwd=old,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        assert wait_for(lambda: local.run("hive", "status", "localhost").returncode == 0)
        r = local.run("infer", "--model", f"file:{tiny_model}", "--prompt", "x")
        assert r.returncode == 1
        assert "VERSION_MISMATCH" in r.stderr and "0.1.0" in r.stderr and "0.0.9" in r.stderr
        assert "rbee nodes install localhost --upgrade" in r.stderr
    finally:
        hive.terminate()
        hive.wait(timeout=30)


# 9 ---------------------------------------------------------------------------


def test_9_wrong_api_key_names_the_node_and_the_key_file(local: RbeeHome, tiny_model: Path) -> None:
    assert local.run("hive", "start", "localhost").returncode == 0
    try:
        (local.config / "api_key").write_text("rotated-by-someone\n")  # the hive still has the old key
        r = local.run("infer", "--model", f"file:{tiny_model}", "--prompt", "x")
        assert r.returncode == 1
        assert "INVALID_API_KEY" in r.stderr and "localhost refused the API key" in r.stderr
        assert str(local.config / "api_key") in r.stderr
    finally:
        # stop by pid file: the hive is still ours even if its key is not
        r = local.run("hive", "stop", "localhost")
        assert r.returncode == 0


# 10 --------------------------------------------------------------------------


def test_10_idle_timeout_stops_the_worker_then_a_new_one_starts(local: RbeeHome, tiny_model: Path) -> None:
    assert local.run("hive", "start", "localhost", "--idle-timeout", "2").returncode == 0
    try:
        first = warm_worker(local, tiny_model)
        pid = hive_workers(local, local.hive_port)[0]["pid"]  # type: ignore[attr-defined]
        assert wait_for(lambda: not alive(pid), timeout=20), "idle worker still running"
        assert hive_workers(local, local.hive_port) == []  # type: ignore[attr-defined]
        again = warm_worker(local, tiny_model)
        assert again["worker_id"] != first["worker_id"] and not again["reused_worker"]
        assert registry_ids(local) == [again["worker_id"]]  # the stale entry was dropped
    finally:
        stop(local)


# start-up failures ------------------------------------------------------------


def test_a_worker_that_cannot_load_is_reported_with_its_log(local: RbeeHome, tiny_model: Path, tmp_path: Path) -> None:
    cut = tmp_path / "truncated.gguf"
    data = tiny_model.read_bytes()
    cut.write_bytes(data[: len(data) // 2])  # header intact, weights cut off
    t0 = time.monotonic()
    try:
        r = local.run("infer", "--model", f"file:{cut}", "--prompt", "x")
        assert r.returncode == 1
        assert "WORKER_START_FAILED" in r.stderr
        assert "failed to load" in r.stderr  # from the worker's own log
        assert time.monotonic() - t0 < 30
        assert hive_workers(local, local.hive_port) == []  # type: ignore[attr-defined]
        assert registry_ids(local) == []
    finally:
        stop(local)


def test_keeper_killed_mid_generation_leaves_things_consistent(local: RbeeHome, tiny_model: Path) -> None:
    warm_worker(local, tiny_model, env=SCRIPTED)
    p = popen_rbee(local, "infer", "--model", f"file:{tiny_model}", "--prompt", "x", "--max-tokens", "300", env=SCRIPTED)
    try:
        assert p.stdout is not None and "tok" in p.stdout.read(10)
        p.kill()
        p.wait()
        r = local.run("infer", "--model", f"file:{tiny_model}", "--prompt", "x", "--max-tokens", "3", "--json", env=SCRIPTED)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["reused_worker"] is True  # the worker noticed and went idle
        assert len(hive_workers(local, local.hive_port)) == 1  # type: ignore[attr-defined]
    finally:
        stop(local)


def test_hive_port_taken_by_another_program(local: RbeeHome, tiny_model: Path) -> None:
    import socket

    squatter = socket.socket()
    squatter.bind(("127.0.0.1", local.hive_port))  # type: ignore[attr-defined]
    squatter.listen(1)
    try:
        r = local.run("infer", "--model", f"file:{tiny_model}", "--prompt", "x", timeout=90)
        assert r.returncode == 1
        assert "CONNECTION_TIMEOUT" in r.stderr or "address already in use" in r.stderr.lower()
        assert "Traceback" not in r.stderr
    finally:
        squatter.close()
