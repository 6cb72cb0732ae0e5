"""Issue 13: every request served. A queue on the worker, one start per node and
per model configuration, replicas, a lost connection that is not a crash, and
the context size checked before anything loads.

Real hive and worker processes (the scripted engine for speed: 100 ms a token)
and real `rbee` keepers; only the engine is scripted.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Hive, RbeeHome
from tests.support.procs import processes_with_env
from tests.support.proxy import CuttableProxy

SCRIPTED = {"RBEE_WORKER_ENGINE": "scripted", "RBEE_SCRIPTED_DELAY_MS": "100"}


def popen_rbee(home: RbeeHome, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "rbee_fabric.cli", *args], env={**home.env, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def wait_for(predicate: Any, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def ready(worker_url: str, headers: dict[str, str]) -> dict[str, Any]:
    """The worker's /v1/ready ({} while it does not answer yet)."""
    try:
        return httpx.get(f"{worker_url}/v1/ready", headers=headers).json()  # type: ignore[no-any-return]
    except httpx.HTTPError:
        return {}


def hive_workers(home: RbeeHome, port: int) -> list[dict[str, Any]]:
    r = httpx.get(f"http://127.0.0.1:{port}/v1/workers", headers={"Authorization": f"Bearer {home.api_key}"})
    return r.json()["workers"]  # type: ignore[no-any-return]


def hive_pids(home: RbeeHome) -> list[int]:
    pids = processes_with_env("RBEE_TEST_MARKER", home.marker)
    return [p for p in pids if b"rbee_fabric.hive" in Path(f"/proc/{p}/cmdline").read_bytes()]


def set_inventory(home: RbeeHome, **keys: int) -> int:
    port = home.local_node()
    extra = "".join(f"{k} = {v}\n" for k, v in keys.items())
    path = Path(home.env["RBEE_INVENTORY"])
    path.write_text(path.read_text() + extra)
    return port


def stop(home: RbeeHome) -> None:
    r = home.run("hive", "stop", "localhost")
    assert r.returncode == 0, r.stderr


# ------------------------------------------------------------ the worker's queue


@pytest.fixture
def slow_worker(scripted_hive: Hive, tiny_model: Path) -> dict[str, Any]:
    """One ready worker of a real hive (50 ms a token), at most 30 waiting."""
    h = scripted_hive
    model = httpx.post(f"{h.url}/v1/models/download", json={"reference": f"file:{tiny_model}"},
                       headers=h.headers).json()["model"]  # fmt: skip
    info = httpx.post(f"{h.url}/v1/workers/spawn", json={"model_id": model["id"], "max_queue": 30},
                      headers=h.headers).json()  # fmt: skip
    assert wait_for(lambda: ready(info["url"], h.headers).get("ready"))
    return {**info, "headers": h.headers, "hive": h}


def generate(worker: dict[str, Any], request_id: str, max_tokens: int, out: dict[str, list[Any]],
             arrived: threading.Event | None = None) -> None:  # fmt: skip
    """One client: every event it receives, in order, under out[request_id]."""
    body = {"prompt": "x", "max_tokens": max_tokens, "request_id": request_id}
    events: list[Any] = []
    out[request_id] = events
    with httpx.stream("POST", f"{worker['url']}/v1/inference", json=body, headers=worker["headers"],
                      timeout=120) as r:  # fmt: skip
        events.append(r.status_code)
        for line in r.iter_lines():
            if line.startswith("data: "):
                payload = line[6:]
                events.append(payload if payload == "[DONE]" else json.loads(payload))
                if arrived is not None:
                    arrived.set()  # the worker has it: running, or in the queue
        events.append(("finished", time.monotonic()))


def generation_order(worker: dict[str, Any]) -> list[str]:
    """Request ids in the order the worker started generating them (its log)."""
    log = Path(worker["hive"].home.data / "logs" / f"worker-{worker['id']}.log").read_text()
    return [line.split("generating ")[1].split()[0] for line in log.splitlines() if "generating " in line]


def test_20_concurrent_clients_all_complete_in_arrival_order(slow_worker: dict[str, Any]) -> None:
    out: dict[str, list[Any]] = {}
    threads = []
    for i in range(20):  # a known arrival order: each one is at the worker before the next starts
        arrived = threading.Event()
        t = threading.Thread(target=generate, args=(slow_worker, f"r{i:02d}", 8, out, arrived))
        t.start()
        threads.append(t)
        assert arrived.wait(20)
    for t in threads:
        t.join(120)
    assert sorted(out) == [f"r{i:02d}" for i in range(20)]
    for rid, events in out.items():
        assert events[0] == 200, (rid, events)
        done = [e for e in events if isinstance(e, dict) and e.get("done")]
        assert done and done[0]["total_tokens"] == 8, (rid, events)
    # Each waiting client was told its place when it arrived, then each move up to 1.
    waited = 0
    for i in range(1, 20):
        positions = [e["position"] for e in out[f"r{i:02d}"] if isinstance(e, dict) and e.get("queued")]
        if positions:
            waited += 1
            assert positions == list(range(positions[0], 0, -1)), (i, positions)
    assert waited >= 15  # they arrived one after another, each generation takes 400 ms
    assert generation_order(slow_worker) == [f"r{i:02d}" for i in range(20)]  # first come, first served
    now = ready(slow_worker["url"], slow_worker["headers"])
    assert now["state"] == "idle" and now["queued"] == 0


def _in_line(r: dict[str, Any]) -> int:
    """Requests the worker holds: the running one and those queued."""
    return int(r["state"] == "busy") + int(r["queued"])


def test_a_full_queue_answers_queue_full_with_retry_after(scripted_hive: Hive, tiny_model: Path) -> None:
    h = scripted_hive
    model = httpx.post(f"{h.url}/v1/models/download", json={"reference": f"file:{tiny_model}"},
                       headers=h.headers).json()["model"]  # fmt: skip
    info = httpx.post(f"{h.url}/v1/workers/spawn", json={"model_id": model["id"], "max_queue": 2},
                      headers=h.headers).json()  # fmt: skip
    worker = {**info, "headers": h.headers}
    assert wait_for(lambda: ready(info["url"], h.headers).get("ready"))
    out: dict[str, list[Any]] = {}
    # The first runs long enough (60 tokens) for the other two to queue behind it.
    threads = [threading.Thread(target=generate, args=(worker, f"r{i}", n, out)) for i, n in enumerate((60, 5, 5))]
    for i, t in enumerate(threads):  # one at a time, so they queue in order
        t.start()
        assert wait_for(lambda i=i: _in_line(ready(info["url"], h.headers)) == i + 1)  # type: ignore[misc]
    assert wait_for(lambda: ready(info["url"], h.headers)["queued"] == 2)
    r = httpx.post(f"{info['url']}/v1/inference", json={"prompt": "y"}, headers=h.headers)
    assert r.status_code == 429
    err = r.json()["error"]
    assert err["code"] == "QUEUE_FULL"
    assert int(r.headers["Retry-After"]) == err["details"]["retry_after_s"] >= 1
    assert "max_queue" in err["details"]["hint"]
    for t in threads:
        t.join(60)
    assert all(any(isinstance(e, dict) and e.get("done") for e in out[f"r{i}"]) for i in range(3))


def test_a_cancelled_queued_request_never_runs(slow_worker: dict[str, Any]) -> None:
    h = slow_worker["hive"]
    out: dict[str, list[Any]] = {}
    first = threading.Thread(target=generate, args=(slow_worker, "running", 400, out))  # 20 s, stopped below
    first.start()
    assert wait_for(lambda: ready(slow_worker["url"], h.headers)["state"] == "busy")
    deleted = threading.Thread(target=generate, args=(slow_worker, "deleted", 30, out))
    deleted.start()
    # A client that goes away while waiting (Ctrl+C, dropped connection).
    gone = subprocess.Popen([sys.executable, "-c", (
        "import httpx,sys\n"
        f"with httpx.stream('POST', '{slow_worker['url']}/v1/inference', headers={slow_worker['headers']!r},"
        " json={'prompt': 'x', 'max_tokens': 30, 'request_id': 'gone'}, timeout=60) as r:\n"
        "    for line in r.iter_lines():\n"
        "        print(line, flush=True)\n")], stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert gone.stdout is not None and '"queued":true' in gone.stdout.readline()
    last = threading.Thread(target=generate, args=(slow_worker, "last", 3, out))
    last.start()
    assert wait_for(lambda: ready(slow_worker["url"], h.headers)["queued"] == 3)
    r = httpx.delete(f"{slow_worker['url']}/v1/inference/deleted", headers=h.headers)
    assert r.status_code == 200 and r.json() == {"request_id": "deleted", "canceled": True}
    gone.kill()
    gone.wait()
    assert wait_for(lambda: ready(slow_worker["url"], h.headers)["queued"] == 1)
    assert httpx.delete(f"{slow_worker['url']}/v1/inference/running", headers=h.headers).status_code == 200
    for t in (first, deleted, last):
        t.join(60)
    done = [e for e in out["deleted"] if isinstance(e, dict) and e.get("done")]
    assert done == [{"done": True, "total_tokens": 0, "duration_ms": 0, "stop_reason": "canceled",
                     "prompt_tokens": 0}]  # fmt: skip
    assert not any(isinstance(e, dict) and "token" in e for e in out["deleted"])
    # The last one moved up as the others left, and ran right after the first.
    positions = [e["position"] for e in out["last"] if isinstance(e, dict) and e.get("queued")]
    assert positions[0] == 3 and positions[-1] == 1
    assert generation_order(slow_worker) == ["running", "last"]  # the two that left never ran


# ------------------------------------------------------------- as a user runs it


def test_10_concurrent_cold_infers_start_one_hive_and_one_worker(rbee_home: RbeeHome, tiny_model: Path) -> None:
    port = rbee_home.local_node()
    args = ("infer", "--model", f"file:{tiny_model}", "--prompt", "x", "--max-tokens", "3", "--json")
    procs = [popen_rbee(rbee_home, *args, env=SCRIPTED) for _ in range(10)]
    try:
        results = [p.communicate(timeout=300) for p in procs]
        for p, (_out, err) in zip(procs, results, strict=True):
            assert p.returncode == 0, err
        ids = {json.loads(out)["worker_id"] for out, _ in results}
        assert len(ids) == 1
        assert sum("starting it" in err for _, err in results) == 1  # one hive start
        assert sum("starting a worker" in err for _, err in results) == 1  # one spawn
        assert [w["id"] for w in hive_workers(rbee_home, port)] == list(ids)
        assert len(hive_pids(rbee_home)) == 1
    finally:
        stop(rbee_home)


def test_a_busy_worker_queues_the_next_infer_and_shows_its_position(rbee_home: RbeeHome, tiny_model: Path) -> None:
    port = rbee_home.local_node()
    model = f"file:{tiny_model}"
    assert rbee_home.run("infer", "--model", model, "--prompt", "x", "--max-tokens", "1", env=SCRIPTED).returncode == 0
    long = popen_rbee(rbee_home, "infer", "--model", model, "--prompt", "x", "--max-tokens", "40", env=SCRIPTED)
    try:
        assert long.stdout is not None and "tok" in long.stdout.read(10)
        waited = rbee_home.run("infer", "--model", model, "--prompt", "y", "--max-tokens", "3", "--json", env=SCRIPTED)
        assert waited.returncode == 0, waited.stderr
        assert "queued (position 1)" in waited.stderr
        assert json.loads(waited.stdout)["tokens"] == 3
        assert long.poll() == 0, "the first one finished before the queued one started"
        # A queue timeout shorter than the wait: refused, and the running one goes on.
        long2 = popen_rbee(rbee_home, "infer", "--model", model, "--prompt", "x", "--max-tokens", "60", env=SCRIPTED)
        assert long2.stdout is not None and "tok" in long2.stdout.read(10)
        r = rbee_home.run("infer", "--model", model, "--prompt", "y", "--queue-timeout", "1", env=SCRIPTED)
        assert r.returncode == 1
        assert "QUEUE_TIMEOUT" in r.stderr and "Suggestion:" in r.stderr and "--queue-timeout" in r.stderr
        # Ctrl+C while queued: it leaves the queue at once.
        queued = popen_rbee(rbee_home, "infer", "--model", model, "--prompt", "z", env=SCRIPTED)
        assert queued.stderr is not None
        assert any("queued (position 1)" in queued.stderr.readline() for _ in range(5))
        queued.send_signal(signal.SIGINT)
        _, err = queued.communicate(timeout=15)
        assert queued.returncode == 130 and err.strip().endswith("Canceled.")
        worker = hive_workers(rbee_home, port)[0]
        assert ready(worker["url"], {"Authorization": f"Bearer {rbee_home.api_key}"})["queued"] == 0
        assert long2.poll() is None
        long2.send_signal(signal.SIGINT)
        long2.communicate(timeout=15)
    finally:
        long.kill() if long.poll() is None else None
        stop(rbee_home)


def test_replicas_start_when_the_queue_grows_and_drain_when_idle(rbee_home: RbeeHome, tiny_model: Path) -> None:
    port = set_inventory(rbee_home, max_replicas=2)
    env = {**SCRIPTED, "RBEE_IDLE_TIMEOUT": "12"}  # outlasts six keepers starting on a busy machine
    args = ("infer", "--model", f"file:{tiny_model}", "--prompt", "x", "--max-tokens", "30", "--json")
    try:
        warm = rbee_home.run("infer", "--model", f"file:{tiny_model}", "--prompt", "x", "--max-tokens", "1", env=env)
        assert warm.returncode == 0, warm.stderr
        procs = [popen_rbee(rbee_home, *args, env=env) for _ in range(6)]
        results = [p.communicate(timeout=300) for p in procs]
        for p, (_, err) in zip(procs, results, strict=True):
            assert p.returncode == 0, err
        used = {json.loads(out)["worker_id"] for out, _ in results}
        assert len(used) == 2  # a replica started, and served requests too
        assert sum("starting a worker" in err for _, err in results) == 1
        assert len(hive_workers(rbee_home, port)) == 2
        # Idle replicas go away with the idle timeout.
        assert wait_for(lambda: hive_workers(rbee_home, port) == [], timeout=60)
    finally:
        stop(rbee_home)


def test_a_dropped_stream_is_a_lost_connection_and_the_worker_stays(rbee_home: RbeeHome, tiny_model: Path) -> None:
    from rbee_fabric.keeper.registry import Registry

    port = rbee_home.local_node()
    model = f"file:{tiny_model}"
    first = json.loads(rbee_home.run("infer", "--model", model, "--prompt", "x", "--max-tokens", "1", "--json",
                                     env=SCRIPTED).stdout)  # fmt: skip
    reg = Registry(rbee_home.data / "registry.db")
    rec = reg.get(first["worker_id"])
    assert rec is not None
    host, _, wport = rec.url.removeprefix("http://").partition(":")
    proxy = CuttableProxy(host, int(wport))
    # The keeper reaches the worker through the proxy, as through an SSH tunnel.
    reg._db.execute("UPDATE workers SET url = ? WHERE id = ?", [proxy.url, rec.id])
    p = popen_rbee(rbee_home, "infer", "--model", model, "--prompt", "x", "--max-tokens", "300", env=SCRIPTED)
    try:
        assert p.stdout is not None
        seen = p.stdout.read(20)
        assert "tok" in seen
        proxy.cut()
        out, err = p.communicate(timeout=30)
        assert p.returncode == 1
        assert "CONNECTION_LOST" in err and "WORKER_CRASHED" not in err
        assert "still up" in err
        saved = Path(err.split("saved in ")[1].split(";")[0].strip())
        assert saved.read_text() == (seen + out).rstrip("\n")
        # Stopped on the worker, still registered on both sides, and reused next time.
        assert [r.id for r in reg.list()] == [rec.id]
        assert [w["id"] for w in hive_workers(rbee_home, port)] == [rec.id]
        key = {"Authorization": f"Bearer {rbee_home.api_key}"}
        assert wait_for(lambda: ready(rec.url, key).get("state") == "idle")
        again = json.loads(rbee_home.run("infer", "--model", model, "--prompt", "x", "--max-tokens", "2", "--json",
                                         env=SCRIPTED).stdout)  # fmt: skip
        assert again["worker_id"] == rec.id and again["reused_worker"] is True
    finally:
        p.kill() if p.poll() is None else None
        proxy.close()
        reg.close()
        stop(rbee_home)


def test_a_prompt_too_long_is_refused_before_loading_with_the_counts(rbee_home: RbeeHome, tiny_model: Path) -> None:
    port = rbee_home.local_node()
    model = f"file:{tiny_model}"  # context length 512; a byte-level vocabulary: 1 token a byte
    try:
        r = rbee_home.run("infer", "--model", model, "--prompt", "word " * 200, "--max-tokens", "8", env=SCRIPTED)
        assert r.returncode == 2, r.stderr
        assert "CONTEXT_TOO_LONG" in r.stderr
        # As SentencePiece writes it: "▁word" x 200 and a last "▁" (3 bytes a '▁'), and BOS.
        assert "the prompt is 1404 tokens and 8 more are asked for" in r.stderr
        assert "the context holds 512 tokens" in r.stderr
        assert "Suggestion:" in r.stderr and "shorter prompt" in r.stderr and "at most 512" in r.stderr
        assert "loading model" not in r.stderr and "starting a worker" not in r.stderr
        assert hive_workers(rbee_home, port) == []  # nothing was loaded
        # A prompt that may not fit by its bytes but fits in tokens is counted, then served.
        ok = rbee_home.run("infer", "--model", model, "--prompt", "w" * 400, "--max-tokens", "8",
                           "--ctx-size", "412", "--json", env=SCRIPTED)  # fmt: skip
        assert ok.returncode == 0, ok.stderr
        # A ready worker refuses a prompt too long for its context itself, before queueing.
        again = rbee_home.run("infer", "--model", model, "--prompt", "w" * 404, "--max-tokens", "8",
                              "--ctx-size", "412", env=SCRIPTED)  # fmt: skip
        assert again.returncode == 2 and "CONTEXT_TOO_LONG" in again.stderr
        assert "the prompt is 405 tokens" in again.stderr and "--ctx-size 512" in again.stderr
    finally:
        stop(rbee_home)


def test_a_worker_is_reused_only_with_its_context_size(rbee_home: RbeeHome, tiny_model: Path) -> None:
    port = rbee_home.local_node()
    args = ("infer", "--model", f"file:{tiny_model}", "--prompt", "x", "--max-tokens", "1", "--json")
    try:
        a = json.loads(rbee_home.run(*args, "--ctx-size", "256", env=SCRIPTED).stdout)
        b = json.loads(rbee_home.run(*args, "--ctx-size", "128", env=SCRIPTED).stdout)
        c = json.loads(rbee_home.run(*args, "--ctx-size", "256", env=SCRIPTED).stdout)
        assert a["worker_id"] != b["worker_id"] and c["worker_id"] == a["worker_id"]
        assert sorted(w["n_ctx"] for w in hive_workers(rbee_home, port)) == [128, 256]
    finally:
        stop(rbee_home)


def test_the_hive_counts_tokens_without_loading_the_model(hive: Hive, tiny_model: Path) -> None:
    model = httpx.post(f"{hive.url}/v1/models/download", json={"reference": f"file:{tiny_model}"},
                       headers=hive.headers).json()["model"]  # fmt: skip
    r = httpx.post(f"{hive.url}/v1/models/{model['id']}/tokens", json={"text": "hello"}, headers=hive.headers)
    assert r.status_code == 200
    assert r.json() == {"tokens": 9, "context_length": 512}  # BOS, "▁" (3 bytes) and five
    assert httpx.get(f"{hive.url}/v1/workers", headers=hive.headers).json()["workers"] == []
