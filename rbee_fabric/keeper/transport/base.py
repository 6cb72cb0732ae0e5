"""The connector interface: the few things the keeper does on a node.

In the manner of pyinfra's connectors. Local and SSH implement all of it
with the same defaults and the same semantics; everything else (the hive's
lifecycle, bootstrap, push, preflight) is written once on top of it and
never sees an SSH object.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from rbee_fabric.errors import RemoteCommandFailed
from rbee_fabric.keeper.inventory import Node

RUN_TIMEOUT_S = 120.0
"""The one default timeout of `Connector.run`, local and SSH alike."""


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
      check=True (the default) a non-zero status raises RemoteCommandFailed
      (last lines of stderr in the message); a timeout raises
      RemoteCommandFailed; a lost connection raises NodeUnreachable.
      Files the command creates are private (umask 077).
    - `lines` runs a command and yields its output lines as they come.
    - `put`/`get` copy one file; remote paths may start with `~/`. A node
      that cannot copy files (no SFTP subsystem) raises RemoteCommandFailed
      saying so, with a hint that names the fix.
    - `spawn` starts a detached process (own session, stdin closed, stdout
      and stderr appended to `log`), returns its pid without waiting.
    - `forward` maps an address the node's daemons report (http://host:port)
      to one the keeper can reach (a local port forward when tunnelled);
      `bind_host` is where those daemons listen so that `forward` reaches them.
    - `connect` opens the connection now (errors mapped), `close` closes it.
    """

    node: Node

    @property
    def bind_host(self) -> str: ...

    async def connect(self) -> None: ...

    async def run(
        self, argv: list[str], *, check: bool = True, timeout: float = RUN_TIMEOUT_S, stdin: str | None = None
    ) -> RemoteResult: ...

    def lines(self, argv: list[str]) -> AsyncIterator[str]: ...

    async def put(self, local: Path, remote: str, progress: Progress | None = None) -> None: ...

    async def get(self, remote: str, local: Path) -> None: ...

    async def spawn(self, argv: list[str], *, log: str, env: dict[str, str] | None = None) -> int: ...

    async def forward(self, url: str) -> str: ...

    async def expand(self, path: str) -> str: ...

    async def close(self) -> None: ...


def check_result(result: RemoteResult, node: str, check: bool) -> RemoteResult:
    """RemoteCommandFailed for a failed command when check is set (shared by every connector)."""
    if check and result.exit_status != 0:
        last = (result.stderr.strip() or result.stdout.strip()).splitlines()[-5:]
        raise RemoteCommandFailed(
            f"{result.command!r} failed on {node} with exit status {result.exit_status}"
            + (": " + " / ".join(last) if last else ""),
            details={"command": result.command, "exit_status": result.exit_status,
                     "stdout": result.stdout[-4000:], "stderr": result.stderr[-4000:]},
        )  # fmt: skip
    return result


def timed_out(command: str, node: str, timeout: float) -> RemoteCommandFailed:
    return RemoteCommandFailed(
        f"{command!r} on {node} did not finish within {timeout:.0f} s",
        details={"command": command, "timeout_s": timeout},
    )


__all__ = ["RUN_TIMEOUT_S", "Connector", "Progress", "RemoteResult", "check_result", "timed_out"]
