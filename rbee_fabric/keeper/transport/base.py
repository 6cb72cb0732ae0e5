"""The connector interface: the few things the keeper does on a node.

In the manner of pyinfra's connectors. Local and SSH implement all of it
with the same defaults and the same semantics; everything else (the hive's
lifecycle, bootstrap, push, preflight) is written once on top of it and
never sees an SSH object.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from rbee_fabric.keeper.inventory import Node


@dataclass
class RemoteResult:
    """The outcome of a command on a node (or here): command, status, output."""

    command: str
    exit_status: int
    stdout: str
    stderr: str


Progress = Callable[[int, int], None]
"""Called with (bytes done, bytes total) while a file is copied."""


class Connector(Protocol):
    """Reach one node: run, copy, start detached, forward, close.

    Semantics shared by every implementation:
    - `run` takes argv (never a shell line), returns a RemoteResult; with
      check=True a non-zero status raises RemoteCommandFailed (last lines of
      stderr in the message); a timeout raises RemoteCommandFailed; a lost
      connection raises NodeUnreachable. Same defaults everywhere.
    - `put`/`get` copy one file; remote paths may start with `~/`. A node
      that cannot copy files (no SFTP subsystem) raises RemoteCommandFailed
      saying so, with a hint that names the fix.
    - `spawn` starts a detached process (own session, stdin closed, stdout
      and stderr appended to `log`), returns without waiting.
    - `forward` maps an address the node's daemons report (http://host:port)
      to one the keeper can reach (a local port forward when tunnelled).
    """

    node: Node

    async def run(
        self, argv: list[str], *, check: bool = True, timeout: float = 120.0, stdin: str | None = None
    ) -> RemoteResult: ...

    async def put(self, local: Path, remote: str, progress: Progress | None = None) -> None: ...

    async def get(self, remote: str, local: Path) -> None: ...

    async def spawn(self, argv: list[str], *, log: str, env: dict[str, str] | None = None) -> None: ...

    async def forward(self, url: str) -> str: ...

    async def expand(self, path: str) -> str: ...

    async def close(self) -> None: ...


__all__ = ["Connector", "Progress", "RemoteResult"]
