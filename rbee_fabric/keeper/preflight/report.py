"""What `rbee nodes check` reports: per node, checks that pass, warn, fail or skip."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

Status = Literal["pass", "warn", "fail", "skip"]


@dataclass
class Check:
    name: str
    status: Status
    detail: str
    fix: str | None = None


@dataclass
class NodeReport:
    node: str
    reached_by: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(c.status == "fail" for c in self.checks)

    def add(self, name: str, status: Status, detail: str, fix: str | None = None) -> None:
        self.checks.append(Check(name, status, detail, fix))

    def to_dict(self) -> dict[str, object]:
        return {"node": self.node, "reached_by": self.reached_by, "ok": self.ok,
                "checks": [asdict(c) for c in self.checks]}  # fmt: skip


__all__ = ["Check", "NodeReport", "Status"]
