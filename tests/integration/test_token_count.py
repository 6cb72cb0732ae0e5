"""`--max-tokens N` means at most N tokens, counted exactly (issue 17: "23 tokens for 20").

The tiny model has a byte-level vocabulary and random weights, so it often
samples a byte that starts a multi-byte UTF-8 character. llama-cpp-python's
streaming completion skips its max_tokens check until such a character is
complete (so it generated up to three tokens more), and its stream chunks are
not tokens: the worker counted chunks. With seed 0 and N = 5 the tiny model
used to report 7 tokens.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

from rbee_fabric.schemas import InferenceRequest
from rbee_fabric.worker.engine import Generation, LlamaEngine
from tests.conftest import RbeeHome


def test_the_engine_stops_at_max_tokens_and_counts_tokens_not_chunks(tiny_model: Path) -> None:
    engine = LlamaEngine(str(tiny_model), backend="cpu", device=0, n_ctx=512)
    engine.load(lambda _: True)
    try:
        engine.warm_up()
        seen_length = False
        for seed in range(8):
            result = Generation()
            req = InferenceRequest(prompt="hi", max_tokens=5, seed=seed)
            list(engine.generate(req, threading.Event(), result))
            assert 1 <= result.tokens <= 5, (seed, result)
            assert (result.stop_reason == "length") == (result.tokens == 5), (seed, result)
            seen_length |= result.stop_reason == "length"
        assert seen_length
        # Counted, not estimated: the same seed twice gives the same count.
        again = Generation()
        list(engine.generate(InferenceRequest(prompt="hi", max_tokens=5, seed=0), threading.Event(), again))
        first = Generation()
        list(engine.generate(InferenceRequest(prompt="hi", max_tokens=5, seed=0), threading.Event(), first))
        assert again.tokens == first.tokens
    finally:
        engine.close()


def test_a_cold_worker_reports_at_most_max_tokens_in_json_and_in_the_summary(
    rbee_home: RbeeHome, tiny_model: Path
) -> None:
    rbee_home.local_node()
    model = f"file:{tiny_model}"
    try:
        # Cold: the hive and the worker start for this request.
        plain = rbee_home.run("infer", "--model", model, "--prompt", "hi", "--max-tokens", "5", "--seed", "0")
        assert plain.returncode == 0, plain.stderr
        summary = re.search(r"(\d+) tokens in ", plain.stderr)
        assert summary is not None, plain.stderr
        assert 1 <= int(summary.group(1)) <= 5
        for seed in range(1, 6):
            r = rbee_home.run("infer", "--model", model, "--prompt", "hi", "--max-tokens", "5",
                              "--seed", str(seed), "--json")  # fmt: skip
            assert r.returncode == 0, r.stderr
            out = json.loads(r.stdout)
            assert 1 <= out["tokens"] <= 5, out
            assert (out["stop_reason"] == "length") == (out["tokens"] == 5), out
    finally:
        rbee_home.run("hive", "stop", "localhost")
