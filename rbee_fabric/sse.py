"""Server-sent events: one encoder for the daemons, one decoder for clients."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel

DONE = "[DONE]"


def encode(event: BaseModel | dict[str, Any] | str) -> bytes:
    """One SSE frame carrying a pydantic model, a dict, or the literal `[DONE]`."""
    if isinstance(event, BaseModel):
        data = event.model_dump_json(exclude_none=True)
    elif isinstance(event, dict):
        data = json.dumps(event, separators=(",", ":"))
    else:
        data = event
    return f"data: {data}\n\n".encode()


async def decode(lines: AsyncIterator[str]) -> AsyncIterator[dict[str, Any] | str]:
    """Yield the payload of each event: a parsed JSON object, or `[DONE]`."""
    buf: list[str] = []
    async for line in lines:
        if line.startswith("data:"):
            buf.append(line[5:].lstrip(" "))
            continue
        if line == "" and buf:
            payload = "\n".join(buf)
            buf.clear()
            if payload == DONE:
                yield DONE
                return
            yield json.loads(payload)
    if buf:
        payload = "\n".join(buf)
        yield DONE if payload == DONE else json.loads(payload)
