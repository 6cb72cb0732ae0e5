"""What the lean path hands to the full path in the same process: a node's open SSH
connection and the event loop it belongs to.

keeper/early_remote.py connects to a remote node before the full path loads;
when the hive already runs it does not close that connection but leaves it
here, and the full path runs its flow on that loop (cli/run.py run_flow) and
takes the connected transport (keeper/session.py node_transport) instead of
a second handshake. One command, one connection, as before.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rbee_fabric.keeper.transport import NodeHive

_loop: asyncio.AbstractEventLoop | None = None  # not taken yet
_hive: NodeHive | None = None
_hive_loop: asyncio.AbstractEventLoop | None = None  # the loop _hive's connection belongs to


def give(loop: asyncio.AbstractEventLoop, hive: NodeHive) -> None:
    global _loop, _hive, _hive_loop
    _loop, _hive, _hive_loop = loop, hive, loop


def take_loop() -> asyncio.AbstractEventLoop | None:
    """The loop to run the full path's flow on (once), or None for a new one."""
    global _loop
    loop, _loop = _loop, None
    return loop


def take_transport(node: str) -> NodeHive | None:
    """The open transport to node when it belongs to the running loop (once), else None."""
    global _hive
    hive = _hive
    if hive is None or hive.node.name != node or _hive_loop is not asyncio.get_running_loop():
        return None
    _hive = None
    return hive
