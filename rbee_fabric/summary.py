"""The summary of one generation, shared by every path that prints it (stdlib only).

Every time is measured from one start point: the moment the keeper began the
request, before it looked for a worker. So "first after" includes finding or
starting the worker, loading and any wait in the queue, "in" runs to the last
token, and the speed is the decode speed after the first token.
"""

from __future__ import annotations

from typing import Any, NamedTuple


def decode_rate(tokens: int, first_token_s: float, total_s: float) -> float:
    """Tokens per second after the first one (0.0 when there is nothing to measure)."""
    span = total_s - first_token_s
    if tokens < 2 or span <= 0:
        return 0.0
    return (tokens - 1) / span


class Summary(NamedTuple):  # a NamedTuple: the lean path never imports dataclasses
    tokens: int
    seconds: float  # start to the last token
    first_token_s: float  # start to the first token
    worker_id: str
    reused: bool
    stop_reason: str = "stop"
    queued_s: float = 0.0  # of first_token_s, the time spent in the worker's queue
    prompt_tokens: int = 0
    rendered_as: str | None = None

    @property
    def tokens_per_second(self) -> float:
        return decode_rate(self.tokens, self.first_token_s, self.seconds)


WIDTH = 80  # the narrowest terminal the summary must fit without wrapping


def summary_line(s: Summary) -> str:
    """Two short lines, each within 80 columns: the times, then the worker.

    `20 tokens in 1.23 s, first after 0.40 s, then 23.0 tokens/s`
    `worker w-1 (reused), 0.10 s of it in the queue`
    """
    times = [f"{s.tokens} token{'' if s.tokens == 1 else 's'} in {s.seconds:.2f} s",
             f"first after {s.first_token_s:.2f} s"]  # fmt: skip
    if rate := s.tokens_per_second:
        times.append(f"then {rate:.1f} tokens/s")
    worker = [f"worker {s.worker_id}{' (reused)' if s.reused else ''}"]
    if s.queued_s:
        worker.append(f"{s.queued_s:.2f} s of it in the queue")
    return ", ".join(times) + "\n" + ", ".join(worker)


def summary_json(s: Summary, text: str) -> dict[str, Any]:
    """The `--json` object of `rbee infer`; times from the same start point as the line."""
    return {
        "text": text, "tokens": s.tokens, "seconds": round(s.seconds, 3),
        "first_token_s": round(s.first_token_s, 3),
        "tokens_per_second": round(s.tokens_per_second, 2),
        "worker_id": s.worker_id, "reused_worker": s.reused, "stop_reason": s.stop_reason,
        "queued_s": round(s.queued_s, 3), "prompt_tokens": s.prompt_tokens,
        "rendered_as": s.rendered_as,
    }  # fmt: skip
