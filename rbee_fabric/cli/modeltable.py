"""The `rbee models list` table: every id in full (what `models rm` takes), fitted to the terminal."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from rbee_fabric.cli.ui import safe


def size_text(size_bytes: int) -> str:
    """Decimal units, as the download bar shows them: 253.1 MB, 4.1 GB."""
    return f"{size_bytes / 1e9:.1f} GB" if size_bytes >= 1e9 else f"{size_bytes / 1e6:.1f} MB"


def models_table(models: list[Any], width: int = 80) -> Table:
    """ID, reference, size, quantization, date added and (100 columns and up) whether
    the GGUF has a chat template; --json has every field."""
    columns = ["ID", "REFERENCE", "SIZE", "QUANT", "ADDED", "CHAT"]
    lines = [
        [safe(m.id), safe(m.reference), size_text(m.size_bytes), safe(m.quantization or "?"),
         safe(m.added_at[:10]), "yes" if m.chat_template else "no"]
        for m in models
    ]  # fmt: skip
    if width < 100:
        columns, lines = columns[:-1], [line[:-1] for line in lines]
    widths = [max(len(col), *(len(line[i]) for line in lines)) for i, col in enumerate(columns)]
    # Only REFERENCE gives way (an ellipsis) on a narrow terminal; the id never does.
    ref = columns.index("REFERENCE")
    room = width - 2 * (len(columns) - 1) - sum(w for i, w in enumerate(widths) if i != ref)
    widths[ref] = max(9, min(widths[ref], room))
    table = Table(box=None, pad_edge=False, padding=(0, 1), header_style="bold")
    for i, col in enumerate(columns):
        table.add_column(col, no_wrap=True, width=widths[i], justify="right" if col == "SIZE" else "left")
    for line in lines:
        if len(line[ref]) > widths[ref]:
            line[ref] = line[ref][: widths[ref] - 1] + "…"
        table.add_row(*line)
    return table
