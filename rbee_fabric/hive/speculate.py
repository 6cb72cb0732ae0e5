"""A speculative first worker: loading the model a cold `rbee infer` asked for while
the hive is still importing its web stack.

A keeper that finds no hive starts one with `--preload '{"model": REF, "n_ctx": N,
"backend": B, "device": D, "safe_mode": POLICY}'` (the request it is about to
make). Before its own imports (~1 s), the hive looks the model up in its
catalog (sqlite3) and, when it can predict what it will decide for that
request, starts the worker right away with `--speculate`: the worker loads and
warms up the model, then waits on stdin (worker/preload.py).

The hive's decision stays the hive's: when the spawn request comes, the
scheduler and supervisor decide as always, and the supervisor adopts the
speculative worker only when the decision loads the model exactly as it was
loaded (same file, context, backend, device, safe mode): it sends the worker
where to listen and becomes its parent as for any worker. Otherwise, or when
nobody asks within TTL_S, the worker is ended. Stdlib only: it runs before the
hive's imports.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, NamedTuple

log = logging.getLogger("rbee.hive")

def ttl_s() -> float:
    """An unadopted speculative worker is ended this long after it started."""
    return float(os.environ.get("RBEE_SPECULATION_TTL_S", "60"))


class LoadSpec(NamedTuple):
    """How a worker loads its model: adoption needs all of it equal."""

    model_path: str
    n_ctx: int
    backend: str  # cpu, cuda or metal: resolved, never auto
    device: int  # 0 for cpu
    safe_mode: bool


class Speculation:
    """A speculative worker process, until it is adopted or ended; it waits on its
    stdin (a pipe whose write end this holds) for its identity."""

    def __init__(
        self, spec: LoadSpec, wid: str, log_path: Path, proc: subprocess.Popen[bytes], pipe_fd: int
    ) -> None:  # fmt: skip
        self.spec = spec
        self.wid = wid
        self.log_path = log_path
        self.proc = proc
        self.pid = proc.pid
        self.pipe_fd: int | None = pipe_fd
        self.started = time.monotonic()

    def _close_pipe(self) -> None:
        if self.pipe_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.pipe_fd)
            self.pipe_fd = None

    def adopt(self, identity: dict[str, Any]) -> bool:
        """Send the worker where to listen; False when it is gone already."""
        if self.pipe_fd is None or self.proc.poll() is not None:
            return False
        try:
            os.write(self.pipe_fd, json.dumps(identity).encode() + b"\n")
        except OSError:
            return False
        finally:
            self._close_pipe()
        return True

    def process(self) -> Any:
        """The adopted worker as a WorkerProc (hive/forker.py)."""
        from rbee_fabric.hive.forker import PopenProcess

        return PopenProcess(self.proc)

    def cancel(self, why: str) -> None:
        """End the worker (its whole process group) and reap it."""
        if self.proc.poll() is None:
            log.info("ending speculative worker %s (pid %d): %s", self.wid, self.pid, why)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
        self._close_pipe()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5.0)


def parse_hint(text: str) -> dict[str, Any] | None:
    """The keeper's --preload JSON, checked; None when it is not usable."""
    try:
        hint = json.loads(text)
    except ValueError:
        return None
    if not isinstance(hint, dict):
        return None
    ok = (
        isinstance(hint.get("model"), str)
        and type(hint.get("n_ctx")) is int and hint["n_ctx"] > 0
        and hint.get("backend") in ("auto", "cpu", "cuda", "metal")
        and type(hint.get("device", 0)) is int and hint.get("device", 0) >= 0
        and hint.get("safe_mode", "auto") in ("auto", "on", "off")
    )  # fmt: skip
    return hint if ok else None


def predict(hint: dict[str, Any], data_dir: Path) -> LoadSpec | None:
    """The worker the hive will start for the hinted request, when that is certain."""
    from rbee_fabric.ggufmeta import context_length
    from rbee_fabric.hive.safemode import SafeModeStore
    from rbee_fabric.llamabuild import llama_build_backend

    row = _catalog_row(data_dir / "catalog.db", hint["model"])
    if row is None:
        return None
    path, size = row
    try:
        if os.path.getsize(path) != size:
            return None  # the catalog will forget it: let the hive say what happens
        trained = context_length(path)  # the whole header would delay the start by 0.16 s
    except (OSError, ValueError):
        return None
    # As resources.pick_backend: `auto` is cpu for sure only on a CPU-only build.
    build = llama_build_backend()
    backend = hint["backend"]
    if backend == "auto":
        if build != "cpu":
            return None  # cuda or cpu depends on the devices: not worth guessing
        backend = "cpu"
    elif backend != "cpu" and backend != build:
        return None  # the hive will refuse it
    n_ctx = min(hint["n_ctx"], trained or hint["n_ctx"])
    policy = hint.get("safe_mode", "auto")
    safe = policy == "on" or (policy == "auto" and SafeModeStore(data_dir).get() is not None)
    device = hint.get("device", 0) if backend != "cpu" else 0
    return LoadSpec(path, n_ctx, backend, device, safe)


def _catalog_row(db_path: Path, reference: str) -> tuple[str, int] | None:
    if not db_path.is_file():
        return None
    try:
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=2.0)
        try:
            row = db.execute(
                "SELECT path, size_bytes FROM models WHERE reference = ?", [reference]
            ).fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        return None
    return (str(row[0]), int(row[1])) if row else None


def begin(hint_text: str, data_dir: Path, api_key: str) -> Speculation | None:
    """Start the speculative worker for the keeper's hint, when the hive's decision
    is predictable."""
    hint = parse_hint(hint_text)
    if hint is None:
        log.warning("ignoring --preload %r: not a usable request", hint_text[:200])
        return None
    spec = predict(hint, data_dir)
    if spec is None:
        return None
    wid = f"w-{uuid.uuid4().hex[:10]}"
    logs = data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"worker-{wid}.log"
    return _start_process(spec, wid, log_path, api_key)


def _start_process(spec: LoadSpec, wid: str, log_path: Path, api_key: str) -> Speculation | None:
    """The speculative worker as a new interpreter (llm-worker-rbee --speculate)."""
    python = sys.executable
    cmd = [
        python, "-m", "rbee_fabric.worker", "--speculate", "--worker-id", wid,
        "--model", spec.model_path, "--n-ctx", str(spec.n_ctx),
        "--backend", spec.backend, "--device", str(spec.device),
        *(["--safe-mode"] if spec.safe_mode else []),
    ]  # fmt: skip
    env = {**os.environ, "RBEE_API_KEY": api_key, "PYTHONUNBUFFERED": "1",
           "RBEE_HIVE_PID": str(os.getpid())}  # fmt: skip
    read_fd, write_fd = os.pipe()
    try:
        with open(log_path, "ab") as logf:
            proc = subprocess.Popen(
                cmd, stdin=read_fd, stdout=logf, stderr=subprocess.STDOUT, env=env,
                start_new_session=True, close_fds=True,
            )  # fmt: skip
    except OSError as exc:
        os.close(write_fd)
        log.warning("no speculative worker: %s", exc)
        return None
    finally:
        os.close(read_fd)
    log.info("speculative worker %s (pid %d) loading %s", wid, proc.pid, spec.model_path)
    return Speculation(spec, wid, log_path, proc, write_fd)
