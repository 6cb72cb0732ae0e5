"""The `rbee workers list` table: every column kept at 80, only names shortened."""

from __future__ import annotations

import io
import time

from rich.console import Console

from rbee_fabric.cli.workertable import short_model, workers_table


def render(rows: list[dict], width: int) -> list[str]:
    out = io.StringIO()
    Console(file=out, width=width, force_terminal=False).print(workers_table(rows, width))
    return out.getvalue().splitlines()


def rows() -> list[dict]:
    """Three workers; the idle one unloads in 227.6 s from now."""
    return [
    {"node": "localhost", "id": "w-1a2b3c4d5e", "model": "gemma3-270m", "state": "idle", "memory_mb": 412,
     "backend": "cpu", "device": 0, "n_ctx": 2048, "queued": 0, "idle_seconds": 72.4,
     "unload_at": time.time() + 227.6},
    {"node": "gpu-box-in-the-kitchen", "id": "w-9f8e7d6c5b",
     "model": "hf:TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF:Q4_K_M", "state": "busy", "memory_mb": 1830,
     "backend": "cuda", "device": 1, "n_ctx": 32768, "queued": 12, "idle_seconds": None, "unload_at": None},
    {"node": "laptop", "id": "w-0a0b0c0d0e", "model": "file:/models/x.gguf", "state": "unknown (CONNECTION_TIMEOUT)",
     "url": "http://10.0.0.3:9300", "pid": 1},
    ]  # fmt: skip


def test_at_80_columns_every_column_stays_and_long_names_get_an_ellipsis() -> None:
    lines = render(rows(), 80)
    assert all(len(line) <= 80 for line in lines)
    assert lines[0].split() == ["NODE", "WORKER", "MODEL", "STATE", "MEMORY", "ON", "CTX", "Q", "UNLOADS"]
    idle, busy, unknown = (line.split() for line in lines[1:])
    assert idle[2].startswith("gemma3-2")  # the room the other rows leave
    assert idle[1:2] + idle[3:] == ["w-1a2b3c4d5e", "idle", "1m12s", "412", "MB", "cpu", "2048", "0", idle[-1]]
    assert idle[-1].startswith("3m4")  # 227 s left, give or take the time to render
    assert busy[0].endswith("…") and busy[2].endswith("…")  # node and model shortened, the rest whole
    assert busy[3:] == ["busy", "1.8", "GB", "cuda:1", "32768", "12", "-"]
    assert unknown[1:] == ["w-0a0b0c0d0e", "x.gguf", "unknown", "-", "-", "-", "-", "-"]


def test_a_wide_terminal_shows_the_names_whole() -> None:
    lines = render(rows(), 140)
    assert "gpu-box-in-the-kitchen" in lines[2] and "TinyLlama-1.1B-Chat-v1.0-GGUF:Q4_K_M" in lines[2]


def test_short_model_names() -> None:
    assert short_model("hf:org/Repo-GGUF:Q4_K_M") == "Repo-GGUF:Q4_K_M"
    assert short_model("file:/a/b/model.gguf") == "model.gguf"
    assert short_model("gemma3-270m") == "gemma3-270m"
