"""The one place preflight meets the transports.

`open_node` gives the node's Connector (what the facts run through) and its
NodeHive (what hivectl's health and key checks take). Nothing else in
preflight knows which connector reaches a node. A node whose sshd has no
SFTP subsystem gets the connector's own clear error from `put`/`get`.
"""

from __future__ import annotations

from dataclasses import dataclass

from rbee_fabric.errors import NotInstalled
from rbee_fabric.keeper.inventory import Node
from rbee_fabric.keeper.transport import Transport, for_node
from rbee_fabric.keeper.transport.base import Connector


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
    return NodeAccess(node, t.connector, t)


__all__ = ["NodeAccess", "open_node"]
