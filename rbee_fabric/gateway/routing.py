"""Which node serves a request: a pure function of what the pool knows.

    model        a reference (`gemma3-270m`, `hf:ORG/REPO`, ...) or NODE/reference
    order        1. a loaded worker that is idle
                 2. a node whose catalog holds the model but runs no worker for it
                    (so requests spread over every node that holds the model)
                 3. a loaded worker with the shortest queue
                 4. any other node that answers (the hive provisions the model there)

Nodes that stopped answering are left out until they answer again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rbee_fabric import modelref
from rbee_fabric.errors import NodesUnavailable


@dataclass(frozen=True)
class Target:
    """What a request asks for: a canonical reference, maybe pinned to a node."""

    reference: str
    node: str | None = None

    @property
    def label(self) -> str:
        return f"{self.node}/{self.reference}" if self.node else self.reference


def parse_target(model: str, nodes: set[str]) -> Target:
    """`NODE/reference` pins a node of the inventory; anything else is a reference."""
    head, sep, rest = model.partition("/")
    if sep and head in nodes:
        return Target(modelref.parse(rest).canonical, head)
    return Target(modelref.parse(model).canonical)


@dataclass
class WorkerView:
    id: str
    url: str
    state: str
    queued: int = 0  # waiting in the worker's own queue (other clients included)
    inflight: int = 0  # sent by this gateway and not finished

    @property
    def load(self) -> int:
        busy = self.state in ("busy", "loading", "starting")
        return max(self.inflight, int(busy)) + self.queued

    @property
    def idle(self) -> bool:
        return self.state == "idle" and self.load == 0


@dataclass
class NodeView:
    name: str
    up: bool
    local: bool = False
    down_reason: str | None = None
    catalog_known: bool = False  # its hive answered, so `holds` is meaningful
    holds: bool = False
    workers: list[WorkerView] = field(default_factory=list)  # for the requested model

    @property
    def load(self) -> int:
        return sum(w.load for w in self.workers)


@dataclass(frozen=True)
class Plan:
    """Try this node; with a worker id, that worker, else get one ready there."""

    node: str
    worker: WorkerView | None
    tier: int


def plans(target: Target, views: list[NodeView]) -> list[Plan]:
    """Every way to serve target, best first; NodesUnavailable when none is up."""
    candidates = [v for v in views if target.node is None or v.name == target.node]
    up = [v for v in candidates if v.up]
    if not up:
        reasons = {v.name: v.down_reason or "not answering" for v in candidates}
        where = f"node {target.node}" if target.node else "no node of the inventory"
        raise NodesUnavailable(
            f"{where} answers for {target.reference}"
            if target.node is None
            else f"{where} is not answering ({reasons.get(target.node, 'unknown')})",
            details={"nodes": reasons, "retry_after_s": 5},
        )
    out: list[tuple[tuple[int, int, int, int], Plan]] = []
    for order, v in enumerate(up):
        for w in v.workers:
            if w.state in ("failed", "stopping"):
                continue
            tier = 1 if w.idle else 3
            out.append(((tier, w.load, v.load, order), Plan(v.name, w, tier)))
        if not any(w.state not in ("failed", "stopping") for w in v.workers):
            tier = 2 if v.holds else 4
            # Tier 4: the local node first, then nodes whose hive is already up.
            rank = (0 if v.local else 1) + (0 if v.catalog_known else 2)
            out.append(((tier, 0, v.load, rank * 1000 + order), Plan(v.name, None, tier)))
    out.sort(key=lambda item: item[0])
    return [plan for _, plan in out]
