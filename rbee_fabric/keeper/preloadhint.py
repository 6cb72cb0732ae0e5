"""The `rbee-hive --preload` hint: the request a keeper is about to make of the hive it
starts, so its worker starts loading before the hive is up (hive/speculate.py).

Stdlib only: the lean path of `rbee infer` builds it too.
"""

from __future__ import annotations

import json


def preload_hint(
    ref: str, n_ctx: int, backend: str, device: int, safe_mode: str, max_queue: int | None = None
) -> str:
    """The JSON the hive's --preload takes (canonical model reference, as the catalog)."""
    hint = {"model": ref, "n_ctx": n_ctx, "backend": backend, "device": device,
            "safe_mode": safe_mode}  # fmt: skip
    if max_queue is not None:
        hint["max_queue"] = max_queue
    return json.dumps(hint)
