"""`rbee serve` with the official openai client: a real gateway, real hive, real workers.

The workers run the scripted engine (deterministic " tok0 tok1 ..." tokens, a
pause before each) on the tiny GGUF file, so routing, streaming, usage,
errors, cancellation and concurrency are tested fast and exactly.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from rbee_fabric.hive.template import TEMPLATE_TITLE
from tests.conftest import RbeeHome
from tests.support.gateway import KEY, Gateway, start_gateway
from tests.support.procs import processes_with_env


@pytest.fixture
def hive_port(rbee_home: RbeeHome) -> int:
    return rbee_home.local_node()


@pytest.fixture
def gateway(rbee_home: RbeeHome, hive_port: int) -> Iterator[Gateway]:
    env = {**rbee_home.env, "RBEE_WORKER_ENGINE": "scripted", "RBEE_SCRIPTED_DELAY_MS": "20"}
    gw = start_gateway(env, rbee_home.data.parent)
    try:
        yield gw
    finally:
        gw.stop()
        rbee_home.run("hive", "stop", "localhost")


@pytest.fixture
def model(tiny_model: Path) -> str:
    return f"file:{tiny_model}"


def expected(n: int) -> str:
    return "".join(f" tok{i}" for i in range(n))


def hive_workers(home: RbeeHome, port: int) -> list[dict[str, object]]:
    r = httpx.get(f"http://127.0.0.1:{port}/v1/workers", headers={"Authorization": f"Bearer {home.api_key}"})
    return list(r.json()["workers"])


def test_streamed_chat_with_usage_then_the_model_list(gateway: Gateway, model: str) -> None:
    client = gateway.client()
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=5,
        stream=True, stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected(5)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 5
    assert chunks[-1].usage.total_tokens == chunks[-1].usage.prompt_tokens + 5

    models = {m.id: m for m in client.models.list()}
    assert "gemma3-270m" in models
    assert models[model].model_extra == {"nodes": ["localhost"]}
    assert client.models.retrieve(model).id == model
    err = gateway.stderr()
    assert f"{model} -> localhost" in err and re.search(r"\d+\+5 tokens", err) and "first token" in err


def test_non_streamed_chat_with_the_async_client(gateway: Gateway, model: str) -> None:
    async def main() -> openai.types.chat.ChatCompletion:
        async with gateway.aclient() as client:
            return await client.chat.completions.create(
                model=model, messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
                max_completion_tokens=3, temperature=0.2, top_p=0.9, seed=7, stop=["never"],
            )  # fmt: skip

    answer = asyncio.run(main())
    assert answer.choices[0].message.content == expected(3)
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage is not None and answer.usage.completion_tokens == 3
    assert answer.model == model


def test_raw_completion_plain_and_streamed_pinned_to_a_node(gateway: Gateway, model: str) -> None:
    client = gateway.client()
    done = client.completions.create(model=model, prompt="Once upon", max_tokens=4)
    assert done.choices[0].text == expected(4) and done.usage is not None
    assert done.usage.completion_tokens == 4
    raw = client.completions.with_raw_response.create(
        model=f"localhost/{model}", prompt="Once upon", max_tokens=3, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    assert raw.headers["x-rbee-node"] == "localhost"
    chunks = list(raw.parse())
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected(3)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3


def test_errors_are_openai_error_objects(gateway: Gateway, model: str) -> None:
    client = gateway.client()
    with pytest.raises(openai.NotFoundError) as nf:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert nf.value.code == "MODEL_NOT_FOUND" and "no-such-model" in nf.value.message
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="file:/nowhere/missing.gguf", prompt="x", max_tokens=2)

    wrong = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as auth:
        wrong.models.list()
    assert auth.value.status_code == 401 and "wrong API key" in auth.value.message
    assert KEY not in gateway.stderr()  # the key is never logged
    assert httpx.get(f"{gateway.url}/metrics").status_code == 401
    assert httpx.get(f"{gateway.url}/health").json()["status"] == "ok"

    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "x"}],
            tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
        )  # fmt: skip
    assert bad.value.param == "tools" and "not supported" in bad.value.message
    with pytest.raises(openai.BadRequestError) as unknown:
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "x"}], extra_body={"mirostat": 2}
        )
    assert "mirostat" in unknown.value.message
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}], n=2)


@pytest.fixture
def slow_gateway(rbee_home: RbeeHome, hive_port: int) -> Iterator[Gateway]:
    """Tokens every 200 ms: 400 of them would keep the worker busy for 80 s."""
    env = {**rbee_home.env, "RBEE_WORKER_ENGINE": "scripted", "RBEE_SCRIPTED_DELAY_MS": "200"}
    gw = start_gateway(env, rbee_home.data.parent, "--grace", "1")
    try:
        yield gw
    finally:
        gw.stop()
        rbee_home.run("hive", "stop", "localhost")


def test_a_client_that_disconnects_cancels_the_generation(
    slow_gateway: Gateway, model: str, rbee_home: RbeeHome, hive_port: int
) -> None:
    gateway = slow_gateway
    client = gateway.client()
    client.completions.create(model=model, prompt="warm", max_tokens=1)
    stream = client.completions.create(model=model, prompt="long", max_tokens=400, stream=True)
    seen = [next(iter(stream)).choices[0].text for _ in range(3)]
    assert seen == [" tok0", " tok1", " tok2"]
    stream.close()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if [w["state"] for w in hive_workers(rbee_home, hive_port)] == ["idle"] and "canceled" in gateway.stderr():
            break
        time.sleep(0.1)
    assert [w["state"] for w in hive_workers(rbee_home, hive_port)] == ["idle"]
    assert "canceled" in gateway.stderr()
    # The worker is free again: the next request is answered in full.
    assert client.completions.create(model=model, prompt="x", max_tokens=2).choices[0].text == expected(2)


def test_eight_concurrent_clients_are_all_answered(gateway: Gateway, model: str) -> None:
    async def main() -> list[str]:
        async with gateway.aclient() as client:

            async def one(i: int) -> str:
                r = await client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": f"client {i}"}], max_tokens=6
                )
                return r.choices[0].message.content or ""

            return await asyncio.gather(*(one(i) for i in range(8)))

    assert asyncio.run(main()) == [expected(6)] * 8
    lines = [ln for ln in gateway.stderr().splitlines() if re.search(r"\d+\+6 tokens", ln) and ln.endswith(", ok")]
    assert len(lines) == 8


def test_metrics_count_requests_ttft_and_workers(gateway: Gateway, model: str) -> None:
    client = gateway.client()
    for _ in range(2):
        client.completions.create(model=model, prompt="x", max_tokens=3)
    text = httpx.get(f"{gateway.url}/metrics", headers=gateway.headers).text
    assert f'rbee_serve_requests_total{{model="{model}",node="localhost",outcome="ok"}} 2.0' in text
    assert f'rbee_serve_time_to_first_token_seconds_count{{model="{model}",node="localhost"}} 2.0' in text
    assert f'rbee_serve_decode_tokens_per_second_count{{model="{model}",node="localhost"}} 2.0' in text
    assert 'rbee_serve_workers{node="localhost"} 1.0' in text
    assert 'rbee_serve_node_up{node="localhost"} 1.0' in text


def test_sigterm_exits_0_and_leaves_hive_and_worker_running(
    rbee_home: RbeeHome, hive_port: int, model: str
) -> None:
    env = {**rbee_home.env, "RBEE_WORKER_ENGINE": "scripted"}
    gw = start_gateway(env, rbee_home.data.parent, "--json-logs")
    try:
        gw.client().completions.create(model=model, prompt="x", max_tokens=2)
        workers = hive_workers(rbee_home, hive_port)
        assert [w["state"] for w in workers] == ["idle"]
        assert gw.stop(signal.SIGTERM) == 0
        lines = [json.loads(ln) for ln in gw.stderr().splitlines() if ln.startswith("{")]
        request = next(ln for ln in lines if ln.get("node") == "localhost" and "ttft_ms" in ln)
        assert request["model"] == model and request["completion_tokens"] == 2 and request["outcome"] == "ok"
        assert any(ln.get("event") == "listening" for ln in lines)
        # The gateway is gone; what is left is the hive and its worker, which stay up.
        left = set(processes_with_env("RBEE_TEST_MARKER", rbee_home.marker))
        hive_pid = int((rbee_home.data / f"hive-{hive_port}.pid").read_text().split()[0])
        # The hive's worker template (fast start) is part of the hive and stays with it.
        template = {p for p in left if Path(f"/proc/{p}/cmdline").read_bytes().startswith(TEMPLATE_TITLE.encode())}
        assert left - template == {hive_pid, int(str(workers[0]["pid"]))}
    finally:
        gw.stop()
        rbee_home.run("hive", "stop", "localhost")


def test_the_key_file_is_created_0600_and_exposure_is_guarded(rbee_home: RbeeHome, hive_port: int) -> None:
    env = {k: v for k, v in rbee_home.env.items() if k != "RBEE_SERVE_API_KEY"}
    gw = start_gateway(env, rbee_home.data.parent, key=None)
    try:
        key_file = rbee_home.config / "serve_api_key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        key = key_file.read_text().strip()
        assert str(key_file) in gw.stderr() and key not in gw.stderr()
        assert "reachable from this machine only (loopback)" in gw.stderr()
        ok = httpx.get(f"{gw.url}/v1/models", headers={"Authorization": f"Bearer {key}"})
        assert ok.status_code == 200
    finally:
        assert gw.stop() == 0
    short = rbee_home.run("serve", "--host", "0.0.0.0", "--port", "0", env={"RBEE_SERVE_API_KEY": "short"})
    assert short.returncode == 2 and "shorter than" in short.stderr and "Suggestion:" in short.stderr
    os.chmod(rbee_home.config / "serve_api_key", 0o644)
    shared = rbee_home.run("serve", "--host", "0.0.0.0", "--port", "0", env={"RBEE_SERVE_API_KEY": ""})
    assert shared.returncode == 2 and "readable by others" in shared.stderr


def test_sigterm_during_a_generation_cancels_it_after_the_grace_and_exits_0(
    slow_gateway: Gateway, rbee_home: RbeeHome, hive_port: int, model: str
) -> None:
    gw = slow_gateway  # --grace 1: the running generation is cancelled after 1 s
    client = gw.client()
    stream = client.completions.create(model=model, prompt="long", max_tokens=400, stream=True)
    assert next(iter(stream)).choices[0].text == " tok0"
    assert gw.stop(signal.SIGTERM) == 0
    with pytest.raises((openai.APIError, httpx.HTTPError)):
        for _ in stream:  # the stream ends early: the gateway is gone
            pass
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and [w["state"] for w in hive_workers(rbee_home, hive_port)] != ["idle"]:
        time.sleep(0.1)
    assert [w["state"] for w in hive_workers(rbee_home, hive_port)] == ["idle"]
    assert "canceled" in gw.stderr()


def test_failed_requests_are_logged_and_counted_too(gateway: Gateway) -> None:
    with pytest.raises(openai.NotFoundError):
        gateway.client().completions.create(model="no-such-model", prompt="x")
    assert "no-such-model -> -: MODEL_NOT_FOUND" in gateway.stderr()
    text = httpx.get(f"{gateway.url}/metrics", headers=gateway.headers).text
    assert 'rbee_serve_requests_total{model="no-such-model",node="-",outcome="MODEL_NOT_FOUND"} 1.0' in text


def test_a_taken_port_is_a_usage_error(rbee_home: RbeeHome, gateway: Gateway) -> None:
    port = gateway.url.rsplit(":", 1)[1]
    r = rbee_home.run("serve", "--port", port, env={"RBEE_SERVE_API_KEY": KEY})
    assert r.returncode == 2 and "cannot listen on 127.0.0.1:" in r.stderr and "Suggestion:" in r.stderr

