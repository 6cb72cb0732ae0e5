"""The context rule shared by keeper and worker: when to count, what to say."""

import pytest

from rbee_fabric import contextfit
from rbee_fabric.errors import ContextTooLong
from rbee_fabric.schemas import ChatMessage, InferenceRequest


def test_a_prompt_whose_bytes_fit_is_never_counted() -> None:
    req = InferenceRequest(prompt="x" * 100, max_tokens=20)
    assert contextfit.surely_fits(req, 2048)
    # Spaces count three bytes ('▁'), plus prefix, BOS and EOS: 100 + 2*0 + 5 + 20.
    assert contextfit.surely_fits(req, 125) and not contextfit.surely_fits(req, 124)
    spaced = InferenceRequest(prompt="a b", max_tokens=1)
    assert contextfit.surely_fits(spaced, 3 + 2 + 5 + 1)
    chat = InferenceRequest(messages=[ChatMessage(role="user", content="hi")], max_tokens=None)
    assert not contextfit.surely_fits(chat, 2 + 5 + 16)  # the framing of one message counts


def test_too_long_names_the_counts_and_a_context_size_that_would_do() -> None:
    req = InferenceRequest(prompt="x", max_tokens=100)
    contextfit.check(req, 412, 512)  # exactly full: fine
    with pytest.raises(ContextTooLong) as info:
        contextfit.check(req, 1000, 512, limit=8192)
    err = info.value
    assert err.details == {"prompt_tokens": 1000, "n_ctx": 512, "max_tokens": 100}
    assert err.exit_code == 2
    assert "1000 tokens" in err.message and "holds 512" in err.message
    assert "--ctx-size 2048" in (err.hint or "")
    with pytest.raises(ContextTooLong) as info:
        contextfit.check(req, 9000, 8192, limit=8192)
    assert "at most 8192" in (info.value.hint or "") and "--ctx-size" not in (info.value.hint or "")
