"""The hive's side of the worker template (template.py): start it, fork workers from it.

A worker forked from the template is a grandchild of the hive; ForkedProcess
gives the supervisor the same handle an asyncio subprocess does (pid,
returncode, wait), fed by the template's exit reports.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from typing import IO, Any, Protocol

log = logging.getLogger("rbee.hive")

READY_WAIT_S = 60.0
ARGV_ROOM = 4096  # as template.ARGV_ROOM (not imported: the hive need not load it)


class WorkerProc(Protocol):
    """What the supervisor needs of a worker process (asyncio's Process has it)."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int: ...


class ForkedProcess:
    def __init__(self, pid: int) -> None:
        self._pid = pid
        self._code: int | None = None
        self._done = asyncio.Event()

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def returncode(self) -> int | None:
        return self._code

    async def wait(self) -> int:
        await self._done.wait()
        assert self._code is not None
        return self._code

    def exited(self, code: int) -> None:
        if self._code is None:
            self._code = code
            self._done.set()


def enabled() -> bool:
    """Fork workers from a template: Linux, unless RBEE_WORKER_TEMPLATE=0."""
    return sys.platform.startswith("linux") and os.environ.get("RBEE_WORKER_TEMPLATE", "1") != "0"


class Template:
    """The running template process; workers are forked from it on request."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = asyncio.Event()
        self._dead = False
        self._pending: collections.deque[asyncio.Future[dict[str, Any]]] = collections.deque()
        self._procs: dict[int, ForkedProcess] = {}
        self._early: dict[int, int] = {}  # exits reported before their spawn finished
        self._lock = asyncio.Lock()

    @classmethod
    def start(cls) -> Template | None:
        """Start the template now (it imports while the hive does); None when not used."""
        if not enabled():
            return None
        try:
            proc = subprocess.Popen(
                # The padding argument reserves room for a forked worker's command line.
                [sys.executable, "-m", "rbee_fabric.hive.template", "-" * ARGV_ROOM],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
        except OSError as exc:
            log.warning("no worker template (%s): workers start as new processes", exc)
            return None
        return cls(proc)

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start reading the template's reports into loop (once the hive's loop runs)."""
        self._loop = loop
        assert self.proc.stdout is not None
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True,
                         name="worker-template").start()  # fmt: skip

    def _read(self, stream: IO[bytes]) -> None:
        assert self._loop is not None
        for line in stream:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            self._loop.call_soon_threadsafe(self._on_message, msg)
        with contextlib.suppress(RuntimeError):  # the loop may be closed already
            self._loop.call_soon_threadsafe(self._on_eof)

    def _on_message(self, msg: dict[str, Any]) -> None:
        if msg.get("ready"):
            self._ready.set()
        elif "exited" in msg:
            pid, code = int(msg["exited"]), int(msg["code"])
            if (p := self._procs.pop(pid, None)) is not None:
                p.exited(code)
            else:
                self._early[pid] = code
        elif self._pending:  # {"pid": N} or {"error": "..."} answers the oldest request
            fut = self._pending.popleft()
            if not fut.done():
                fut.set_result(msg)
        elif "error" in msg:
            log.warning("worker template: %s; workers start as new processes", msg["error"])

    def _on_eof(self) -> None:
        """The template is gone: its workers go with it (die-with-parent); make sure."""
        if not self._dead and self.proc.poll() is None:
            log.warning("worker template ended early: workers start as new processes")
        self._dead = True
        self._ready.set()
        while self._pending:
            fut = self._pending.popleft()
            if not fut.done():
                fut.set_result({"error": "the worker template exited"})
        for pid, p in list(self._procs.items()):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            p.exited(-signal.SIGKILL)
        self._procs.clear()

    async def spawn(self, argv: list[str], env: dict[str, str], log_path: str, name: str) -> ForkedProcess | None:
        """Fork a worker with argv (the worker's arguments); None: start it the old way."""
        if not self._dead and not self._ready.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), READY_WAIT_S)
        if self._dead or not self._ready.is_set() or self.proc.stdin is None:
            return None
        title = [sys.executable, "-m", "rbee_fabric.worker", *argv]
        if sum(len(a.encode()) + 1 for a in title) > ARGV_ROOM:
            return None  # its command line would not fit: started the old way
        async with self._lock:
            fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
            self._pending.append(fut)
            line = json.dumps({"argv": argv, "env": env, "log": log_path, "name": name})
            try:
                self.proc.stdin.write(line.encode() + b"\n")
                self.proc.stdin.flush()
            except OSError:
                self._pending.remove(fut)
                return None
            msg = await fut
        if "pid" not in msg:
            if self._dead:
                return None
            raise OSError(str(msg.get("error", "fork failed")))
        p = ForkedProcess(int(msg["pid"]))
        if (code := self._early.pop(p.pid, None)) is not None:
            p.exited(code)
        else:
            self._procs[p.pid] = p
        return p

    async def close(self) -> None:
        """End the template (its stdin closes); its workers were stopped before."""
        self._dead = True
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            await asyncio.to_thread(self.proc.wait, 5.0)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            await asyncio.to_thread(self.proc.wait)
