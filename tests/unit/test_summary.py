"""The summary line of `rbee infer`: one start point for every time in it."""

from __future__ import annotations

import ast
from pathlib import Path

from rbee_fabric import summary
from rbee_fabric.summary import Summary, decode_rate, summary_json, summary_line


def test_every_time_is_from_the_start_and_first_comes_before_all() -> None:
    s = Summary(tokens=60, seconds=6.40, first_token_s=5.10, worker_id="w-1", reused=False)
    line = summary_line(s)
    assert line == "60 tokens in 6.40 s, first after 5.10 s, then 45.4 tokens/s\nworker w-1"
    # The old line read "60 tokens in 4.94 s ... first token after 5.10 s": never again.
    assert s.first_token_s <= s.seconds


def test_reused_worker_and_queue_wait_are_named() -> None:
    s = Summary(tokens=2, seconds=3.0, first_token_s=2.5, worker_id="w-2", reused=True, queued_s=2.0)
    assert summary_line(s) == (
        "2 tokens in 3.00 s, first after 2.50 s, then 2.0 tokens/s\n"
        "worker w-2 (reused), 2.00 s of it in the queue"
    )


def test_one_token_has_no_speed() -> None:
    s = Summary(tokens=1, seconds=0.5, first_token_s=0.5, worker_id="w-3", reused=True)
    assert summary_line(s) == "1 token in 0.50 s, first after 0.50 s\nworker w-3 (reused)"
    assert decode_rate(0, 0.0, 0.0) == 0.0


def test_the_longest_summary_fits_80_columns() -> None:
    # The widest a real run gives: big counts and times, a real worker id, reused, queued.
    s = Summary(tokens=99999, seconds=9999.99, first_token_s=999.99, worker_id="w-0123456789",
                reused=True, queued_s=999.99)  # fmt: skip
    lines = summary_line(s).split("\n")
    assert len(lines) == 2
    assert max(len(line) for line in lines) <= summary.WIDTH == 80
    assert lines[1] == "worker w-0123456789 (reused), 999.99 s of it in the queue"


def test_json_uses_the_same_start_point() -> None:
    s = Summary(tokens=21, seconds=2.0, first_token_s=1.0, worker_id="w-4", reused=True,
                stop_reason="length", prompt_tokens=7, rendered_as="raw")  # fmt: skip
    js = summary_json(s, "hello")
    assert js == {
        "text": "hello", "tokens": 21, "seconds": 2.0, "first_token_s": 1.0,
        "tokens_per_second": 20.0, "worker_id": "w-4", "reused_worker": True,
        "stop_reason": "length", "queued_s": 0.0, "prompt_tokens": 7, "rendered_as": "raw",
    }  # fmt: skip


def test_summary_module_imports_only_the_stdlib() -> None:
    tree = ast.parse(Path(summary.__file__).read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert names <= {"__future__", "dataclasses", "typing"}
