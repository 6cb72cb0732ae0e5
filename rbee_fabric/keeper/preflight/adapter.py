"""The one place preflight meets today's transports (rewired when they implement Connector).

`open_node` gives a Connector (what the facts run through) and the node's
Transport (what hivectl's health and key checks take). Nothing else in
preflight knows which transport reaches a node. Until the transports
implement the Connector protocol themselves, `_Bridge` fills the gaps: a
local `run` with stdin, local copies, and a clear error for a node that
cannot copy files because its sshd has no SFTP subsystem.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from rbee_fabric.errors import NotInstalled, RemoteCommandFailed
from rbee_fabric.keeper.inventory import Node
from rbee_fabric.keeper.transport import LocalTransport, Transport, for_node
from rbee_fabric.keeper.transport.base import Connector, Progress, RemoteResult

NO_SFTP_MARKERS = ("session request failed", "subsystem")


def no_sftp_error(node: str, reason: str) -> RemoteCommandFailed:
    """The error for a node whose sshd cannot copy files (no SFTP subsystem)."""
    return RemoteCommandFailed(
        f"{node} cannot copy files over SSH: its sshd offers no SFTP subsystem ({reason})",
        hint="enable SFTP on the node: add `Subsystem sftp internal-sftp` (or the path of "
        "sftp-server) to /etc/ssh/sshd_config, then reload sshd",
        details={"node": node, "sftp": False},
    )


class _Bridge:
    """Today's Local/SshTransport as a Connector (what preflight needs of it)."""

    def __init__(self, t: Transport) -> None:
        self.node = t.node
        self._t = t

    async def run(
        self, argv: list[str], *, check: bool = True, timeout: float = 120.0, stdin: str | None = None
    ) -> RemoteResult:
        if not isinstance(self._t, LocalTransport):
            from rbee_fabric.keeper.ssh import SshTransport

            assert isinstance(self._t, SshTransport)
            return await self._t.run(argv, check=check, timeout=timeout, stdin=stdin)
        return await _run_local(argv, check, timeout, stdin)

    async def put(self, local: Path, remote: str, progress: Progress | None = None) -> None:
        if isinstance(self._t, LocalTransport):
            await asyncio.to_thread(shutil.copyfile, local, await self.expand(remote))
            return
        from rbee_fabric.keeper.ssh import SshTransport

        assert isinstance(self._t, SshTransport)
        try:
            await self._t.put(local, remote, progress)
        except RemoteCommandFailed as exc:
            if any(m in exc.message.lower() for m in NO_SFTP_MARKERS):
                raise no_sftp_error(self.node.name, exc.message.rsplit(": ", 1)[-1]) from None
            raise

    async def get(self, remote: str, local: Path) -> None:
        if not isinstance(self._t, LocalTransport):
            raise RemoteCommandFailed("copying files from a node is not available yet")
        await asyncio.to_thread(shutil.copyfile, await self.expand(remote), local)

    async def spawn(self, argv: list[str], *, log: str, env: dict[str, str] | None = None) -> None:
        raise RemoteCommandFailed("preflight starts nothing on a node")

    async def forward(self, url: str) -> str:
        return await self._t.reach(url)

    async def expand(self, path: str) -> str:
        if isinstance(self._t, LocalTransport) and not path.startswith(("/", "~")):
            return os.path.expanduser(f"~/{path}")  # relative to home, as over SFTP
        return await self._t.remote_path(path)

    async def close(self) -> None:
        await self._t.close()


async def _run_local(argv: list[str], check: bool, timeout: float, stdin: str | None) -> RemoteResult:
    command = subprocess.list2cmdline(argv)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
    except OSError as exc:
        result = RemoteResult(command, 127, "", str(exc))
    else:
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin.encode() if stdin else None), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise RemoteCommandFailed(f"{command!r} did not finish within {timeout:.0f} s") from None
        result = RemoteResult(command, proc.returncode or 0, out.decode(errors="replace"),
                              err.decode(errors="replace"))  # fmt: skip
    if check and result.exit_status != 0:
        raise RemoteCommandFailed(f"{command!r} failed with exit status {result.exit_status}")
    return result


@dataclass
class NodeAccess:
    """How preflight reaches one node: the Connector for facts, the Transport for the hive."""

    node: Node
    connector: Connector
    transport: Transport

    async def system_python(self) -> str:
        """The interpreter `rbee nodes install` builds the venv with."""
        return await self.transport.python() if self.node.local else self.node.python

    async def venv_python(self) -> str | None:
        """The node's rbee interpreter; None when rbee-fabric is not installed."""
        try:
            return await self.transport.python()
        except NotInstalled:
            return None

    async def close(self) -> None:
        await self.connector.close()


def open_node(node: Node) -> NodeAccess:
    """The one adapter from today's transports to what preflight needs."""
    t = for_node(node)
    return NodeAccess(node, _Bridge(t), t)


__all__ = ["NodeAccess", "no_sftp_error", "open_node"]
