"""A node's kept SSH connection (keeper/link.py), against the lab's real sshd nodes.

After a remote `rbee infer`, the next one on that node goes through the link
the first left: no new SSH handshake, so it works even when the node's sshd
takes no new connection. The link ends on `rbee hive stop`, when idle, and
when the inventory changes.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from tests.conftest import RbeeHome, links_of
from tests.lab import lab as lab_mod

INFER = ["infer", "--model", "gemma3-270m", "--prompt", "The capital of France is",
         "--max-tokens", "6", "--temperature", "0", "--json", "--node", "labnode1"]  # fmt: skip


def _gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return not Path(f"/proc/{pid}").exists()


def _wait_links(home: RbeeHome, n: int = 1) -> list[int]:
    deadline = time.monotonic() + 20
    while len(pids := links_of(home.marker)) < n and time.monotonic() < deadline:
        time.sleep(0.1)
    return pids


def test_the_next_prompt_needs_no_new_ssh_connection(installed: RbeeHome) -> None:
    node = lab_mod.node(1)
    try:
        first = installed.run(*INFER)
        assert first.returncode == 0, first.stderr
        assert "keeping the SSH connection to labnode1 open" in first.stderr
        assert "RBEE_SSH_KEEP_S=0" in first.stderr  # how to turn it off
        [link] = _wait_links(installed)
        time.sleep(1.5)  # the link's own handshake, in the background
        # The node's sshd stops taking connections; the kept one stays.
        lab_mod.stop_sshd(node.name)
        again = installed.run(*INFER)
        assert again.returncode == 0, again.stderr
        data = json.loads(again.stdout)
        assert data["reused_worker"] is True
        assert data["text"] == json.loads(first.stdout)["text"]  # temperature 0: the same answer
        assert "keeping the SSH connection" not in again.stderr  # one link, no new one
        assert links_of(installed.marker) == [link]
    finally:
        lab_mod.start_sshd(node)
        stop = installed.run("hive", "stop", "labnode1")
    assert stop.returncode == 0, stop.stderr
    assert "closed the kept SSH connection to labnode1" in stop.stderr
    assert _gone(link, 10)
    # Without its link the next prompt connects again (and leaves a new link).
    cold = installed.run(*INFER)
    assert cold.returncode == 0, cold.stderr
    assert "keeping the SSH connection to labnode1 open" in cold.stderr
    installed.run("hive", "stop", "labnode1")


def test_the_link_ends_when_idle_and_when_the_inventory_changes(installed: RbeeHome, tmp_path: Path) -> None:
    try:
        r = installed.run(*INFER, env={"RBEE_SSH_KEEP_S": "3"})
        assert r.returncode == 0, r.stderr
        assert "closed after 3 s idle" in r.stderr
        [idle] = _wait_links(installed)
        assert _gone(idle, 15)  # idle 3 s: it ends by itself
        assert installed.run(*INFER).returncode == 0
        [link] = _wait_links(installed)
        time.sleep(1.5)
        # An edited inventory may move the node: the link answers "stale" and ends;
        # the command is served by a new connection, which leaves a new link.
        inventory = Path(installed.env["RBEE_INVENTORY"])
        copy = tmp_path / "hosts.toml"
        copy.write_text(inventory.read_text() + "\n# edited\n")
        env = {"RBEE_INVENTORY": str(copy)}
        moved = installed.run(*INFER, env=env)
        assert moved.returncode == 0, moved.stderr
        assert "keeping the SSH connection to labnode1 open" in moved.stderr  # another inventory: another link
        time.sleep(0.5)
        copy.write_text(copy.read_text() + "# edited again\n")
        stale = installed.run(*INFER, env=env)
        assert stale.returncode == 0, stale.stderr
        assert json.loads(stale.stdout)["reused_worker"] is True
        assert "keeping the SSH connection to labnode1 open" in stale.stderr  # the stale one was replaced
        assert Path(f"/proc/{link}").exists()  # the first inventory's link is not touched
    finally:
        installed.run("hive", "stop", "labnode1")


def test_a_link_that_dies_mid_answer_loses_nothing(installed: RbeeHome) -> None:
    import os
    import signal
    import subprocess
    import sys

    try:
        assert installed.run(*INFER).returncode == 0
        [link] = _wait_links(installed)
        time.sleep(1.5)
        long = ["infer", "--model", "gemma3-270m", "--prompt", "Tell a long story about bees.",
                "--max-tokens", "400", "--node", "labnode1"]  # fmt: skip
        p = subprocess.Popen([sys.executable, "-m", "rbee_fabric.cli", *long], env=installed.env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
        assert p.stdout is not None
        first = p.stdout.read(8)  # the answer is streaming through the link
        os.kill(link, signal.SIGKILL)
        _rest, err = p.communicate(timeout=60)
        assert first and p.returncode == 1, err.decode()
        text = err.decode()
        assert "CONNECTION_LOST" in text and "kept SSH connection to labnode1 ended" in text
        assert "Traceback" not in text
        saved = re.search(r"saved in (\S+?);", text)
        assert saved and Path(saved.group(1)).read_text().strip()  # what came before the break
        # The next command connects anew and reuses the same worker.
        again = installed.run(*INFER)
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["reused_worker"] is True
    finally:
        installed.run("hive", "stop", "labnode1")
