"""Start a remote node's hive early, before the full path loads its libraries.

As keeper/fastpath_hive.py does on this machine: a cold `rbee infer --node
mac` that the lean path hands to the full path used to load typer, httpx
and the schemas before it even connected; the node's hive (and the
speculative worker it starts for the hint) waited for that. Here the keeper
connects first and, when nothing listens on the hive's port (a tunnel
node), starts the hive with the request about to be made, under the
keeper's hive-start lock (keeper/startlock.py). A thread holds that lock
until the hive answers (or exits, or START_WAIT_S pass) while the full path
loads; the full path then finds the hive answering, or waits on the lock
and finds it then, with its own connection: it never starts a second hive,
and it explains any failure as before. When the hive already runs, the
connection is handed to the full path instead (keeper/handover.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Callable

from rbee_fabric.errors import RbeeError
from rbee_fabric.keeper import handover, inventory
from rbee_fabric.keeper.preloadhint import preload_hint
from rbee_fabric.keeper.startlock import START_WAIT_S, acquire
from rbee_fabric.keeper.transport import NodeHive, for_node

EXIT_CHECK_EVERY = 10  # probes (0.05 s apart) between two checks that the hive still runs


def start_early(name: str, explicit_inventory: str | None, ref: str, n_ctx: int, backend: str,
                device: int, note: Callable[[str], None]) -> None:  # fmt: skip
    """Start node `name`'s hive now if it is a remote tunnel node and nothing listens on
    its port; silent on any failure (the full path meets it again and explains it).
    note(msg): prints the line the full path prints when it starts a hive."""
    with contextlib.suppress(RbeeError, OSError):
        node = inventory.load(explicit_inventory).resolve(name)
        if node.local or node.network != "tunnel":
            return
        hint = preload_hint(ref, n_ctx, backend, device, node.safe_mode, node.max_queue)
        t = for_node(node)
        loop = asyncio.new_event_loop()
        try:
            lock = loop.run_until_complete(_start(t, hint, note))
        except BaseException:
            _finish(loop, t)
            raise
        if lock is None:
            # The hive runs: the full path goes on with this connection (keeper/handover.py).
            handover.give(loop, t)
            return
        # The same loop, from a thread: asyncssh's connection belongs to it.
        threading.Thread(target=_hold, args=(loop, t, lock), name="early-hive", daemon=True).start()


async def _start(t: NodeHive, hint: str, note: Callable[[str], None]) -> int | None:
    """Start the hive if none listens: the start lock's fd, held; None when none was started."""
    await t.connect()
    if await _answers(t):
        return None
    lock = await acquire(t.node.name)
    try:
        if await _answers(t):  # another keeper started it while this one waited
            os.close(lock)
            return None
        note(f"rbee-hive is not running on {t.node.name}; starting it")
        await t.start_hive(preload=hint)
    except BaseException:
        os.close(lock)
        raise
    return lock


def _hold(loop: asyncio.AbstractEventLoop, t: NodeHive, lock: int) -> None:
    try:
        with contextlib.suppress(Exception):  # the full path waits for the hive itself, and explains
            loop.run_until_complete(_until_up(t))
    finally:
        os.close(lock)  # the full path may go on
        _finish(loop, t)


async def _until_up(t: NodeHive) -> None:
    """Return when the hive answers, has exited, or START_WAIT_S have passed."""
    deadline = time.monotonic() + START_WAIT_S
    probes = 0
    while time.monotonic() < deadline and not await _answers(t):
        probes += 1
        if probes % EXIT_CHECK_EVERY == 0 and await t.hive_start_failed():
            return
        await asyncio.sleep(0.05)


def _finish(loop: asyncio.AbstractEventLoop, t: NodeHive) -> None:
    with contextlib.suppress(Exception):
        loop.run_until_complete(t.close())
    loop.close()


async def _answers(t: NodeHive) -> bool:
    """Whether something listens on the hive's port on the node (a channel opens)."""
    from rbee_fabric.keeper.transport.ssh import SshConnector

    connector = t.connector
    assert isinstance(connector, SshConnector)
    try:
        _reader, writer = await connector.open_channel("127.0.0.1", t.node.hive_port)
    except RbeeError:
        return False
    writer.close()
    return True
