"""The speculative first worker: a cold `rbee infer` starts loading its model before
the hive is up, and the hive adopts that worker only when it would load the same."""

from __future__ import annotations

import contextlib
import json
import re
import time
from pathlib import Path

import httpx
import pytest

from rbee_fabric import cpufeatures
from tests.conftest import Hive, RbeeHome, start_hive, stop_hive
from tests.integration.test_hive import alive, provision, spawn, wait_state

STARTED = re.compile(r"speculative worker (w-\w+) \(pid (\d+)\) loading")


def _hive_log(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def _speculative(log: Path, timeout: float = 30) -> tuple[str, int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if m := STARTED.search(_hive_log(log)):
            return m.group(1), int(m.group(2))
        time.sleep(0.05)
    raise AssertionError(f"no speculative worker started:\n{_hive_log(log)}")


def _gone(pid: int, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return False


def _preload(model: Path, **over: object) -> str:
    return json.dumps({"model": f"file:{model}", "n_ctx": 256, "backend": "auto",
                       "device": 0, "safe_mode": "auto", **over})  # fmt: skip


def _catalogued(home: RbeeHome, model: Path) -> None:
    """The model in the node's catalog, and no hive running (a cold start next)."""
    h = start_hive(home)
    provision(h, model)
    stop_hive(h)


def _hive_log_of(h: Hive) -> Path:
    return h.home.data.parent / f"hive-{h.port}.log"


@pytest.mark.parametrize("fast_path", ["1", "0"], ids=["lean-path", "full-path"])
def test_a_cold_infer_is_served_by_the_worker_that_loaded_before_the_hive_was_up(
    rbee_home: RbeeHome, tiny_model: Path, fast_path: str
) -> None:
    """Either path of `rbee infer` that starts the hive passes it the request."""
    rbee_home.local_node()
    base = ("infer", "--model", f"file:{tiny_model}", "--prompt", "hello", "--max-tokens", "4",
            "--seed", "3", "--temperature", "0", "--ctx-size", "256")  # fmt: skip
    first = rbee_home.run(*base)  # registers the model (no catalog entry yet: no speculation)
    assert first.returncode == 0, first.stderr
    log = rbee_home.data / "logs" / "hive.log"
    assert "speculative worker" not in _hive_log(log)
    assert rbee_home.run("hive", "stop", "localhost").returncode == 0
    try:
        cold = rbee_home.run(*base, "--json", env={"RBEE_FAST_PATH": fast_path, "PYTHONPROFILEIMPORTTIME": "1"})
        assert cold.returncode == 0, cold.stderr
        # The lean path serves the cold start it began (keeper/fastpath_cold.py): no typer.
        typer = any(re.search(r"\|\s+typer$", line) for line in cold.stderr.splitlines())
        assert typer is (fast_path == "0"), "lean path" if fast_path == "1" else "full path"
        cold.stderr = "\n".join(x for x in cold.stderr.splitlines() if not x.startswith("import time:"))
        wid, pid = _speculative(log)
        answer = json.loads(cold.stdout)
        assert answer["worker_id"] == wid and answer["reused_worker"] is False
        # The keeper's registry has it: the next infer reuses it on the lean path.
        again = rbee_home.run(*base, "--json")
        assert json.loads(again.stdout)["worker_id"] == wid and json.loads(again.stdout)["reused_worker"]
        assert f"adopted speculative worker {wid} (pid {pid})" in _hive_log(log)
        worker_log = (rbee_home.data / "logs" / f"worker-{wid}.log").read_text()
        # The lines written while llama.cpp held stderr (it loads beside the start-up) are kept.
        cpu = cpufeatures.detect()
        proof = "warm-up done" if cpu is None or cpu.amx else "no warm-up:"
        for line in (f"worker {wid} placed by the hive", f"worker {wid} listening on", proof):
            assert line in worker_log, worker_log
        listed = rbee_home.run("workers", "list", "--node", "localhost")
        assert wid in listed.stdout, listed.stdout
        # The stderr of the run reads as any cold start: the hive and a worker started.
        assert "starting it" in cold.stderr and "starting a worker" in cold.stderr, cold.stderr
    finally:
        rbee_home.run("hive", "stop", "localhost")
    assert _gone(pid), "the adopted worker goes with its hive"


def test_a_worker_that_would_load_differently_is_not_adopted(
    rbee_home: RbeeHome, tiny_model: Path
) -> None:
    _catalogued(rbee_home, tiny_model)
    h = start_hive(rbee_home, "--preload", _preload(tiny_model, n_ctx=256),
                   env={"RBEE_SPECULATION_TTL_S": "8"})  # fmt: skip
    try:
        wid, pid = _speculative(_hive_log_of(h))
        model_id = httpx.get(f"{h.url}/v1/models", headers=h.headers).json()["models"][0]["id"]
        w = spawn(h, model_id, n_ctx=128)  # another context size: another load
        assert w["id"] != wid and w["pid"] != pid and w["spawned"] is True
        # It was told where to listen before the hive was up: the keeper that started
        # the hive may be answering with it, so another decision does not end it;
        # its time does.
        assert alive(pid)
        assert _gone(pid), "an unclaimed speculative worker must not outlive its time"
        assert f"ending speculative worker {wid}" in _hive_log(_hive_log_of(h))
        assert "nobody asked for it in 8 s" in _hive_log(_hive_log_of(h))
        wait_state(h, w["id"], "idle")
    finally:
        stop_hive(h)


def test_an_unclaimed_worker_ends_after_its_time_and_with_the_hive(
    rbee_home: RbeeHome, tiny_model: Path
) -> None:
    _catalogued(rbee_home, tiny_model)
    h = start_hive(rbee_home, "--preload", _preload(tiny_model), env={"RBEE_SPECULATION_TTL_S": "1"})
    try:
        _, pid = _speculative(_hive_log_of(h))
        assert _gone(pid), "nobody asked for it: it must not stay loaded"
        assert "nobody asked for it in 1 s" in _hive_log(_hive_log_of(h))
        assert httpx.get(f"{h.url}/v1/workers", headers=h.headers).json()["workers"] == []
    finally:
        stop_hive(h)
    h = start_hive(rbee_home, "--preload", _preload(tiny_model))
    _, pid = _speculative(_hive_log_of(h))
    assert stop_hive(h) == 0
    assert _gone(pid, timeout=10), "a speculative worker goes with its hive"


def test_no_speculation_without_a_catalog_entry_or_with_a_bad_hint(
    rbee_home: RbeeHome, tiny_model: Path
) -> None:
    for hint in (_preload(tiny_model), "{not json", json.dumps({"model": 3})):
        h = start_hive(rbee_home, "--preload", hint)
        try:
            assert httpx.get(f"{h.url}/v1/health").status_code == 200
            assert "speculative worker" not in _hive_log(_hive_log_of(h))
        finally:
            stop_hive(h)
    assert "ignoring --preload" in _hive_log(_hive_log_of(h))


def test_ctrl_c_while_a_lean_cold_start_loads_forgets_and_stops_the_worker(
    rbee_home: RbeeHome, tiny_model: Path
) -> None:
    import signal
    import sqlite3
    import subprocess
    import sys

    rbee_home.local_node()
    slow = {"RBEE_WORKER_ENGINE": "scripted", "RBEE_SCRIPTED_LOAD_S": "20"}
    base = ("infer", "--model", f"file:{tiny_model}", "--prompt", "hello", "--ctx-size", "256")
    assert rbee_home.run("models", "pull", f"file:{tiny_model}").returncode == 0
    assert rbee_home.run("hive", "stop", "localhost").returncode == 0
    p = subprocess.Popen([sys.executable, "-m", "rbee_fabric.cli", *base],
                         env={**rbee_home.env, **slow}, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert p.stderr is not None
        for line in p.stderr:
            if "starting a worker" in line:
                break
        wid, pid = _speculative(rbee_home.data / "logs" / "hive.log")
        p.send_signal(signal.SIGINT)
        err = p.stderr.read()
        assert p.wait(timeout=30) == 130 and err.strip().endswith("Canceled."), err
        db = sqlite3.connect(rbee_home.data / "registry.db")
        assert db.execute("SELECT count(*) FROM workers WHERE id = ?", [wid]).fetchone() == (0,)
        db.close()
        assert _gone(pid), "the worker this keeper started must not go on loading"
    finally:
        if p.poll() is None:
            p.kill()
        rbee_home.run("hive", "stop", "localhost")


def test_a_lean_cold_start_answers_from_the_worker_before_the_hive_is_up(
    rbee_home: RbeeHome, tiny_model: Path
) -> None:
    """The hive writes its speculative worker's record to the keeper, which streams from
    that worker at once: with the hive stopped (SIGSTOP) before it listens, the answer
    still comes; the hive adopts the worker once it runs again."""
    import os
    import signal
    import subprocess
    import sys
    import threading

    import psutil

    rbee_home.local_node()
    assert rbee_home.run("models", "pull", f"file:{tiny_model}").returncode == 0
    assert rbee_home.run("hive", "stop", "localhost").returncode == 0
    log = rbee_home.data / "logs" / "hive.log"
    before = _hive_log(log)
    args = ("infer", "--model", f"file:{tiny_model}", "--prompt", "hello", "--max-tokens", "4",
            "--seed", "3", "--temperature", "0", "--ctx-size", "256")  # fmt: skip
    p = subprocess.Popen([sys.executable, "-m", "rbee_fabric.cli", *args], env=rbee_home.env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    hive_pid = None
    try:
        deadline = time.monotonic() + 30
        while not (m := STARTED.search(_hive_log(log)[len(before):])):
            assert time.monotonic() < deadline and p.poll() is None, "no speculative worker"
            time.sleep(0.01)
        wid, pid = m.group(1), int(m.group(2))
        hive_pid = psutil.Process(pid).ppid()
        os.kill(hive_pid, signal.SIGSTOP)
        assert "listening on" not in _hive_log(log)[len(before):], "the hive was up already: nothing shown"
        assert p.stderr is not None
        err: list[str] = []
        reader = threading.Thread(target=lambda: err.extend(p.stderr), daemon=True)  # type: ignore[arg-type]
        reader.start()
        deadline = time.monotonic() + 60
        while not any("tokens in" in x for x in err):  # the summary comes after the last token
            assert time.monotonic() < deadline and p.poll() is None, "no answer: " + "".join(err)
            time.sleep(0.05)
        assert "listening on" not in _hive_log(log)[len(before):]  # still stopped: no hive helped
        os.kill(hive_pid, signal.SIGCONT)
        assert p.wait(timeout=120) == 0, "".join(err)
        reader.join(timeout=10)
        assert p.stdout is not None
        out = p.stdout.read()
        assert out.strip(), "no answer on stdout"
        assert f"adopted speculative worker {wid} (pid {pid})" in _hive_log(log)
        again = rbee_home.run(*args, "--json")  # the hive's worker now, reused
        assert json.loads(again.stdout)["worker_id"] == wid and json.loads(again.stdout)["reused_worker"]
    finally:
        if hive_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(hive_pid, signal.SIGCONT)
        if p.poll() is None:
            p.kill()
            p.wait()
        rbee_home.run("hive", "stop", "localhost")
