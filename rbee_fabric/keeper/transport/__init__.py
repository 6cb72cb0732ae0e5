"""How the keeper reaches a node. The localhost shortcut is the local transport.

A transport starts and stops the node's hive, reads its API key and log, and
maps the addresses the daemons report to addresses the keeper can reach. The
flows only see this interface, never an SSH object.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

from rbee_fabric import paths, pidfile
from rbee_fabric.keeper.inventory import Node
from rbee_fabric.keeper.transport.base import Connector, RemoteResult


class Transport(Protocol):
    node: Node

    @property
    def can_start_hive(self) -> bool: ...

    async def hive_url(self) -> str: ...

    async def reach(self, url: str) -> str: ...

    async def api_key(self) -> str | None: ...

    def key_location(self) -> str: ...

    async def start_hive(self, idle_timeout: float | None = None) -> None: ...

    async def hive_start_failed(self) -> bool: ...

    async def hive_pid(self) -> int | None: ...

    async def signal_pids(self, pids: list[int], sig: int) -> None: ...

    async def alive(self, pids: list[int]) -> list[int]: ...

    async def workers_alive(self, workers: list[tuple[int, str]]) -> list[int]: ...

    async def log_tail(self, lines: int = 20) -> list[str]: ...

    def log_follow(self) -> AsyncIterator[str]: ...

    async def run(self, argv: list[str], *, check: bool = False, timeout: float = 60.0) -> RemoteResult: ...

    async def python(self) -> str: ...

    async def remote_path(self, path: str) -> str: ...

    async def close(self) -> None: ...


def _is_ours(pid: int, marker: str) -> bool:
    """True when pid runs one of our programs (guards against reused pids)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    return marker in cmdline


class LocalTransport:
    """This machine: the hive is a detached local process, no SSH at all."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self._started: subprocess.Popen[bytes] | None = None

    @property
    def can_start_hive(self) -> bool:
        return True

    async def hive_start_failed(self) -> bool:
        """True when the hive this transport started has already exited."""
        return self._started is not None and self._started.poll() is not None

    async def hive_url(self) -> str:
        return f"http://127.0.0.1:{self.node.hive_port}"

    async def reach(self, url: str) -> str:
        return url

    async def api_key(self) -> str | None:
        return paths.ensure_api_key()

    def key_location(self) -> str:
        return str(paths.api_key_file())

    async def start_hive(self, idle_timeout: float | None = None) -> None:
        """Start rbee-hive detached (own session), logging to the data directory."""
        paths.ensure_dir(paths.logs_dir())
        paths.ensure_api_key()
        cmd = [sys.executable, "-m", "rbee_fabric.hive", "--port", str(self.node.hive_port)]
        if idle_timeout is not None:
            cmd += ["--idle-timeout", str(idle_timeout)]
        fd = os.open(paths.hive_log_file(), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with open(fd, "ab") as log:
            self._started = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    async def hive_pid(self) -> int | None:
        return pidfile.read_hive(self.node.hive_port)

    async def workers_alive(self, workers: list[tuple[int, str]]) -> list[int]:
        """Pids of (pid, worker id) pairs that still run that very worker."""
        return [pid for pid, wid in workers if pidfile.is_worker(pid, wid)]

    async def signal_pids(self, pids: list[int], sig: int) -> None:
        for pid in pids:
            if _is_ours(pid, "rbee_fabric"):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)

    async def alive(self, pids: list[int]) -> list[int]:
        return [pid for pid in pids if _is_ours(pid, "rbee_fabric")]

    async def log_tail(self, lines: int = 20) -> list[str]:
        from rbee_fabric.hive.supervisor import tail

        return tail(paths.hive_log_file(), lines)

    async def run(self, argv: list[str], *, check: bool = False, timeout: float = 60.0) -> RemoteResult:
        """Run a local command (the local twin of the SSH transport's run)."""
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
            )
        except OSError as exc:
            return RemoteResult(" ".join(argv), 127, "", str(exc))
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return RemoteResult(" ".join(argv), 124, "", "timed out")
        return RemoteResult(" ".join(argv), proc.returncode or 0, out.decode(), err.decode())

    async def python(self) -> str:
        return sys.executable

    async def remote_path(self, path: str) -> str:
        return str(paths.data_dir()) if path == "~/.local/share/rbee" else os.path.expanduser(path)

    async def log_follow(self) -> AsyncIterator[str]:
        """New lines of the hive log as they are written (until interrupted)."""
        path = paths.hive_log_file()
        with open(path, encoding="utf-8", errors="replace") as fh:
            fh.seek(0, os.SEEK_END)
            while True:
                line = fh.readline()
                if line:
                    yield line.rstrip("\n")
                else:
                    await asyncio.sleep(0.25)

    async def close(self) -> None:
        return None


async def wait_gone(t: Transport, pids: list[int], timeout: float) -> list[int]:
    """Poll until none of pids is alive; returns those still alive at the deadline."""
    deadline = time.monotonic() + timeout
    alive = await t.alive(pids)
    while alive and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        alive = await t.alive(alive)
    return alive


def for_node(node: Node) -> Transport:
    """The transport that reaches node."""
    if node.local:
        return LocalTransport(node)
    from rbee_fabric.keeper.ssh import SshTransport

    return SshTransport(node)


__all__ = ["Connector", "LocalTransport", "RemoteResult", "Transport", "for_node", "wait_gone"]
