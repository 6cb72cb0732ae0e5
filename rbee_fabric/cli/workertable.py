"""The `rbee workers list` table: what `ollama ps` shows, fitted to the terminal."""

from __future__ import annotations

import time
from typing import Any

from rich.table import Table

from rbee_fabric.cli.ui import safe


def workers_table(rows: list[dict[str, Any]], width: int = 80) -> Any:
    """The `ollama ps` view of the workers, made to fit 80 columns (--json has every field)."""
    table = Table(box=None, pad_edge=False, padding=(0, 1), header_style="bold")
    columns = ["NODE", "WORKER", "MODEL", "STATE", "MEMORY", "ON", "CTX", "Q", "UNLOADS"]
    lines = []
    for r in rows:
        state = str(r["state"]).split(" ")[0]  # "unknown (CODE)": the code is in --json
        if state == "idle" and (idle := _duration(r.get("idle_seconds"))) != "-":
            state = f"idle {idle}"
        lines.append([safe(c) for c in (
            r["node"], r["id"], short_model(str(r["model"])), state, _memory(r), _device(r),
            _num(r.get("n_ctx")), _num(r.get("queued")), _until(r.get("unload_at")),
        )])  # fmt: skip
    widths = [max(len(col), *(len(line[i]) for line in lines)) for i, col in enumerate(columns)]
    # NODE and MODEL give way (an ellipsis) when the terminal is narrow; the rest never do.
    node, model = columns.index("NODE"), columns.index("MODEL")
    room = width - 2 * (len(columns) - 1) - sum(w for i, w in enumerate(widths) if i not in (node, model))
    if widths[node] + widths[model] > room:
        widths[node] = min(widths[node], max(6, room // 3))
        widths[model] = max(6, room - widths[node])
    for i, col in enumerate(columns):
        table.add_column(col, no_wrap=True, width=widths[i],
                         justify="right" if col in ("MEMORY", "CTX", "Q") else "left")  # fmt: skip
    for line in lines:
        for i in (node, model):
            if len(line[i]) > widths[i]:
                line[i] = line[i][: widths[i] - 1] + "…"
    for line in lines:
        table.add_row(*line)
    return table


def short_model(reference: str) -> str:
    """hf:ORG/REPO:FILE -> REPO:FILE, file:/dir/x.gguf -> x.gguf, an alias as it is."""
    if reference.startswith("file:"):
        return reference.rsplit("/", 1)[-1]
    if reference.startswith("hf:"):
        return reference[3:].split("/", 1)[-1]
    return reference


def _memory(r: dict[str, Any]) -> str:
    mb = r.get("memory_mb")
    prefix = ""
    if mb is None and (mb := r.get("memory_estimate_mb")) is not None:
        prefix = "~"  # not measured: the hive's estimate
    if mb is None:
        return "-"
    return f"{prefix}{mb / 1024:.1f} GB" if mb >= 1024 else f"{prefix}{mb} MB"


def _device(r: dict[str, Any]) -> str:
    backend = r.get("backend")
    if not backend:
        return "-"
    return str(backend) if backend == "cpu" else f"{backend}:{r.get('device', 0)}"


def _num(value: object) -> str:
    return "-" if value is None else str(value)


def _duration(seconds: object) -> str:
    if not isinstance(seconds, int | float):
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _until(at: object) -> str:
    return _duration(max(0.0, at - time.time())) if isinstance(at, int | float) else "-"
