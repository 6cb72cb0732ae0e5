"""What every keeper command opens: the inventory, a node's transport, the registry."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from rbee_fabric import paths
from rbee_fabric.keeper import handover, hivectl, inventory
from rbee_fabric.keeper.client import HiveClient
from rbee_fabric.keeper.registry import Registry
from rbee_fabric.keeper.transport import Transport, for_node


def open_registry() -> Registry:
    return Registry(paths.data_dir() / "registry.db")


@contextlib.asynccontextmanager
async def node_transport(name: str, inventory_file: str | None) -> AsyncIterator[Transport]:
    """Resolve a node name and open its transport (one SSH connection at most)."""
    inv = inventory.load(inventory_file)
    node = inv.resolve(name)
    t = handover.take_transport(node.name) or for_node(node)
    try:
        yield t
    finally:
        await t.close()


@contextlib.asynccontextmanager
async def node_hive(
    name: str, inventory_file: str | None, notes: hivectl.Notes | None = None, *,
    running: bool = False, **ensure: Any,
) -> AsyncIterator[tuple[Transport, HiveClient]]:
    """Open the node, a client for its hive, close both.

    With notes the hive is made sure to run (started if need be, as infer
    does; `ensure` goes to hivectl.ensure_hive: start, attempts,
    idle_timeout). With running=True it must already run: HIVE_NOT_RUNNING
    otherwise (for commands that only read or change a running hive).
    """
    async with node_transport(name, inventory_file) as t:
        hive = await (hivectl.running_hive(t) if running else hivectl.connect_hive(t))
        try:
            if notes is not None:
                await hivectl.ensure_hive(t, hive, notes, **ensure)
            yield t, hive
        finally:
            await hive.aclose()
