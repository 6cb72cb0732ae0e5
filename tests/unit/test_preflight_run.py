"""The fan-out: every node gets its report, whatever another node does (bug, hang)."""

from __future__ import annotations

import asyncio

import pytest

from rbee_fabric.keeper.inventory import Node
from rbee_fabric.keeper.preflight import run
from rbee_fabric.keeper.preflight.adapter import NodeAccess
from rbee_fabric.keeper.preflight.report import NodeReport
from tests.conftest import RbeeHome

LOCAL = Node(name="localhost", hostname="127.0.0.1", local=True, hive_port=9599)


def test_a_bug_or_a_hang_on_one_node_loses_no_other_report(monkeypatch: pytest.MonkeyPatch) -> None:
    async def fake_check(access: NodeAccess, r: NodeReport, model: str | None) -> None:
        if access.node.name == "buggy":
            raise ValueError("unexpected output")
        if access.node.name == "hangs":
            await asyncio.sleep(3600)
        r.add("ssh", "pass", "reachable")

    monkeypatch.setattr(run, "check_node", fake_check)
    nodes = [Node(name=n, hostname="127.0.0.1", local=True) for n in ("buggy", "fine", "hangs")]
    reports = asyncio.run(run.check_nodes(nodes, timeout=0.5))
    assert [r.node for r in reports] == ["buggy", "fine", "hangs"]
    buggy, fine, hangs = (r.to_dict() for r in reports)
    assert fine["ok"] is True and fine["checks"] == [{"name": "ssh", "status": "pass", "detail": "reachable", "fix": None}]
    assert buggy["ok"] is False
    assert buggy["checks"][-1]["detail"] == "the check itself failed: ValueError: unexpected output"
    assert "report it" in buggy["checks"][-1]["fix"]
    assert hangs["ok"] is False and hangs["checks"][-1]["detail"] == "checks did not finish within 0.5 s"


def test_an_error_inside_a_nodes_own_task_group_is_reported_as_itself() -> None:
    r = NodeReport("n", "local")
    from rbee_fabric.errors import NotInstalled

    run.failed(r, ExceptionGroup("g", [NotInstalled("rbee-fabric is not installed on n", hint="install")]), 1.0)
    assert r.checks[-1].detail == "rbee-fabric is not installed on n" and r.checks[-1].fix == "install"


def test_localhost_is_checked_for_real_without_ssh(rbee_home: RbeeHome) -> None:
    [report] = asyncio.run(run.check_nodes([LOCAL], timeout=30))
    checks = {c.name: c for c in report.checks}
    assert "ssh" not in checks and "sftp" not in checks and "name" not in checks
    for name in ("python", "rbee-fabric", "hive port", "worker ports", "disk", "ram", "cpu"):
        assert checks[name].status == "pass", checks[name]
    assert checks["hive"].status == "warn"  # not running: the keeper starts it on demand
    assert "(same as the keeper)" in checks["rbee-fabric"].detail
