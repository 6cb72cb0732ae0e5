"""Admission on a worker: one generation at a time, the others wait in a bounded FIFO.

The worker has one slot. A request that finds it taken joins the queue (first
come, first served) and learns its position; past `max_queue` waiting
requests it is refused with QUEUE_FULL and a Retry-After estimate. A waiting
request can leave (client gone, DELETE) and then never runs. Everything here
runs on the event loop and never awaits between a check and its update, so
no lock is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from rbee_fabric.errors import QueueFull

DEFAULT_MAX_QUEUE = 64
"""Waiting requests a worker holds (the running one not counted)."""


@dataclass(eq=False)
class Ticket:
    """One request's place: running, waiting, or gone."""

    request_id: str
    granted: asyncio.Event = field(default_factory=asyncio.Event)
    left: bool = False


class Admission:
    """The slot and the queue in front of it."""

    def __init__(self, max_queue: int = DEFAULT_MAX_QUEUE) -> None:
        self.max_queue = max(0, max_queue)
        self.running: Ticket | None = None
        self.waiting: list[Ticket] = []
        self._moved = asyncio.Event()  # set (and replaced) whenever the queue moves
        self._mean_s = 2.0  # running mean of a generation's duration, for Retry-After

    @property
    def queued(self) -> int:
        return len(self.waiting)

    def admit(self, request_id: str) -> Ticket:
        """Take the slot, or a place in the queue; QUEUE_FULL when there is none."""
        ticket = Ticket(request_id)
        if self.running is None and not self.waiting:
            self.running = ticket
            ticket.granted.set()
            return ticket
        if len(self.waiting) >= self.max_queue:
            retry = self.retry_after_s()
            raise QueueFull(
                f"the worker is busy and {len(self.waiting)} request(s) already wait "
                f"(the node's limit is {self.max_queue})",
                hint=f"retry in {retry} s, or raise max_queue for this node in the inventory",
                details={"retry_after_s": retry, "queued": len(self.waiting),
                         "max_queue": self.max_queue},
            )  # fmt: skip
        self.waiting.append(ticket)
        return ticket

    def position(self, ticket: Ticket) -> int:
        """1 = next to run; 0 = running (or gone)."""
        try:
            return self.waiting.index(ticket) + 1
        except ValueError:
            return 0

    async def positions(self, ticket: Ticket, heartbeat_s: float) -> AsyncIterator[int]:
        """The ticket's position, at once, on every move and every heartbeat_s, until granted."""
        while not ticket.granted.is_set():
            pos = self.position(ticket)
            if pos == 0:
                return  # left the queue
            yield pos
            moved = self._moved
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(moved.wait(), heartbeat_s)

    def leave(self, ticket: Ticket) -> bool:
        """Take a waiting ticket out of the queue; True when it was waiting."""
        if ticket in self.waiting:
            self.waiting.remove(ticket)
            ticket.left = True
            self._bump()
            return True
        return False

    def find(self, request_id: str) -> Ticket | None:
        """A waiting request by id."""
        return next((t for t in self.waiting if t.request_id == request_id), None)

    def release(self, ticket: Ticket, duration_s: float | None = None) -> None:
        """The running generation is over: hand the slot to the head of the queue."""
        if self.running is not ticket:
            return
        if duration_s is not None:
            self._mean_s = 0.8 * self._mean_s + 0.2 * duration_s
        self.running = None
        if self.waiting:
            head = self.waiting.pop(0)
            self.running = head
            head.granted.set()
        self._bump()

    def retry_after_s(self) -> int:
        """A guess at when a place frees up: the queue ahead times a mean generation."""
        return max(1, math.ceil(self._mean_s * max(1, len(self.waiting)) / 2))

    def _bump(self) -> None:
        self._moved.set()
        self._moved = asyncio.Event()
