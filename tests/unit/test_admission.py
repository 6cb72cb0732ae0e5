"""The worker's admission: one slot, a bounded FIFO, leaving, Retry-After."""

import asyncio

import pytest

from rbee_fabric.errors import QueueFull
from rbee_fabric.worker.admission import Admission


def test_first_come_first_served_bounded_and_leaving() -> None:
    async def scenario() -> None:
        adm = Admission(max_queue=2)
        a, b, c = adm.admit("a"), adm.admit("b"), adm.admit("c")
        assert a.granted.is_set() and not b.granted.is_set()
        assert (adm.position(b), adm.position(c)) == (1, 2)
        with pytest.raises(QueueFull) as full:
            adm.admit("d")
        assert full.value.details["retry_after_s"] >= 1 and full.value.http_status == 429
        seen: list[int] = []

        async def follow() -> None:
            async for pos in adm.positions(c, heartbeat_s=5):
                seen.append(pos)

        task = asyncio.create_task(follow())
        await asyncio.sleep(0)
        assert adm.leave(b) and adm.find("b") is None  # b leaves: c moves up at once
        await asyncio.sleep(0.01)
        adm.release(b)  # not running: no effect
        assert adm.running is a
        adm.release(a, duration_s=1.0)
        await asyncio.wait_for(task, 1)
        assert seen == [2, 1] and adm.running is c and adm.queued == 0

    asyncio.run(scenario())
