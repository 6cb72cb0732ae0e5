"""The keeper-wide lock on starting a node's hive: a file lock, across processes.

One start per node at a time: other keepers wait on it, then find the hive up
(hivectl.ensure_hive, keeper/early_remote.py; keeper/fastpath_hive.py takes
the same file with the stdlib). Standard library and rbee's errors only.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import time
from collections.abc import AsyncIterator

from rbee_fabric import paths
from rbee_fabric.errors import ConnectionTimeout

START_WAIT_S = 20.0


def lock_file(node: str) -> str:
    return str(paths.ensure_dir(paths.data_dir() / "locks") / f"hive-start-{node}.lock")


async def acquire(node: str) -> int:
    """Take the lock on starting node's hive (waiting up to 2 x START_WAIT_S); the fd to
    close to release it. ConnectionTimeout when another keeper holds it that long."""
    path = lock_file(node)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + START_WAIT_S * 2
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise ConnectionTimeout(
                    f"another rbee is still starting rbee-hive on {node}",
                    hint=f"see rbee hive status {node}; the lock is {path}",
                    details={"node": node, "lock": path},
                ) from None
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def start_lock(node: str) -> AsyncIterator[None]:
    """Hold the lock on starting node's hive for the block."""
    fd = await acquire(node)
    try:
        yield
    finally:
        os.close(fd)  # releases the lock
