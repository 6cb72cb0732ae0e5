"""What every keeper command opens: the inventory, a node's transport, the registry."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from rbee_fabric import paths
from rbee_fabric.keeper import inventory
from rbee_fabric.keeper.registry import Registry
from rbee_fabric.keeper.transport import Transport, for_node


def open_registry() -> Registry:
    return Registry(paths.data_dir() / "registry.db")


@contextlib.asynccontextmanager
async def node_transport(name: str, inventory_file: str | None) -> AsyncIterator[Transport]:
    """Resolve a node name and open its transport (one SSH connection at most)."""
    inv = inventory.load(inventory_file)
    t = for_node(inv.resolve(name))
    try:
        yield t
    finally:
        await t.close()
