"""Chat rendering from GGUF metadata, the architecture fallback, and the special-token filter."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rbee_fabric.errors import NoChatTemplate
from rbee_fabric.ggufmeta import read_info
from rbee_fabric.schemas import ChatMessage, InferenceRequest
from rbee_fabric.worker.chat import ChatTemplates, TokenInfo
from rbee_fabric.worker.engine import Generation, LlamaEngine
from rbee_fabric.worker.textfilter import SpecialTokenFilter, SpecialTokens, is_special
from tests.support.tiny_gguf import CHATML_TEMPLATE, write_tiny_gguf

CONVERSATION = [
    ChatMessage(role="system", content="Be brief."),
    ChatMessage(role="user", content="Hello there"),
    ChatMessage(role="assistant", content="Hi."),
    ChatMessage(role="user", content="And now?"),
]


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("m") / "chat.gguf", chat_template=CHATML_TEMPLATE)


@pytest.fixture(scope="module")
def engine(chat_model: Path) -> Iterator[LlamaEngine]:
    e = LlamaEngine(str(chat_model), backend="cpu", device=0, n_ctx=512)
    e.load(lambda _v: True)
    yield e
    e.close()


# ----------------------------------------------------------------- metadata


def test_the_catalog_reader_sees_whether_a_gguf_has_a_template(chat_model: Path, tiny_model: Path) -> None:
    assert read_info(chat_model).chat_template is True
    assert read_info(tiny_model).chat_template is False


def test_the_gguf_template_renders_every_turn_and_stops_at_its_end_of_turn_token(engine: LlamaEngine) -> None:
    assert engine.chat.default_name() == "chat_template"
    r = engine.chat.render(CONVERSATION, None)
    assert r.rendered_as == "chat_template"
    assert r.prompt == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello there<|im_end|>\n"
        "<|im_start|>assistant\nHi.<|im_end|>\n<|im_start|>user\nAnd now?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    eot = 259 + 1  # the second chat token written after the 259 base tokens
    assert eot in r.stop_token_ids and "<|im_end|>" in r.stop
    # The turn markers tokenize as single special tokens, not as text.
    ids = engine._llm.tokenize(r.prompt.encode(), add_bos=r.add_bos, special=True)
    assert ids.count(259) == 5 and ids.count(eot) == 4


def test_chat_generation_reports_how_it_was_rendered_and_its_prompt_size(engine: LlamaEngine) -> None:
    g = Generation()
    req = InferenceRequest(messages=CONVERSATION, max_tokens=5, seed=1)
    text = "".join(engine.generate(req, threading.Event(), g))
    assert g.rendered_as == "chat_template" and g.prompt_tokens > 30
    assert g.stop_reason in ("stop", "length") and g.tokens <= 5
    assert "<|im_end|>" not in text and "<start_of_image>" not in text


def test_a_named_format_overrides_the_template(engine: LlamaEngine) -> None:
    r = engine.chat.render(CONVERSATION[1:], "gemma")
    assert r.rendered_as == "gemma"
    assert r.prompt.startswith("<start_of_turn>user\nHello there<end_of_turn>\n")


def test_an_unknown_format_is_a_clear_error(engine: LlamaEngine) -> None:
    with pytest.raises(NoChatTemplate) as exc:
        engine.chat.render(CONVERSATION, "nonsense")
    assert "chatml" in (exc.value.hint or "")


def test_a_context_too_small_for_the_conversation_is_context_too_long(chat_model: Path) -> None:
    from rbee_fabric.errors import ContextTooLong

    e = LlamaEngine(str(chat_model), backend="cpu", device=0, n_ctx=64)
    e.load(lambda _v: True)
    try:
        long = [ChatMessage(role="user", content="word " * 400)]
        with pytest.raises(ContextTooLong) as exc:
            list(e.generate(InferenceRequest(messages=long, max_tokens=None), threading.Event(), Generation()))
        assert exc.value.details["n_ctx"] == e._llm.n_ctx()  # llama.cpp rounds 64 up
        assert exc.value.details["prompt_tokens"] > exc.value.details["n_ctx"] // 2
    finally:
        e.close()


# ------------------------------------------------------ architecture fallback


def test_a_gemma_without_template_gets_the_gemma_format_never_llama2(caplog: pytest.LogCaptureFixture) -> None:
    chat = ChatTemplates({"general.architecture": "gemma3"}, TokenInfo())
    assert chat.default_name() == "gemma"
    r = chat.render([ChatMessage(role="user", content="Hi")], None)
    assert r.prompt == "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    assert "[INST]" not in r.prompt
    assert r.rendered_as.startswith("gemma") and "no template" in r.rendered_as
    assert "<end_of_turn>" in "".join(r.stop)
    chat.render([ChatMessage(role="user", content="again")], None)
    assert sum("no chat template" in m for m in caplog.messages) == 1  # said once


def test_an_unknown_architecture_without_template_names_chat_format() -> None:
    chat = ChatTemplates({"general.architecture": "llama"}, TokenInfo())
    assert chat.default_name() is None
    with pytest.raises(NoChatTemplate) as exc:
        chat.render([ChatMessage(role="user", content="Hi")], None)
    assert "--chat-format" in (exc.value.hint or "")
    assert exc.value.exit_code == 2
    # ... and naming one works.
    assert chat.render([ChatMessage(role="user", content="Hi")], "chatml").rendered_as == "chatml"


# ------------------------------------------------------ special-token filter

SPECIALS = ["<end_of_turn>", "<start_of_image>", "<eos>"]


def _run(pieces: list[str]) -> tuple[str, list[str]]:
    f = SpecialTokenFilter(SPECIALS)
    out = list(f.filter(pieces))
    return "".join(out), out


def test_whole_special_tokens_are_removed() -> None:
    assert _run(["Hello<start_of_image> world", "<eos>"])[0] == "Hello world"


@pytest.mark.parametrize("cut", range(1, len("<start_of_image>")))
def test_a_special_token_split_across_two_chunks_is_removed(cut: int) -> None:
    token = "<start_of_image>"
    text, _ = _run(["bees ", token[:cut], token[cut:] + " fly"])
    assert text == "bees  fly"


def test_a_token_split_over_many_single_characters_is_removed() -> None:
    pieces = ["a", *list("<end_of_turn>"), "b"]
    assert _run(pieces)[0] == "ab"


def test_text_that_only_looks_like_a_token_start_comes_out_unchanged() -> None:
    text, out = _run(["x < y and <b>bold</b> <end", "ing>"])
    assert text == "x < y and <b>bold</b> <ending>"
    # Nothing is held back longer than needed: "x < y and " goes out with the first chunk.
    assert out[0].startswith("x < y and ")


_OVERLAPPING = ["<eos>", "<eos>>", "<e", "[x]", "<end_of_turn>", "<"]


@given(st.lists(st.sampled_from([*_OVERLAPPING, "e", "o", "s", ">", " ", "x", "]", "a"])))
def test_the_scan_removes_what_a_longest_first_regex_would(parts: list[str]) -> None:
    text = "".join(parts)
    ordered = sorted(_OVERLAPPING, key=len, reverse=True)
    expected = re.sub("|".join(re.escape(s) for s in ordered), "", text)
    assert SpecialTokens(_OVERLAPPING).strip(text) == expected


def test_the_tables_are_built_once_and_shared_by_each_request() -> None:
    table = SpecialTokens(SPECIALS)
    first, second = SpecialTokenFilter(table), SpecialTokenFilter(table)
    assert first.feed("a<eo") == "a" and second.feed("b") == "b"  # state is per request
    assert first.feed("s>c") == "c"


def test_which_vocabulary_entries_count_as_special() -> None:
    control, user_defined, normal = 8, 16, 4
    assert is_special("<end_of_turn>", control)
    assert is_special("<start_of_image>", user_defined)
    assert is_special("<|im_end|>", user_defined)
    assert not is_special("<table>", user_defined)  # Gemma's HTML tags are text
    assert not is_special("\n\n", user_defined)
    assert not is_special("<start_of_image>", normal)


def test_the_engine_learns_the_special_strings_from_the_vocabulary(engine: LlamaEngine) -> None:
    assert {"<|im_start|>", "<|im_end|>", "<start_of_image>", "<s>", "</s>"} <= set(engine.specials)


# ------------------------------------------- what the OpenAI gateway relies on


def test_a_json_schema_response_format_constrains_the_output(engine: LlamaEngine) -> None:
    import json

    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    req = InferenceRequest.model_validate({
        "messages": [{"role": "user", "content": "Is it?"}], "max_tokens": None, "seed": 3,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
    })  # fmt: skip
    g = Generation()
    text = "".join(engine.generate(req, threading.Event(), g))
    assert g.stop_reason == "stop"  # ends when the object is complete, not at a cap
    assert isinstance(json.loads(text)["ok"], bool)


def test_stop_sequences_end_the_text_before_them(engine: LlamaEngine) -> None:
    for seed in range(3):
        g = Generation()
        req = InferenceRequest(prompt="abc", max_tokens=200, seed=seed, stop=["a", "e", "o"])
        text = "".join(engine.generate(req, threading.Event(), g))
        assert not {"a", "e", "o"} & set(text), text
