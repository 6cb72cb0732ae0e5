"""The SSH config as OpenSSH applies it: which files, and what they say about a host.

asyncssh types stay inside the transport package: callers get strings.
"""

from __future__ import annotations

import asyncio
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh

from rbee_fabric.keeper.inventory import Node

CONNECT_TIMEOUT_S = 10.0


def ssh_config_files() -> list[str]:
    """$RBEE_SSH_CONFIG (os.pathsep-separated), else ~/.ssh/config if it exists."""
    if env := os.environ.get("RBEE_SSH_CONFIG"):
        return [p for p in env.split(os.pathsep) if p]
    default = Path.home() / ".ssh" / "config"
    return [str(default)] if default.exists() else []


def options(node: Node) -> asyncssh.SSHClientConnectionOptions:
    """asyncssh's options for node: the inventory's user and port over the SSH config's."""
    kwargs: dict[str, Any] = {"config": ssh_config_files(), "connect_timeout": CONNECT_TIMEOUT_S}
    if node.user:
        kwargs["username"] = node.user
    if node.ssh_port:
        kwargs["port"] = node.ssh_port
    return asyncssh.SSHClientConnectionOptions(host=node.hostname, **kwargs)


@dataclass(frozen=True)
class SshTarget:
    """Where SSH really goes for a host name, once the SSH config is applied."""

    alias: str  # the name as typed
    hostname: str  # HostName, else the name
    port: int
    user: str | None
    jump: str | None  # ProxyJump, when the node is reached through another host
    proxy_command: bool

    @property
    def known(self) -> bool:
        """True when the SSH config says something about where this name goes."""
        return self.hostname != self.alias or self.jump is not None or self.proxy_command


def target(node: Node) -> SshTarget:
    """The SSH config applied to node (no network): HostName, port, user, ProxyJump."""
    opts = options(node)
    jump = getattr(opts, "tunnel", None)
    return SshTarget(
        alias=node.hostname,
        hostname=str(opts.host or node.hostname),
        port=int(node.ssh_port or opts.port or 22),
        user=str(opts.username) if opts.username else None,
        jump=jump if isinstance(jump, str) and jump else None,
        proxy_command=bool(getattr(opts, "proxy_command", None)),
    )


def lookup(name: str) -> SshTarget | None:
    """What the SSH config knows about a name as typed; None when it knows nothing."""
    if not ssh_config_files():
        return None
    t = target(Node(name=name, hostname=name, local=False))
    return t if t.known else None


def address(host: str) -> str:
    """host's first address, else host itself (blocking: a resolver call)."""
    try:
        return str(socket.getaddrinfo(host, None)[0][4][0])
    except OSError:
        return host


def describe(exc: BaseException) -> str:
    """One line for an asyncssh or socket failure."""
    if isinstance(exc, socket.gaierror):
        return f"name does not resolve ({exc.strerror})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timed out"
    text = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
    return str(text).splitlines()[0][:200]
