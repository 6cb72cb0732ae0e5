"""`rbee workers list` tells what `ollama ps` does, in 80 columns (issue 17)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.conftest import RbeeHome


def test_workers_list_shows_memory_device_context_queue_and_unload_time(rbee_home: RbeeHome, tiny_model: Path) -> None:
    rbee_home.local_node()
    try:
        r = rbee_home.run("infer", "--model", f"file:{tiny_model}", "--prompt", "hi", "--max-tokens", "3",
                          "--ctx-size", "256", "--json")  # fmt: skip
        assert r.returncode == 0, r.stderr
        worker_id = json.loads(r.stdout)["worker_id"]

        listed = rbee_home.run("workers", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        [w] = json.loads(listed.stdout)
        now = time.time()
        assert w["id"] == worker_id and w["node"] == "localhost"
        assert w["model"] == w["model_reference"] == f"file:{tiny_model}"
        assert w["state"] == "idle" and w["backend"] == "cpu" and w["device"] == 0
        assert w["n_ctx"] == 256 and w["queued"] == 0
        assert w["memory_mb"] > 10  # the worker process's resident memory, measured
        assert w["memory_estimate_mb"] >= 1
        assert w["idle_timeout_s"] == 300
        assert 0 <= w["idle_seconds"] < 300
        # Unloaded when it has been idle for the timeout: now + what is left of it.
        assert abs(w["unload_at"] - (now + 300 - w["idle_seconds"])) < 30

        table = rbee_home.run("workers", "list", env={"COLUMNS": "80"})
        assert table.returncode == 0, table.stderr
        lines = table.stdout.splitlines()
        assert all(len(line) <= 80 for line in lines), table.stdout
        assert lines[0].split() == ["NODE", "WORKER", "MODEL", "STATE", "MEMORY", "ON", "CTX", "Q", "UNLOADS"]
        row = lines[1].split()
        assert row[:4] == ["localhost", worker_id, tiny_model.name, "idle"]
        assert row[6:9] == ["MB", "cpu", "256"] and row[9] == "0"
        assert row[10][0].isdigit() and row[10].endswith("s")  # e.g. 4m58s
    finally:
        rbee_home.run("hive", "stop", "localhost")
