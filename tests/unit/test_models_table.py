"""`rbee models list` at 80 and 140 columns: every id whole, sizes in decimal MB as the download bar."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from rbee_fabric.cli.modeltable import models_table
from rbee_fabric.schemas import ModelInfo

MODELS = [
    ModelInfo(id="gemma3-270m-e916efff", reference="gemma3-270m", path="/data/models/gemma-3-270m-q4_k_m.gguf",
              size_bytes=253_100_000, quantization="Q4_K_M", added_at="2026-12-05T20:31:07"),
    ModelInfo(id="tinyllama-1-1b-chat-v1-0-0a1b2c3d", reference="hf:TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF:Q4_K_M",
              path="/data/models/hf/x.gguf", size_bytes=4_370_000_000, quantization="Q4_K_M",
              added_at="2026-12-04T09:00:00", chat_template=True),
]  # fmt: skip


def render(width: int) -> list[str]:
    console = Console(file=io.StringIO(), width=width)
    console.print(models_table(MODELS, width))
    return console.file.getvalue().splitlines()  # type: ignore[attr-defined]


@pytest.mark.parametrize("width", [80, 140])
def test_every_row_is_one_line_with_the_whole_id(width: int) -> None:
    header, *rows = render(width)
    chat = ["CHAT"] if width >= 100 else []
    assert header.split() == ["ID", "REFERENCE", "SIZE", "QUANT", "ADDED", *chat]
    assert len(rows) == 2 and all(len(line) <= width for line in [header, *rows])
    no, yes = (["no"], ["yes"]) if chat else ([], [])
    assert rows[0].split() == ["gemma3-270m-e916efff", "gemma3-270m", "253.1", "MB", "Q4_K_M", "2026-12-05", *no]
    assert rows[1].startswith("tinyllama-1-1b-chat-v1-0-0a1b2c3d ")
    assert rows[1].split()[-4 - len(yes) :] == ["4.4", "GB", "Q4_K_M", "2026-12-04", *yes]


def test_a_narrow_terminal_shortens_only_the_reference() -> None:
    rows = render(80)[1:]
    assert "hf:TheBloke/Ti…" in rows[1] and "gemma3-270m " in rows[0]
    assert "hf:TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF:Q4_K_M" in render(140)[2]
