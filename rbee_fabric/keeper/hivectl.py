"""Hive lifecycle seen from the keeper: preflight (start if needed), status, stop."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from rbee_fabric import __version__
from rbee_fabric.errors import (
    ConnectionTimeout,
    ForeignListener,
    HiveNotRunning,
    InvalidApiKey,
    RbeeError,
    VersionMismatch,
)
from rbee_fabric.keeper.client import HiveClient, Unreachable, WorkerClient
from rbee_fabric.keeper.startlock import START_WAIT_S, start_lock
from rbee_fabric.keeper.transport import Transport, wait_gone
from rbee_fabric.schemas import HiveHealth

ATTEMPTS = 3
BACKOFF_S = 0.2
EXIT_CHECK_S = 0.5  # how often a starting hive is checked for having exited


class Notes(Protocol):
    def info(self, msg: str) -> None: ...

    def attempt(self, n: int, total: int, address: str, error: str) -> None: ...


async def connect_hive(t: Transport) -> HiveClient:
    """A client for the node's hive, with its API key (not yet checked)."""
    url = await t.reach(await t.hive_url())
    return HiveClient(url, await t.api_key(), t.node.name, t.key_location())


@contextlib.asynccontextmanager
async def hive_client(t: Transport) -> AsyncIterator[HiveClient]:
    """A client for the node's hive, closed on the way out."""
    hive = await connect_hive(t)
    try:
        yield hive
    finally:
        await hive.aclose()


async def connect_worker(t: Transport, url: str) -> WorkerClient:
    """A client for a worker of the node, reached the way the transport reaches it."""
    return WorkerClient(await t.reach(url), await t.api_key(), t.node.name, t.key_location())


def check_version(health: HiveHealth, node: str) -> None:
    if health.version != __version__:
        raise VersionMismatch(
            f"keeper is {__version__}, rbee-hive on {node} is {health.version}",
            hint=f"upgrade the node: rbee nodes install {node} --upgrade",
            details={"keeper": __version__, "hive": health.version, "node": node},
        )


async def proven_health(t: Transport, hive: HiveClient, timeout: float) -> HiveHealth:
    """The hive's proven health; our own hive holding another key is INVALID_API_KEY."""
    try:
        return await hive.health(timeout=timeout)
    except ForeignListener as exc:
        if "owner" in exc.details or (pid := await t.hive_pid()) is None:
            raise
        raise InvalidApiKey(
            f"{t.node.name} refused the API key: its rbee-hive (pid {pid}) holds a "
            f"different key than {t.key_location()} (the key was not sent)",
            hint=f"the key file changed after the hive started; restart it: "
            f"rbee hive stop {t.node.name} && rbee hive start {t.node.name}",
            details={"node": t.node.name, "key_file": t.key_location(), "pid": pid},
        ) from None


async def ensure_hive(
    t: Transport,
    hive: HiveClient,
    notes: Notes,
    *,
    start: bool = True,
    attempts: int = ATTEMPTS,
    idle_timeout: float | None = None,
    preload: str | None = None,
) -> HiveHealth:
    """Step 2: the hive answers (started here if needed) and speaks our version.
    preload: the request about to be made (keeper/preloadhint.py), for a hive started here."""
    address = hive.base_url
    last: Unreachable | None = None
    for n in range(1, attempts + 1):
        try:
            health = await proven_health(t, hive, 3.0)
            break
        except Unreachable as exc:
            last = exc
        if start and t.can_start_hive:
            # One start per node at a time: other keepers wait here, then find it up.
            async with start_lock(t.node.name):
                try:
                    health = await hive.health(timeout=3.0)
                except Unreachable:
                    notes.info(f"rbee-hive is not running on {t.node.name}; starting it")
                    health = await _start_and_wait(t, hive, idle_timeout, preload)
            break
        notes.attempt(n, attempts, address, last.message)
        if n < attempts:
            await asyncio.sleep(BACKOFF_S * 2 ** (n - 1))
    else:
        assert last is not None
        if last.details.get("refused"):
            raise not_running(t, address, started_by_infer=start, attempts=attempts)
        raise ConnectionTimeout(
            f"rbee-hive at {address} did not answer after {attempts} attempts: {last.message}",
            hint=f"is rbee-hive running on {t.node.name}? start it with: "
            f"rbee hive start {t.node.name}",
            details={"address": address, "attempts": attempts, "node": t.node.name},
        )
    check_version(health, t.node.name)
    return health


def not_running(
    t: Transport, address: str, *, started_by_infer: bool = True, attempts: int = 1
) -> HiveNotRunning:
    """The plain answer when nothing listens on the hive's port (connection refused)."""
    name = t.node.name
    tried = f" after {attempts} attempts" if attempts > 1 else ""
    if not started_by_infer:
        hint = f"start it: rbee hive start {name}, or run without --no-start-hive"
    elif not t.can_start_hive:
        hint = f"start it on that machine: rbee hive start {name}"
    else:
        hint = f"start it: rbee hive start {name} (rbee infer starts it on its own)"
    return HiveNotRunning(
        f"rbee-hive is not running on {name}: nothing listens at {address}{tried}",
        hint=hint,
        details={"address": address, "node": name, "attempts": attempts},
    )


async def running_hive(t: Transport) -> HiveClient:
    """A client for the node's hive, checked once: HIVE_NOT_RUNNING when nothing listens.

    For commands that only read or change a running hive (`models rm`,
    `workers health`, `workers shutdown`): starting a hive for them would
    show nothing.
    """
    hive = await connect_hive(t)
    try:
        check_version(await proven_health(t, hive, 3.0), t.node.name)
    except Unreachable as exc:
        await hive.aclose()
        if exc.details.get("refused"):
            raise not_running(t, hive.base_url) from None
        raise ConnectionTimeout(
            f"rbee-hive on {t.node.name} does not answer: {exc.message}",
            hint=f"see its state: rbee hive status {t.node.name}; its log: rbee hive logs {t.node.name}",
            details=exc.details,
        ) from None
    except BaseException:
        await hive.aclose()
        raise
    return hive


async def _start_and_wait(
    t: Transport, hive: HiveClient, idle_timeout: float | None, preload: str | None = None
) -> HiveHealth:
    await t.start_hive(idle_timeout, preload)
    deadline = time.monotonic() + START_WAIT_S
    last = ""
    next_check = time.monotonic() + EXIT_CHECK_S
    while time.monotonic() < deadline:
        try:
            return await proven_health(t, hive, 2.0)
        except Unreachable as exc:
            last = exc.message
        # Whether it exited: on a remote node a Python run (~0.1 s of the node's CPU,
        # which the starting hive needs), so twice a second, not at every poll.
        if time.monotonic() >= next_check:
            next_check = time.monotonic() + EXIT_CHECK_S
            if await t.hive_start_failed():
                last = "rbee-hive exited right after it started"
                break
        await asyncio.sleep(0.05)
    log = "\n".join(await t.log_tail(15))
    raise ConnectionTimeout(
        f"rbee-hive on {t.node.name} did not become healthy: {last}",
        hint=f"see the hive log (rbee hive logs {t.node.name}); last lines:\n{log}",
        details={"address": hive.base_url, "node": t.node.name},
    )


@dataclass
class HiveStatus:
    running: bool
    pid: int | None
    address: str
    version: str | None = None
    workers: int | None = None
    error: str | None = None


async def status(t: Transport) -> HiveStatus:
    address = f"{t.node.name} {await t.hive_url()}"
    async with hive_client(t) as hive:
        pid = await t.hive_pid()
        try:
            health = await proven_health(t, hive, 3.0)
        except Unreachable as exc:
            why = "nothing listens there: not running" if exc.details.get("refused") else exc.message
            return HiveStatus(False, pid, address, error=why)
        workers: int | None = None
        error = None
        try:
            workers = len((await hive.workers()).workers)
        except RbeeError as exc:
            error = str(exc)
        return HiveStatus(True, pid, address, health.version, workers, error)


async def stop(t: Transport, known: list[tuple[int, str]] | None = None) -> tuple[bool, int]:
    """Stop the hive and every worker it spawned; (was running, workers stopped).

    `known` are (pid, worker id) pairs from the keeper's registry: workers
    whose hive is gone are found by them, each verified to still be that
    worker before it is signalled.
    """
    async with hive_client(t) as hive:
        worker_pids: list[int] = []
        with contextlib.suppress(RbeeError):  # hive down, not ours, or key refused
            worker_pids = [w.pid for w in (await hive.workers()).workers]
        pid = await t.hive_pid()
        if pid is None:
            orphans = await t.workers_alive(known or [])
            if orphans:
                await t.signal_pids(orphans, signal.SIGTERM)
                if left := await wait_gone(t, orphans, 10.0):
                    await t.signal_pids(left, signal.SIGKILL)
                    await wait_gone(t, left, 5.0)
            return False, len(orphans)
        await t.signal_pids([pid], signal.SIGTERM)  # the hive stops its workers
        if await wait_gone(t, [pid], 20.0):
            await t.signal_pids([pid], signal.SIGKILL)
            await wait_gone(t, [pid], 5.0)
        # Workers of a hive that could not stop them must not outlive it.
        if leftovers := await t.alive(worker_pids):
            await t.signal_pids(leftovers, signal.SIGKILL)
            await wait_gone(t, leftovers, 5.0)
        return True, len(worker_pids)
