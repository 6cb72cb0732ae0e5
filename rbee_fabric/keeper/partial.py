"""A generation that broke off: keep its text, and say what happened (stdlib only).

Shared by the full path (generate.py) and the lean path (fastpath_stream.py).
"""

from __future__ import annotations

from rbee_fabric import paths
from rbee_fabric.errors import ConnectionLost, WorkerCrashed


def save_partial(request_id: str, pieces: list[str]) -> tuple[str, str]:
    crash_dir = paths.ensure_dir(paths.data_dir() / "partial")
    path = crash_dir / f"{request_id}.txt"
    text = "".join(pieces)
    path.write_text(text, encoding="utf-8")
    return str(path), text


def lost_error(
    node: str, worker_id: str, max_tokens: int | None, request_id: str, pieces: list[str],
    reason: str | None, *, link_ended: bool = False,
) -> ConnectionLost:  # fmt: skip
    """The worker is fine, the way to it broke: keep the output and the worker.
    link_ended: the node's kept SSH connection (keeper/link.py) ended, so the
    worker's fate is unknown."""
    path, text = save_partial(request_id, pieces)
    state = (f"the kept SSH connection to {node} ended, so whether the worker still runs is unknown; "
             "run the command again (it connects anew)") if link_ended else (
             "the worker is still up and the generation was stopped; run the command again to reuse it")  # fmt: skip
    return ConnectionLost(
        f"the connection to worker {worker_id} on {node} was lost mid-generation "
        f"(tokens received {len(pieces)} / {max_tokens}): {reason or 'stream ended'}",
        hint=f"the partial output is saved in {path}; {state}",
        details={"saved_to": path, "tokens": len(pieces), "partial_text": text,
                 "worker_id": worker_id},
    )  # fmt: skip


def crashed_error(
    node: str, worker_id: str, max_tokens: int | None, request_id: str, pieces: list[str],
    broken: str | None,
) -> WorkerCrashed:  # fmt: skip
    """The worker is gone: keep what it generated, save it and say where."""
    if not pieces and broken is not None:
        return WorkerCrashed(
            f"worker {worker_id} is unreachable: {broken}",
            hint="run the command again to start a fresh worker",
        )
    path, text = save_partial(request_id, pieces)
    return WorkerCrashed(
        f"worker {worker_id} on {node} stopped mid-generation "
        f"(tokens generated {len(pieces)} / {max_tokens or 'end of turn'})",
        hint=f"the partial output is saved in {path}; run the command again "
        "to start a fresh worker",
        details={"saved_to": path, "tokens": len(pieces), "partial_text": text},
    )
