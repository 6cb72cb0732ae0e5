"""What every keeper command opens: the inventory, a node's transport, the registry."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from rbee_fabric import paths
from rbee_fabric.keeper import hivectl, inventory
from rbee_fabric.keeper.client import HiveClient
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


@contextlib.asynccontextmanager
async def node_hive(
    name: str, inventory_file: str | None, notes: hivectl.Notes | None = None, **ensure: Any
) -> AsyncIterator[tuple[Transport, HiveClient]]:
    """Open the node, a client for its hive (made sure to run when notes are given), close both.

    `ensure` goes to hivectl.ensure_hive (start, attempts, idle_timeout).
    """
    async with node_transport(name, inventory_file) as t, hivectl.hive_client(t) as hive:
        if notes is not None:
            await hivectl.ensure_hive(t, hive, notes, **ensure)
        yield t, hive
