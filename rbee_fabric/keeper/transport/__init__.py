"""How the keeper reaches a node.

    base.py       the Connector interface (run, lines, put, get, spawn, forward,
                  expand, connect, close) and RemoteResult
    local.py      LocalConnector: this machine, no SSH
    ssh.py        SshConnector: asyncssh (the only module that connects)
    sshconfig.py  what ~/.ssh/config says about a host (HostName, ProxyJump, ...)
    hostkeys.py   known_hosts, `rbee nodes trust`; keys leave it as strings
    hive.py       NodeHive: a node's rbee-hive lifecycle, once, on any connector

asyncssh is imported only when a remote node is opened.
"""

from __future__ import annotations

import warnings

# asyncssh touches cryptography's deprecated DSA names on import: a library's
# housekeeping, not something the user can act on, so it never reaches the
# terminal. Here, before any module of this package imports asyncssh.
warnings.filterwarnings("ignore", module=r"asyncssh(\.|$)")

from rbee_fabric.keeper.inventory import Node  # noqa: E402
from rbee_fabric.keeper.transport.base import Connector, RemoteResult  # noqa: E402
from rbee_fabric.keeper.transport.hive import NodeHive, wait_gone  # noqa: E402

Transport = NodeHive
"""What the flows hold for a node (the hive on top of its connector)."""


def connector_for(node: Node) -> Connector:
    """The connector that reaches node: local for this machine, else SSH."""
    if node.local:
        from rbee_fabric.keeper.transport.local import LocalConnector

        return LocalConnector(node)
    from rbee_fabric.keeper.transport.ssh import SshConnector

    return SshConnector(node)


def for_node(node: Node) -> NodeHive:
    """The node's hive, reached through its connector (nothing is opened yet)."""
    return NodeHive(connector_for(node))


__all__ = ["Connector", "NodeHive", "RemoteResult", "Transport", "connector_for", "for_node", "wait_gone"]
