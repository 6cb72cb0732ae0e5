"""SSH defects, against the lab's real sshd nodes: names only ~/.ssh/config knows, and
`rbee nodes install` without a package index."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

from tests.conftest import RbeeHome
from tests.lab import lab as lab_mod

INFER = ["infer", "--model", "gemma3-270m", "--prompt", "The capital of France is",
         "--max-tokens", "4", "--temperature", "0", "--json"]  # fmt: skip


def _worker_runs_as(user: str) -> bool:
    return any("rbee_fabric.worker" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
               for pid in lab_mod.user_processes(user))  # fmt: skip


def _infer_then_stop(home: RbeeHome, node: str, user: str) -> None:
    # A node the inventory does not name has the default hive port, 9200, on the node.
    with socket.socket() as s:
        held = s.connect_ex(("127.0.0.1", 9200)) == 0
    assert not held, "127.0.0.1:9200 is held by another program (a hive of another rbee home?)"
    try:
        r = home.run(*INFER, "--node", node)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["text"]
        assert "starting it" in r.stderr  # the hive was started over SSH, as that node's user
        assert _worker_runs_as(user)
        st = home.run("hive", "status", node, "--json")
        assert st.returncode == 0 and json.loads(st.stdout)["running"]
    finally:
        stop = home.run("hive", "stop", node)
    assert stop.returncode == 0, stop.stderr
    assert f"rbee-hive on {node} stopped" in stop.stderr
    assert not _worker_runs_as(user)


def test_ssh_config_aliases_reach_their_nodes_directly_and_through_a_jump_host(installed: RbeeHome) -> None:
    for alias in ("labalias", "labjump"):  # labnode1, and labnode2 through labnode1
        r = installed.run("nodes", "install", alias)
        assert r.returncode == 0, r.stderr
        assert f"already installed on {alias}; nothing to change" in r.stderr
        logs = installed.run("hive", "logs", alias, "--lines", "1")
        assert logs.returncode == 0, logs.stderr
    check = installed.run("nodes", "check", "labalias", "labjump", "--json")
    for report in json.loads(check.stdout)["nodes"]:
        steps = {c["name"]: c["status"] for c in report["checks"]}
        assert [steps.get(k) for k in ("name", "ssh", "host key", "auth")] == ["pass"] * 4, report


def test_a_node_known_only_as_a_host_alias_of_the_ssh_config(installed: RbeeHome) -> None:
    """`labalias` is not in the inventory: it is labnode1 by the SSH config's Host entry."""
    _infer_then_stop(installed, "labalias", "rbeelab1")


def test_a_host_alias_behind_a_jump_host(installed: RbeeHome) -> None:
    """`labjump` is labnode2, reached through labnode1 (ProxyJump in the SSH config)."""
    _infer_then_stop(installed, "labjump", "rbeelab2")


def test_an_unknown_node_is_named_with_what_was_tried(lab_home: RbeeHome) -> None:
    for args in (["nodes", "check", "nosuchnode"], [*INFER, "--node", "nosuchnode"]):
        r = lab_home.run(*args)
        assert r.returncode == 2, r.stderr
        assert "UNKNOWN_NODE" in r.stderr and "not in the inventory" in r.stderr
        assert "nosuchnode.home.arpa" in r.stderr and "lab.toml" in r.stderr
        assert "[nodes.nosuchnode]" in r.stderr  # the suggestion
        assert "Traceback" not in r.stderr


def _no_index(house: Path, find_links: Path) -> dict[str, str]:
    return {"RBEE_WHEELHOUSE_DIR": str(house), "PIP_NO_INDEX": "1", "PIP_CONFIG_FILE": os.devnull,
            "PIP_FIND_LINKS": str(find_links)}  # fmt: skip


def test_install_without_an_index_names_the_missing_wheels(lab_home: RbeeHome, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    r = lab_home.run("nodes", "install", "labnode7", "--force", env=_no_index(tmp_path / "house", tmp_path / "empty"))
    assert r.returncode == 1
    assert "ERROR:" in r.stderr and "PIP_FIND_LINKS" in r.stderr  # pip's own reason, and the way out


def test_install_needs_no_package_index(installed: RbeeHome, tmp_path: Path) -> None:
    """The keeper's own wheel is written without pip; the dependencies come from find-links."""
    deps = next(Path(installed.env["RBEE_WHEELHOUSE_DIR"]).glob("*-full-*"))  # what the fixture collected
    house = tmp_path / "house"
    # labnode7 (labnode8 is the no-SFTP node of test_nodes_check), made fresh.
    shutil.rmtree("/home/rbeelab7/.local/share/rbee/venv", ignore_errors=True)
    r = installed.run("nodes", "install", "labnode7", env=_no_index(house, deps))
    assert r.returncode == 0, r.stderr
    assert "installed rbee-fabric 0.1.0 on labnode7" in r.stderr
    assert list(house.glob("*/rbee_fabric-0.1.0-py3-none-any.whl"))
    venv_python = "/home/rbeelab7/.local/share/rbee/venv/bin/python"
    out = subprocess.run([venv_python, "-c", "import rbee_fabric, asyncssh; print(rbee_fabric.__version__)"],
                         capture_output=True, text=True)  # fmt: skip
    assert out.stdout.strip() == "0.1.0", out.stderr
