"""A cold remote `rbee infer`: the keeper starts the node's hive before its full path
loads (keeper/early_remote.py), against the lab's real sshd nodes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import RbeeHome
from tests.lab import lab as lab_mod

INFER = ["infer", "--model", "gemma3-270m", "--prompt", "The capital of France is",
         "--max-tokens", "4", "--temperature", "0", "--json", "--node", "labnode1"]  # fmt: skip


def _hives_of(user: str) -> list[int]:
    return [pid for pid in lab_mod.user_processes(user)
            if "rbee_fabric.hive" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")]  # fmt: skip


def test_two_cold_keepers_at_once_start_one_hive(installed: RbeeHome) -> None:
    installed.run("hive", "stop", "labnode1")
    argv = [sys.executable, "-m", "rbee_fabric.cli", *INFER]
    procs = [subprocess.Popen(argv, env=installed.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]  # fmt: skip
    try:
        results = [p.communicate(timeout=300) for p in procs]
        for p, (out, err) in zip(procs, results, strict=True):
            assert p.returncode == 0, err
            assert json.loads(out)["text"]
            assert "Warning" not in err  # asyncssh's import-time warnings stay muted
        notes = sum(err.count("rbee-hive is not running on labnode1; starting it") for _, err in results)
        assert notes == 1  # one keeper started it; the other waited and found it up
        assert len(_hives_of("rbeelab1")) == 1
    finally:
        installed.run("hive", "stop", "labnode1")


def test_a_warm_remote_prompt_uses_one_ssh_connection(installed: RbeeHome) -> None:
    """Without a kept connection, the early look at the node hands its connection on
    (keeper/handover.py): the node's sshd sees one session for the command."""
    try:
        no_link = {"RBEE_SSH_KEEP_S": "0"}
        assert installed.run(*INFER, env=no_link).returncode == 0  # the hive and a worker
        log = lab_mod.node(1).dir / "sshd.log"
        before = log.read_text(errors="replace").count("Accepted publickey")
        r = installed.run(*INFER, env=no_link)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["reused_worker"] is True
        assert "Warning" not in r.stderr
        assert log.read_text(errors="replace").count("Accepted publickey") - before == 1
    finally:
        installed.run("hive", "stop", "labnode1")


def test_a_hive_that_cannot_start_is_explained(installed: RbeeHome, tmp_path: Path) -> None:
    """The early start leaves the explaining to the full path: the hive's own words."""
    installed.run("hive", "stop", "labnode1")
    inventory = tmp_path / "hosts.toml"
    text = Path(installed.env["RBEE_INVENTORY"]).read_text()
    inventory.write_text(text.replace("hive_port = 9201", "hive_port = 1"))  # a port it may not bind
    r = installed.run(*INFER, env={"RBEE_INVENTORY": str(inventory)})
    assert r.returncode == 1, r.stderr
    assert "did not become healthy" in r.stderr and "cannot bind 127.0.0.1:1" in r.stderr  # the log's words
    assert "Traceback" not in r.stderr
    assert _hives_of("rbeelab1") == []
