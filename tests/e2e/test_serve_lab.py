"""`rbee serve` over real SSH: two lab nodes behind one OpenAI endpoint.

Run under the lab lock: flock /tmp/rbee-lab.lock ... -k serve_lab
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.conftest import RbeeHome
from tests.lab import lab as lab_mod
from tests.support.gateway import Gateway, start_gateway

MODEL = "gemma3-270m"
NODES = ("labnode1", "labnode2")


@pytest.fixture
def lab_gateway(installed: RbeeHome) -> Iterator[Gateway]:
    gw = start_gateway(installed.env, installed.data.parent)
    try:
        yield gw
    finally:
        assert gw.stop() == 0
        for node in NODES:
            installed.run("hive", "stop", node)
    assert all(lab_mod.user_processes(f"rbeelab{i}") == [] for i in (1, 2))


def test_pinned_to_each_node_then_spread_over_both_while_one_is_busy(lab_gateway: Gateway) -> None:
    client = lab_gateway.client()
    for node in NODES:  # starts each node's hive and worker over SSH
        raw = client.completions.with_raw_response.create(
            model=f"{node}/{MODEL}", prompt="The capital of France is", max_tokens=8, temperature=0
        )
        assert raw.headers["x-rbee-node"] == node
        answer = raw.parse()
        assert answer.choices[0].text.strip() and answer.usage is not None
        assert answer.usage.completion_tokens >= 1
    models = {m.id: m.model_extra for m in client.models.list()}
    assert sorted(models[MODEL]["nodes"]) == list(NODES)  # type: ignore[index]

    for busy, free in (NODES, NODES[::-1]):
        # A long stream keeps one node busy; an unpinned request goes to the other.
        stream = client.completions.create(model=f"{busy}/{MODEL}", prompt="Tell a long story:",
                                           max_tokens=400, stream=True)  # fmt: skip
        first = next(iter(stream))
        assert first.choices
        got: dict[str, str] = {}

        def unpinned(out: dict[str, str] = got) -> None:
            raw = client.completions.with_raw_response.create(model=MODEL, prompt="Hello", max_tokens=4)
            out["node"] = raw.headers["x-rbee-node"]

        t = threading.Thread(target=unpinned)
        t.start()
        t.join(timeout=120)
        stream.close()
        assert got.get("node") == free, (busy, got)
    err = lab_gateway.stderr()
    assert f"{MODEL} -> labnode1" in err and f"{MODEL} -> labnode2" in err


def node_up(gw: Gateway, node: str) -> float | None:
    text = httpx.get(f"{gw.url}/metrics", headers=gw.headers).text
    m = re.search(rf'rbee_serve_node_up{{node="{node}"}} ([0-9.]+)', text)
    return float(m.group(1)) if m else None


def wait_node_up(gw: Gateway, node: str, value: float) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and node_up(gw, node) != value:
        time.sleep(0.2)
    assert node_up(gw, node) == value


def test_a_node_that_stops_answering_is_skipped_until_it_answers_again(lab_gateway: Gateway) -> None:
    client = lab_gateway.client()
    for node in NODES:
        client.completions.create(model=f"{node}/{MODEL}", prompt="Hi", max_tokens=2)
    gone = lab_mod.node(2)
    lab_mod.stop_sshd(gone.name)
    lab_mod.kill_user_processes(gone.user)  # its SSH session, hive and worker: the machine is off
    try:
        wait_node_up(lab_gateway, "labnode2", 0)
        with pytest.raises(openai.APIStatusError) as exc:
            client.completions.create(model=f"labnode2/{MODEL}", prompt="Hi", max_tokens=2)
        assert exc.value.status_code == 503 and exc.value.response.headers["retry-after"]
        assert exc.value.code == "NODES_UNAVAILABLE"
        # labnode1 busy, labnode2 gone: an unpinned request waits for labnode1, never labnode2.
        stream = client.completions.create(model=f"labnode1/{MODEL}", prompt="Tell a long story:",
                                           max_tokens=400, stream=True)  # fmt: skip
        assert next(iter(stream)).choices
        got: dict[str, str] = {}

        def unpinned() -> None:
            raw = client.completions.with_raw_response.create(model=MODEL, prompt="Hello", max_tokens=4)
            got["node"] = raw.headers["x-rbee-node"]

        t = threading.Thread(target=unpinned)
        t.start()
        time.sleep(1.0)
        stream.close()
        t.join(timeout=120)
        assert got.get("node") == "labnode1"
    finally:
        lab_mod.start_sshd(gone)
    wait_node_up(lab_gateway, "labnode2", 1)  # the background probe found it again
    raw = client.completions.with_raw_response.create(model=f"labnode2/{MODEL}", prompt="Hi", max_tokens=2)
    assert raw.headers["x-rbee-node"] == "labnode2" and raw.parse().choices[0].text
    assert "node labnode2 stopped answering" in lab_gateway.stderr()
    assert "node labnode2 answers again" in lab_gateway.stderr()
