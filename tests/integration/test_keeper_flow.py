"""`rbee` as a user runs it: keeper, hive and worker as three real processes.

This is the test that the three programs agree on their interfaces: every
request and event crosses a real process boundary over real HTTP.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import RbeeHome
from tests.support.procs import processes_with_env


def test_infer_starts_the_hive_streams_and_reuses_the_worker(rbee_home: RbeeHome, tiny_model: Path) -> None:
    port = rbee_home.local_node()
    first = rbee_home.run("infer", "--model", f"file:{tiny_model}", "--prompt", "hello", "--max-tokens", "8", "--json")
    assert first.returncode == 0, first.stderr
    a = json.loads(first.stdout)
    assert a["reused_worker"] is False and a["tokens"] >= 1
    assert "starting it" in first.stderr  # the keeper started the hive itself
    assert list(rbee_home.data.glob("hive-*.pid"))

    second = rbee_home.run("infer", "--model", f"file:{tiny_model}", "--prompt", "hello again", "--max-tokens", "8", "--json")
    assert second.returncode == 0, second.stderr
    b = json.loads(second.stdout)
    assert b["reused_worker"] is True and b["worker_id"] == a["worker_id"]

    listed = rbee_home.run("workers", "list", "--json")
    assert [w["id"] for w in json.loads(listed.stdout)] == [a["worker_id"]]

    stop = rbee_home.run("hive", "stop", "localhost")
    assert stop.returncode == 0, stop.stderr
    assert "1 worker(s) stopped" in stop.stderr
    assert processes_with_env("RBEE_TEST_MARKER", rbee_home.marker) == []
    status = rbee_home.run("hive", "status", "localhost")
    assert status.returncode == 1
    assert status.stdout == f"stopped  localhost http://127.0.0.1:{port}  (nothing listens there: not running)\n"
    # Exit 1 like every error, so it says what to do, as every error does.
    assert status.stderr.startswith("Suggestion: start it: rbee hive start localhost "), status.stderr


def test_plain_output_streams_text_to_stdout_and_the_summary_to_stderr(rbee_home: RbeeHome, tiny_model: Path) -> None:
    from rbee_fabric.cli.ui import sanitize

    rbee_home.local_node()
    args = ("infer", "--model", f"file:{tiny_model}", "--max-tokens", "5", "--temperature", "0", "--seed", "7")
    r = rbee_home.run(*args, input="prompt from stdin")
    try:
        assert r.returncode == 0, r.stderr
        same = json.loads(rbee_home.run(*args, "--json", input="prompt from stdin").stdout)
        # stdout is exactly the generated text (then a newline), as --json reports it.
        assert 1 <= same["tokens"] <= 5 and same["text"]
        assert r.stdout == sanitize(same["text"]) + "\n"
        assert f"{same['tokens']} tokens" in r.stderr and "tokens/s" in r.stderr
        assert "tokens/s" not in r.stdout
    finally:
        rbee_home.run("hive", "stop", "localhost")


def test_workers_shutdown_then_a_fresh_worker(rbee_home: RbeeHome, tiny_model: Path) -> None:
    rbee_home.local_node()
    args = ("infer", "--model", f"file:{tiny_model}", "--prompt", "x", "--max-tokens", "3", "--json")
    try:
        first = json.loads(rbee_home.run(*args).stdout)
        r = rbee_home.run("workers", "shutdown", "--id", first["worker_id"])
        assert r.returncode == 0, r.stderr
        assert json.loads(rbee_home.run("workers", "list", "--json").stdout) == []
        second = json.loads(rbee_home.run(*args).stdout)
        assert second["worker_id"] != first["worker_id"] and not second["reused_worker"]
    finally:
        rbee_home.run("hive", "stop", "localhost")


def test_usage_errors_exit_2_with_a_suggestion(rbee_home: RbeeHome) -> None:
    rbee_home.local_node()
    r = rbee_home.run("infer", "--model", "file:relative.gguf", "--prompt", "x")
    assert r.returncode == 2
    assert "INVALID_REQUEST" in r.stderr and "Suggestion:" in r.stderr
    r = rbee_home.run("infer", "--node", "bad;name", "--model", "gemma3-270m", "--prompt", "x")
    assert r.returncode == 2 and "invalid node name" in r.stderr
    r = rbee_home.run("infer", "--model", "gemma3-270m", "--prompt", "   ")
    assert r.returncode == 2 and "empty" in r.stderr
    assert "Traceback" not in r.stderr


def test_unknown_model_is_model_not_found_never_another_model(rbee_home: RbeeHome) -> None:
    rbee_home.local_node()
    r = rbee_home.run("infer", "--model", "llama-9000", "--prompt", "x")
    assert r.returncode == 1
    assert "MODEL_NOT_FOUND" in r.stderr and "llama-9000" in r.stderr
    assert "Suggestion:" in r.stderr and "hf:ORG/REPO" in r.stderr
    assert not list(rbee_home.data.glob("hive-*.pid")), "nothing should start for a bad reference"


def test_missing_file_model_is_reported_by_the_node(rbee_home: RbeeHome) -> None:
    rbee_home.local_node()
    try:
        r = rbee_home.run("infer", "--model", "file:/nonexistent/model.gguf", "--prompt", "x")
        assert r.returncode == 1
        assert "MODEL_NOT_FOUND" in r.stderr and "/nonexistent/model.gguf" in r.stderr
    finally:
        rbee_home.run("hive", "stop", "localhost")


def test_version(rbee_home: RbeeHome) -> None:
    r = rbee_home.run("version")
    assert r.returncode == 0 and r.stdout.strip() == "rbee-fabric 0.1.0"
