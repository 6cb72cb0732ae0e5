"""Download retries are real and visible (issue 17: no network gave one bare error in 0.5 s).

The hive announces every retry as a note of the download's progress stream
("retry 2/6 in 0.01 s: REASON"); when every try fails, the error says what
was tried and what to do. RBEE_DOWNLOAD_BACKOFF_S keeps the waits short here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Hive, RbeeHome, start_hive, stop_hive
from tests.support.hubserver import Hub
from tests.support.procs import refusing_address
from tests.support.tiny_gguf import write_tiny_gguf

FAST = {"RBEE_DOWNLOAD_BACKOFF_S": "0.01", "HF_HUB_DISABLE_TELEMETRY": "1"}


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    h = Hub().start()
    yield h
    h.stop()


def progress_events(hive: Hive, reference: str) -> list[dict]:
    """Start a download over the hive's API and read its whole progress stream."""
    r = httpx.post(f"{hive.url}/v1/models/download", json={"reference": reference}, headers=hive.headers)
    assert r.status_code == 200, r.text
    events = []
    with httpx.stream("GET", f"{hive.url}{r.json()['progress_url']}", headers=hive.headers, timeout=60) as s:
        for line in s.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line[len("data: "):]))
    return events


def test_an_unreachable_hub_is_tried_six_times_and_each_retry_is_shown(rbee_home: RbeeHome) -> None:
    with refusing_address() as dead:  # every connection there is refused
        hive = start_hive(rbee_home, env={**FAST, "HF_ENDPOINT": dead})
        try:
            events = progress_events(hive, "hf:org/tiny-GGUF")
        finally:
            stop_hive(hive)
    last = events[-1]
    assert last["stage"] == "failed"
    assert [n.split(":")[0] for n in last["notes"]] == [f"retry {i}/6 in {0.01 * 2 ** (i - 2):g} s" for i in range(2, 7)]
    assert all("ConnectError" in n for n in last["notes"])
    err = last["error"]
    assert err["code"] == "DOWNLOAD_FAILED"
    assert f"cannot reach the model hub at {dead}" in err["message"] and "tried 6 times" in err["message"]
    assert "ConnectError" in err["message"]
    hint = err["details"]["hint"]
    assert "HF_ENDPOINT" in hint and "HF_HUB_OFFLINE=1" in hint and "rbee models push" in hint


def test_a_hub_that_answers_503_twice_is_retried_and_the_pull_succeeds(
    rbee_home: RbeeHome, hub: Hub, tmp_path: Path
) -> None:
    hub.add("org/busy-GGUF", "tiny.Q4_K_M.gguf", write_tiny_gguf(tmp_path / "tiny.Q4_K_M.gguf"))
    hub.repos["org/busy-GGUF"].api_failures = 2
    hive = start_hive(rbee_home, env={**FAST, "HF_ENDPOINT": hub.url})
    try:
        events = progress_events(hive, "hf:org/busy-GGUF")
    finally:
        stop_hive(hive)
    last = events[-1]
    assert last["stage"] == "done", last
    assert [n.split(":")[0] for n in last["notes"]] == ["retry 2/6 in 0.01 s", "retry 3/6 in 0.02 s"]
    assert "503" in last["notes"][0]
    assert hub.repos["org/busy-GGUF"].api_failures == 0


def test_a_cut_download_announces_its_retry(rbee_home: RbeeHome, hub: Hub, tmp_path: Path) -> None:
    model = write_tiny_gguf(tmp_path / "tiny.Q4_K_M.gguf")
    with open(model, "ab") as fh:
        fh.write(b"\0" * (3 * 2**20))
    f = hub.add("org/cut-GGUF", "tiny.Q4_K_M.gguf", model, reset_at=2**20)
    hive = start_hive(rbee_home, env={**FAST, "HF_ENDPOINT": hub.url})
    try:
        events = progress_events(hive, "hf:org/cut-GGUF")
    finally:
        stop_hive(hive)
    assert events[-1]["stage"] == "done", events[-1]
    assert len(f.served) == 2
    [note] = events[-1]["notes"]
    assert note.startswith("retry 2/6 in 0.01 s: ")


def test_models_pull_without_network_shows_the_retries_and_what_to_do(rbee_home: RbeeHome) -> None:
    rbee_home.local_node()
    with refusing_address() as dead:
        env = {**FAST, "HF_ENDPOINT": dead}
        try:
            r = rbee_home.run("models", "pull", "hf:org/tiny-GGUF", env=env)
        finally:
            rbee_home.run("hive", "stop", "localhost", env=env)
    assert r.returncode == 1, r.stderr
    for i in range(2, 7):
        assert f"retry {i}/6 in " in r.stderr
    assert "DOWNLOAD_FAILED" in r.stderr and "tried 6 times" in r.stderr and dead in r.stderr
    suggestion = r.stderr[r.stderr.index("Suggestion:"):]
    assert "HF_ENDPOINT" in suggestion and "HF_HUB_OFFLINE=1" in suggestion and "rbee models push" in suggestion
    # The hive's hint says NODE; the keeper names the node it asked.
    assert "rbee models push --node localhost FILE.gguf" in " ".join(suggestion.split())
    assert r.stdout == ""
