"""Chat as a user meets it: `rbee infer` through the template, and `rbee chat` in a real terminal."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import RbeeHome
from tests.support.procs import processes_with_env
from tests.support.term import Terminal
from tests.support.tiny_gguf import CHATML_TEMPLATE, write_tiny_gguf


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("m") / "tiny-chat.gguf", chat_template=CHATML_TEMPLATE)


def test_infer_answers_through_the_template_and_says_so_once(rbee_home: RbeeHome, chat_model: Path) -> None:
    rbee_home.local_node()
    base = ("infer", "--model", f"file:{chat_model}", "--prompt", "hello", "--json", "--seed", "1")
    try:
        chat = rbee_home.run(*base, "--max-tokens", "6")
        assert chat.returncode == 0, chat.stderr
        a = json.loads(chat.stdout)
        assert a["rendered_as"] == "chat_template"
        assert chat.stderr.count("chat template") == 1
        assert a["tokens"] <= 6

        # The catalog knows the template: a reused worker still answers through it, and a
        # system prompt goes to the model too (the prompt grows).
        sys_ = rbee_home.run(*base, "--max-tokens", "6", "--system", "You answer in French.")
        b = json.loads(sys_.stdout)
        assert b["reused_worker"] is True and b["rendered_as"] == "chat_template"
        assert b["prompt_tokens"] > a["prompt_tokens"] + 15

        raw = rbee_home.run(*base, "--raw", "--max-tokens", "6")
        c = json.loads(raw.stdout)
        assert c["rendered_as"] == "raw" and "raw completion" in raw.stderr
        assert c["prompt_tokens"] < a["prompt_tokens"]

        models = json.loads(rbee_home.run("models", "list", "--json").stdout)
        assert [m["chat_template"] for m in models] == [True]
    finally:
        rbee_home.run("hive", "stop", "localhost")


def test_infer_without_template_is_raw_and_capped_above_a_paragraph(rbee_home: RbeeHome, tiny_model: Path) -> None:
    rbee_home.local_node()
    try:
        r = rbee_home.run("infer", "--model", f"file:{tiny_model}", "--prompt", "hello", "--json", "--seed", "4")
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["rendered_as"] == "raw" and "no chat template" in r.stderr
        assert out["stop_reason"] == "length" and out["tokens"] > 20  # the old cap of 20 cut sentences off
        # A named format renders a chat even without a template.
        f = rbee_home.run("infer", "--model", f"file:{tiny_model}", "--prompt", "hi", "--json",
                          "--chat-format", "chatml", "--max-tokens", "4")  # fmt: skip
        assert json.loads(f.stdout)["rendered_as"] == "chatml", f.stderr
        bad = rbee_home.run("infer", "--model", f"file:{tiny_model}", "--prompt", "hi", "--chat-format", "nope")
        assert bad.returncode == 2 and "NO_CHAT_TEMPLATE" in bad.stderr and "Suggestion:" in bad.stderr
    finally:
        rbee_home.run("hive", "stop", "localhost")


def test_rbee_chat_in_a_terminal(rbee_home: RbeeHome, tiny_model: Path, tmp_path: Path) -> None:
    """Two turns, Ctrl+C stops an answer on the worker, /bye exits 0, nothing left running.

    The workers use the scripted engine (150 ms a token, 20 tokens an answer), so an
    answer is slow enough to interrupt; everything else is the real keeper, hive and worker.
    """
    rbee_home.local_node()
    env = {**rbee_home.env, "RBEE_WORKER_ENGINE": "scripted", "RBEE_SCRIPTED_DELAY_MS": "150"}
    argv = [sys.executable, "-m", "rbee_fabric.cli", "chat", "--model", f"file:{tiny_model}",
            "--chat-format", "chatml"]  # fmt: skip
    term = Terminal(argv, env, tmp_path)
    try:
        term.wait_for(">>>")
        term.type("first question")
        term.wait_for("20 tokens", count=1)
        term.type("second question")
        screen = term.wait_for("20 tokens", count=2)
        assert "tok19" in screen
        # A multi-line block is one message.
        term.type('"""')
        term.type("line one")
        term.type('line two"""')
        term.wait_for("20 tokens", count=3)
        # Ctrl+C during an answer: stopped, the session goes on.
        term.type("a long one")
        term.wait_for(" tok2", count=4)
        term.send("C-c")
        screen = term.wait_for("answer stopped")
        stopped = screen[screen.rindex("a long one") : screen.index("answer stopped")]
        assert "tok19" not in stopped
        term.type("after the stop")
        term.wait_for("20 tokens", count=4)
        term.type("/help")
        term.wait_for("/clear")
        term.type("/bye")
        assert term.exit_status() == 0
    finally:
        term.close()
        rbee_home.run("hive", "stop", "localhost")
    history = (rbee_home.data / "chat_history").read_text()
    assert "first question" in history and "after the stop" in history
    assert processes_with_env("RBEE_TEST_MARKER", rbee_home.marker) == []
