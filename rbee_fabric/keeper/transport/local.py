"""The local connector: this machine, no SSH. The twin of transport/ssh.py.

Same defaults and semantics as the SSH connector (see base.Connector):
commands run from argv under umask 077, `check` raises on a non-zero
status, a timeout raises, spawned processes are detached (own session).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

from rbee_fabric import paths
from rbee_fabric.errors import RemoteCommandFailed
from rbee_fabric.keeper.inventory import Node
from rbee_fabric.keeper.transport.base import (
    RUN_TIMEOUT_S,
    Progress,
    RemoteResult,
    check_result,
    timed_out,
)

DEFAULT_INSTALL_DIR = "~/.local/share/rbee"
UMASK = 0o077


class LocalConnector:
    """This machine: commands are child processes, files are copied in place."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self._children: list[subprocess.Popen[bytes]] = []

    @property
    def bind_host(self) -> str:
        return "127.0.0.1"

    async def connect(self) -> None:
        return None

    def _reap(self) -> None:
        """Collect spawned children that exited (no zombies in a long-lived keeper)."""
        self._children = [p for p in self._children if p.poll() is None]

    async def run(
        self, argv: list[str], *, check: bool = True, timeout: float = RUN_TIMEOUT_S, stdin: str | None = None
    ) -> RemoteResult:
        self._reap()
        command = shlex.join(argv)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL, umask=UMASK,
            )  # fmt: skip
        except OSError as exc:  # as a shell says it: status 127
            return check_result(RemoteResult(command, 127, "", f"{argv[0]}: {exc.strerror}"), self.node.name, check)
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin.encode() if stdin else None), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise timed_out(command, self.node.name, timeout) from None
        result = RemoteResult(command, proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace"))
        return check_result(result, self.node.name, check)

    async def lines(self, argv: list[str]) -> AsyncIterator[str]:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL
        )
        assert proc.stdout is not None
        try:
            async for raw in proc.stdout:
                yield raw.decode(errors="replace").rstrip("\n")
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            await proc.wait()

    async def put(self, local: Path, remote: str, progress: Progress | None = None) -> None:
        await asyncio.to_thread(_copy, local, Path(await self.expand(remote)), progress)

    async def get(self, remote: str, local: Path) -> None:
        await asyncio.to_thread(_copy, Path(await self.expand(remote)), local, None)

    async def spawn(self, argv: list[str], *, log: str, env: dict[str, str] | None = None) -> int:
        path = Path(await self.expand(log))
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with open(fd, "ab") as out:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, close_fds=True, umask=UMASK,
                env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
        self._children.append(proc)
        return proc.pid

    async def forward(self, url: str) -> str:
        return url

    async def expand(self, path: str) -> str:
        """`~/` as this user's home; rbee's default install dir is the keeper's data dir."""
        if path == DEFAULT_INSTALL_DIR or path.startswith(DEFAULT_INSTALL_DIR + "/"):
            return str(paths.data_dir()) + path[len(DEFAULT_INSTALL_DIR) :]
        return os.path.expanduser(path)

    async def close(self) -> None:
        self._reap()


def _copy(src: Path, dst: Path, progress: Progress | None) -> None:
    try:
        total = src.stat().st_size
        with open(src, "rb") as fin, open(dst, "wb") as fout:
            done = 0
            while chunk := fin.read(1 << 20):
                fout.write(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
        shutil.copymode(src, dst)
    except OSError as exc:
        raise RemoteCommandFailed(
            f"copying {src} to {dst} failed: {exc.strerror or exc}",
            hint="check free disk space and permissions",
            details={"file": str(src), "target": str(dst)},
        ) from None
