"""The hive's side of the worker template (template.py): fork it, fork workers from it.

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
import time
from typing import IO, Any, Protocol

log = logging.getLogger("rbee.hive")

READY_WAIT_S = 60.0


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


class PopenProcess(ForkedProcess):
    """A subprocess.Popen child (a speculative worker, hive/speculate.py) as a WorkerProc:
    a thread of its own waits for it (not the loop's executor, which it would hold)."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        super().__init__(popen.pid)
        self._popen = popen
        self._loop = asyncio.get_running_loop()
        threading.Thread(target=self._wait, daemon=True, name=f"wait-{popen.pid}").start()

    def _wait(self) -> None:
        code = self._popen.wait()
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self._loop.call_soon_threadsafe(self.exited, code)


def enabled() -> bool:
    """Fork workers from a template: Linux, unless RBEE_WORKER_TEMPLATE=0."""
    return sys.platform.startswith("linux") and os.environ.get("RBEE_WORKER_TEMPLATE", "1") != "0"


class Template:
    """The running template process; workers are forked from it on request."""

    def __init__(self, pid: int, req_fd: int, rep_fd: int) -> None:
        self.pid = pid
        self._req = req_fd
        self._rep = rep_fd
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = asyncio.Event()
        self._dead = False
        self._closing = False
        self._pending: collections.deque[asyncio.Future[dict[str, Any]]] = collections.deque()
        self._procs: dict[int, ForkedProcess] = {}
        self._early: dict[int, int] = {}  # exits reported before their spawn finished
        self._lock = asyncio.Lock()
        self._asked = False  # a lazy template was asked to import
        self._background = False  # ... at the lowest priority

    @classmethod
    def start(cls, close: tuple[int, ...] = (), lazy: bool = False) -> Template | None:
        """Fork the template now; call after the hive's imports, before any thread starts.
        close: file descriptors of the hive the template must not hold; lazy: it imports
        only when asked (warm) or at its first fork."""
        if not enabled():
            return None
        if threading.active_count() > 1:
            log.warning("no worker template (threads are running): workers start as new processes")
            return None
        from rbee_fabric.hive.template import fork_template

        try:
            return cls(*fork_template(close, lazy))
        except OSError as exc:
            log.warning("no worker template (%s): workers start as new processes", exc)
            return None

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start reading the template's reports into loop (once the hive's loop runs)."""
        self._loop = loop
        stream = os.fdopen(self._rep, "rb")
        threading.Thread(target=self._read, args=(stream,), daemon=True,
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
        if not self._closing:
            log.warning("worker template ended early: workers start as new processes")
        self._dead = True
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, os.WNOHANG)  # reap it
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

    def warm(self, now: bool = False) -> None:
        """Have a lazy template import: in the background (at the lowest priority), or
        now (at normal priority, for a fork that waits)."""
        if self._asked or self._dead:
            return
        self._asked = True
        self._background = not now
        with contextlib.suppress(OSError):
            os.write(self._req, b'{"import": true, "now": true}\n' if now else b'{"import": true}\n')

    async def spawn(self, argv: list[str], env: dict[str, str], log_path: str) -> ForkedProcess | None:
        """Fork a worker with argv (the worker's arguments); None: start it the old way."""
        if not self._ready.is_set() and self._asked and self._background:
            return None  # the imports run at the lowest priority: do not wait for them
        self.warm(now=True)
        if not self._dead and not self._ready.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), READY_WAIT_S)
        if self._dead or not self._ready.is_set():
            return None
        async with self._lock:
            fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
            self._pending.append(fut)
            line = json.dumps({"argv": argv, "env": env, "log": log_path})
            try:
                os.write(self._req, line.encode() + b"\n")
            except OSError:
                self._pending.remove(fut)
                return None
            msg = await fut
        if "pid" not in msg:
            if self._dead or msg.get("fallback"):
                return None  # started the old way
            raise OSError(str(msg.get("error", "fork failed")))
        p = ForkedProcess(int(msg["pid"]))
        if (code := self._early.pop(p.pid, None)) is not None:
            p.exited(code)
        else:
            self._procs[p.pid] = p
        return p

    async def close(self) -> None:
        """End the template (its request pipe closes); its workers were stopped before."""
        self._closing = self._dead = True
        with contextlib.suppress(OSError):
            os.close(self._req)
        await asyncio.to_thread(self._reap, 5.0)

    def _reap(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                pid, _ = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                return  # reaped already
            if pid:
                return
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(self.pid, 0)
                return
            time.sleep(0.02)
