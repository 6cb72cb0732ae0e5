"""A speculative first worker: loading the model a cold `rbee infer` asked for while
the hive is still importing its web stack.

A keeper that finds no hive starts one with `--preload '{"model": REF, "n_ctx": N,
"backend": B, "device": D, "safe_mode": POLICY}'` (the request it is about to
make). Before its own imports (~1 s), the hive looks the model up in its
catalog (sqlite3) and, when it can predict what it will decide for that
request, starts the worker right away with `--speculate`: the worker loads and
warms up the model, then waits on stdin (worker/preload.py).

When the hive knows its own address, the worker gets where to listen at once
(a port of the worker range) and listens as soon as its own imports are done;
the keeper that started the hive reads that record on a pipe
(RBEE_HIVE_PRELOAD_FD) and streams its first answer from the worker without
waiting for the hive, which imports its web stack at low priority meanwhile.

The hive's decision stays the hive's: when the spawn request comes, the
scheduler and supervisor decide as always, and the supervisor adopts the
speculative worker only when the decision loads the model exactly as it was
loaded (same file, context, backend, device, safe mode). Otherwise, or when
nobody asks within TTL_S, the worker is ended. Stdlib only: it runs before the
hive's imports.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import signal
import socket
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
        self.safe_reason: str | None = None
        self.started = time.monotonic()
        self.identity: dict[str, Any] | None = None  # sent before the hive was up

    def _close_pipe(self) -> None:
        if self.pipe_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.pipe_fd)
            self.pipe_fd = None

    def send_identity(self, identity: dict[str, Any]) -> bool:
        """Tell the worker where to listen now, before the hive's decision (claim)."""
        if not self.adopt(identity):
            return False
        self.identity = identity
        return True

    @property
    def url(self) -> str | None:
        """Where the worker listens, once it was told (send_identity)."""
        if self.identity is None:
            return None
        host = self.identity["host"]
        return f"http://{f'[{host}]' if ':' in host else host}:{self.identity['port']}"

    def claim(self) -> bool:
        """Adopt a worker that has its identity already; False when it is gone."""
        return self.identity is not None and self.proc.poll() is None

    def record(self) -> dict[str, Any]:
        """What the keeper that started the hive needs to use this worker."""
        return {"worker_id": self.wid, "url": self.url, "pid": self.pid,
                **self.spec._asdict(), "safe_mode_reason": self.safe_reason}  # fmt: skip

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
        and type(hint.get("max_queue", 64)) is int and hint.get("max_queue", 64) >= 0
    )  # fmt: skip
    return hint if ok else None


def predict(hint: dict[str, Any], data_dir: Path) -> tuple[LoadSpec, str | None] | None:
    """The worker the hive will start for the hinted request, when that is certain
    (with why it runs in safe mode, if it does)."""
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
    safe, reason = SafeModeStore(data_dir).initial(hint.get("safe_mode", "auto"))
    device = hint.get("device", 0) if backend != "cpu" else 0
    return LoadSpec(path, n_ctx, backend, device, safe), reason


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


class Listen(NamedTuple):
    """Where the hive will be and its workers may listen: what an identity needs."""

    host: str
    hive_port: int
    worker_ports: tuple[int, int]
    key_file: str


def begin(
    hint_text: str, data_dir: Path, api_key: str, listen: Listen | None = None
) -> Speculation | None:
    """Start the speculative worker for the keeper's hint, when the hive's decision
    is predictable; with `listen`, tell it where to listen right away."""
    hint = parse_hint(hint_text)
    if hint is None:
        log.warning("ignoring --preload %r: not a usable request", hint_text[:200])
        return None
    predicted = predict(hint, data_dir)
    if predicted is None:
        return None
    spec, safe_reason = predicted
    wid = f"w-{uuid.uuid4().hex[:10]}"
    logs = data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"worker-{wid}.log"
    pre = _start_process(spec, wid, log_path, api_key)
    if pre is not None and listen is not None and listen.hive_port:
        port = pick_port(listen.host, *listen.worker_ports)
        host = f"[{listen.host}]" if ":" in listen.host else listen.host
        identity = {"host": listen.host, "port": port, "hive_url": f"http://{host}:{listen.hive_port}",
                    "key_file": listen.key_file, "max_queue": hint.get("max_queue", 64)}  # fmt: skip
        if port is None or not pre.send_identity(identity):
            pre.cancel("it could not be told where to listen")
            return None
    if pre is not None:
        pre.safe_reason = safe_reason
    return pre


def pick_port(host: str, lo: int, hi: int) -> int | None:
    """A port of [lo, hi] that binds right now on host; else one the OS picks; None if none."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    candidates = list(range(lo, hi + 1))
    random.shuffle(candidates)
    for port in [*candidates, 0]:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            # As the worker will bind: TIME_WAIT leftovers do not make a port busy.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    return None


def tell_keeper(fd_text: str | None, pre: Speculation | None) -> bool:
    """Write the worker's record (one JSON line) on the keeper's pipe, then close it;
    nothing when there is no worker with an identity (the keeper asks the hive).
    True when the keeper got the record: it will not wait for this hive."""
    if not fd_text:
        return False
    try:
        fd = int(fd_text)
    except ValueError:
        return False
    told = False
    with contextlib.suppress(OSError):
        if pre is not None and pre.identity is not None:
            os.write(fd, json.dumps(pre.record()).encode() + b"\n")
            told = True
    with contextlib.suppress(OSError):
        os.close(fd)
    return told


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
            # Its own process group, in the hive's session: Linux shares the CPU
            # between sessions (autogroups), and the hive's imports at low
            # priority only leave the cores to the load within one.
            proc = subprocess.Popen(
                cmd, stdin=read_fd, stdout=logf, stderr=subprocess.STDOUT, env=env,
                process_group=0, close_fds=True,
            )  # fmt: skip
    except OSError as exc:
        os.close(write_fd)
        log.warning("no speculative worker: %s", exc)
        return None
    finally:
        os.close(read_fd)
    log.info("speculative worker %s (pid %d) loading %s", wid, proc.pid, spec.model_path)
    return Speculation(spec, wid, log_path, proc, write_fd)
