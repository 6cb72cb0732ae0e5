"""Issue 10: an engine that crashes while loading (llama.cpp's AMX kernels on some
CPUs) gets one restart in safe mode; the node remembers it; a second crash is
reported without "run it again"; a kill from outside is not taken for a crash.

The crash is induced for real: the scripted engine sends SIGSEGV to its own
process during warm-up (RBEE_SCRIPTED_CRASH). Hive, worker and keeper are the
real programs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import RbeeHome

SCRIPTED = {"RBEE_WORKER_ENGINE": "scripted", "RBEE_SCRIPTED_DELAY_MS": "5"}
SAFE_LINE = "localhost runs llama.cpp in safe mode (AMX/repacking off): "


@pytest.fixture
def local(rbee_home: RbeeHome) -> RbeeHome:
    rbee_home.hive_port = rbee_home.local_node()  # type: ignore[attr-defined]
    return rbee_home


def set_policy(home: RbeeHome, policy: str) -> None:
    inv = Path(home.env["RBEE_INVENTORY"])
    inv.write_text(inv.read_text() + f'safe_mode = "{policy}"\n')


def workers(home: RbeeHome) -> list[dict]:
    r = httpx.get(f"http://127.0.0.1:{home.hive_port}/v1/workers",  # type: ignore[attr-defined]
                  headers={"Authorization": f"Bearer {home.api_key}"})  # fmt: skip
    return list(r.json()["workers"])


def infer(home: RbeeHome, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return home.run("infer", "--model", f"file:{home.model}", "--prompt", "x",  # type: ignore[attr-defined]
                    "--max-tokens", "3", env=env)  # fmt: skip


def hive_log(home: RbeeHome) -> str:
    return (home.data / "logs" / "hive.log").read_text()


def node_checks(home: RbeeHome) -> dict[str, dict]:
    r = home.run("nodes", "check", "localhost", "--json")
    [node] = json.loads(r.stdout)["nodes"]
    return {c["name"]: c for c in node["checks"]}


def stop(home: RbeeHome) -> None:
    r = home.run("hive", "stop", "localhost")
    assert r.returncode == 0, r.stderr


@pytest.fixture
def crashing(local: RbeeHome, tiny_model: Path) -> RbeeHome:
    local.model = tiny_model  # type: ignore[attr-defined]
    return local


def test_crash_in_warmup_restarts_once_in_safe_mode_and_is_remembered(crashing: RbeeHome) -> None:
    env = {**SCRIPTED, "RBEE_SCRIPTED_CRASH": "warmup"}
    try:
        r = infer(crashing, env)
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == ["tok0", "tok1", "tok2"]
        lines = [ln for ln in r.stderr.splitlines() if ln.startswith(SAFE_LINE)]
        assert lines == [SAFE_LINE + "the engine crashed with SIGSEGV on this CPU while loading; "
                         "decode may be slower"]  # fmt: skip
        [w] = workers(crashing)
        assert w["safe_mode"] is True and "SIGSEGV" in w["safe_mode_reason"]
        log = Path(crashing.data / "logs" / f"worker-{w['id']}.log").read_text()
        assert log.count("crashing in warm-up") == 1  # one crash, one restart, same worker id
        assert log.count("restarting in safe mode") == 1
        assert hive_log(crashing).count("restarting it once in safe mode") == 1
        record = json.loads((crashing.data / "safe_mode.json").read_text())
        [(build, rec)] = record["builds"].items()
        assert build.startswith("llama-cpp-python ") and rec["signal"] == "SIGSEGV"

        # `rbee nodes check` shows the CPU features and warns that safe mode is on, and what it costs.
        checks = node_checks(crashing)
        assert checks["cpu"]["status"] in ("pass", "warn") and "AVX2" in checks["cpu"]["detail"]
        assert "AMX" in checks["cpu"]["detail"] and "AVX-512" in checks["cpu"]["detail"]
        safe = checks["safe mode"]
        assert safe["status"] == "warn" and "SIGSEGV" in safe["detail"] and "slower" in safe["detail"]
        assert "safe_mode.json" in safe["fix"]

        # The second run reuses that worker.
        again = crashing.run("infer", "--model", f"file:{crashing.model}", "--prompt", "x",  # type: ignore[attr-defined]
                             "--max-tokens", "2", "--json", env=env)  # fmt: skip
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["worker_id"] == w["id"]

        # A fresh hive and worker on this node start in safe mode directly: no crash.
        stop(crashing)
        third = infer(crashing, env)
        assert third.returncode == 0, third.stderr
        assert sum(ln.startswith(SAFE_LINE) for ln in third.stderr.splitlines()) == 1
        [w2] = workers(crashing)
        assert w2["id"] != w["id"] and w2["safe_mode"] is True
        log2 = Path(crashing.data / "logs" / f"worker-{w2['id']}.log").read_text()
        assert "crashing in warm-up" not in log2 and "safe mode: llama.cpp extra buffer types off" in log2
        assert hive_log(crashing).count("restarting it once in safe mode") == 1
    finally:
        stop(crashing)


def test_crash_in_safe_mode_too_is_start_failed_with_signal_and_log(crashing: RbeeHome) -> None:
    try:
        r = infer(crashing, {**SCRIPTED, "RBEE_SCRIPTED_CRASH": "always"})
        assert r.returncode == 1
        assert "WORKER_START_FAILED" in r.stderr
        assert "crashed with SIGSEGV while loading, in safe mode too" in r.stderr
        assert "scripted engine: crashing in warm-up (safe mode True)" in r.stderr  # the log tail
        assert "Suggestion:" in r.stderr and "--backend" in r.stderr
        assert "run the command again" not in r.stderr and "try again" not in r.stderr
        assert workers(crashing) == []
        assert not (crashing.data / "safe_mode.json").exists()  # safe mode did not help: not recorded
        assert "safe mode" not in node_checks(crashing)
        assert hive_log(crashing).count("restarting it once in safe mode") == 1
    finally:
        stop(crashing)


def test_inventory_safe_mode_off_never_restarts_and_says_how_to_allow_it(crashing: RbeeHome) -> None:
    set_policy(crashing, "off")
    try:
        r = infer(crashing, {**SCRIPTED, "RBEE_SCRIPTED_CRASH": "warmup"})
        assert r.returncode == 1
        assert "WORKER_START_FAILED" in r.stderr and "crashed with SIGSEGV while loading" in r.stderr
        assert 'safe_mode = "off"' in r.stderr
        assert "restarting it once in safe mode" not in hive_log(crashing)
    finally:
        stop(crashing)


def test_inventory_safe_mode_on_starts_in_safe_mode_without_a_crash(crashing: RbeeHome) -> None:
    set_policy(crashing, "on")
    try:
        r = infer(crashing, {**SCRIPTED, "RBEE_SCRIPTED_CRASH": "warmup"})
        assert r.returncode == 0, r.stderr
        assert SAFE_LINE + 'safe_mode = "on" for this node in the inventory' in r.stderr
        [w] = workers(crashing)
        assert "crashing in warm-up" not in Path(crashing.data / "logs" / f"worker-{w['id']}.log").read_text()
        assert not (crashing.data / "safe_mode.json").exists()  # forced, not learned
    finally:
        stop(crashing)


def test_sigkill_from_outside_while_loading_is_not_an_engine_crash(crashing: RbeeHome) -> None:
    env = {**crashing.env, **SCRIPTED, "RBEE_SCRIPTED_LOAD_S": "60"}
    p = subprocess.Popen([sys.executable, "-m", "rbee_fabric.cli", "infer", "--model",
                          f"file:{crashing.model}", "--prompt", "x"],  # type: ignore[attr-defined]
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        seen: list[dict] = []
        while time.monotonic() < deadline and not seen:
            with contextlib.suppress(httpx.HTTPError):
                seen = [w for w in workers(crashing) if w["state"] == "loading"]
            time.sleep(0.1)
        assert seen, "the worker never reached loading"
        os.kill(seen[0]["pid"], signal.SIGKILL)
        _out, err = p.communicate(timeout=60)
        assert p.returncode == 1
        assert "WORKER_START_FAILED" in err
        assert "safe mode" not in err and "SIGSEGV" not in err
        assert "restarting it once in safe mode" not in hive_log(crashing)
        assert not (crashing.data / "safe_mode.json").exists()
    finally:
        p.kill() if p.poll() is None else None
        stop(crashing)
