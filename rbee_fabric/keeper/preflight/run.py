"""`rbee nodes check`'s fan-out: every node at once, each alone.

A task group runs one task per node; each task has its own timeout and a
catch-all that turns any exception into that node's failed report, so one
node's failure (even a bug) never loses another node's report.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from rbee_fabric import modelref
from rbee_fabric.errors import RbeeError
from rbee_fabric.keeper.inventory import Node
from rbee_fabric.keeper.preflight.adapter import open_node
from rbee_fabric.keeper.preflight.node import check_node
from rbee_fabric.keeper.preflight.report import NodeReport

log = logging.getLogger("rbee.preflight")

NODE_TIMEOUT_S = 20.0
CLOSE_TIMEOUT_S = 5.0
MAX_CONCURRENT = 32


async def check_nodes(
    nodes: list[Node], model: str | None = None, timeout: float = NODE_TIMEOUT_S
) -> list[NodeReport]:
    """Check every node at once; one report per node, in the order given."""
    if model is not None:
        modelref.parse(model)  # a malformed reference is a usage error, before any I/O
    sem = asyncio.Semaphore(MAX_CONCURRENT)
    reports = [NodeReport(n.name, n.reach) for n in nodes]
    async with asyncio.TaskGroup() as tg:
        for node, report in zip(nodes, reports, strict=True):
            tg.create_task(check_one(node, report, model, timeout, sem))
    return reports


async def check_one(
    node: Node, r: NodeReport, model: str | None, timeout: float, sem: asyncio.Semaphore
) -> None:
    """One node's checks; never raises (but for cancellation): failures land in r."""
    async with sem:
        try:
            async with asyncio.timeout(timeout):
                access = open_node(node)
                try:
                    await check_node(access, r, model)
                finally:
                    with contextlib.suppress(Exception):
                        async with asyncio.timeout(CLOSE_TIMEOUT_S):
                            await access.close()
        except Exception as exc:  # the per-node catch-all
            failed(r, exc, timeout)


def failed(r: NodeReport, exc: BaseException, timeout: float) -> None:
    """Add the check that says why r's node could not be checked to the end."""
    exc = leaf(exc)
    if isinstance(exc, TimeoutError):
        r.add("time", "fail", f"checks did not finish within {timeout:g} s",
              "the node is slow or a command hangs; try `rbee nodes check` for it alone")  # fmt: skip
    elif isinstance(exc, RbeeError):
        r.add("error", "fail", exc.message, exc.hint)
    else:
        log.debug("nodes check failed on %s", r.node, exc_info=exc)
        r.add("error", "fail", f"the check itself failed: {type(exc).__name__}: {exc}",
              "this is a bug in rbee; run `rbee --debug nodes check` for that node and report it")  # fmt: skip


def leaf(exc: BaseException) -> BaseException:
    """The first exception inside (nested) exception groups, else exc itself."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


__all__ = ["NODE_TIMEOUT_S", "check_nodes", "check_one", "failed", "leaf"]
