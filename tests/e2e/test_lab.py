"""Remote nodes over real SSH: the lab's sshd nodes, as a user drives them."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import RbeeHome
from tests.lab import lab as lab_mod


def nothing_runs_as(user: str) -> bool:
    return lab_mod.user_processes(user) == []




def test_install_is_idempotent_and_creates_the_key(installed: RbeeHome) -> None:
    r = installed.run("nodes", "install", "labnode1")
    assert r.returncode == 0, r.stderr
    assert "already installed on labnode1; nothing to change" in r.stderr
    key = Path("/home/rbeelab1/.config/rbee/api_key")
    assert key.exists() and oct(key.stat().st_mode & 0o777) == "0o600"
    venv_python = Path("/home/rbeelab1/.local/share/rbee/venv/bin/python")
    out = subprocess.run([str(venv_python), "-c", "import rbee_fabric; print(rbee_fabric.__version__)"],
                         capture_output=True, text=True)  # fmt: skip
    assert out.stdout.strip() == "0.1.0"


def test_hive_start_status_logs_stop(installed: RbeeHome) -> None:
    r = installed.run("hive", "start", "labnode1")
    assert r.returncode == 0, r.stderr
    assert "running on labnode1" in r.stderr
    status = installed.run("hive", "status", "labnode1", "--json")
    assert status.returncode == 0
    st = json.loads(status.stdout)
    assert st["running"] and st["version"] == "0.1.0" and st["pid"]
    logs = installed.run("hive", "logs", "labnode1")
    assert "rbee-hive 0.1.0 listening on http://127.0.0.1:9201" in logs.stdout
    stop = installed.run("hive", "stop", "labnode1")
    assert stop.returncode == 0, stop.stderr
    assert nothing_runs_as("rbeelab1")


def test_infer_on_two_nodes_at_once_then_the_warm_path(installed: RbeeHome) -> None:
    args = ["infer", "--model", "gemma3-270m", "--prompt", "The capital of France is",
            "--max-tokens", "16", "--temperature", "0", "--json"]  # fmt: skip
    procs = {
        node: subprocess.Popen([sys.executable, "-m", "rbee_fabric.cli", *args, "--node", node],
                               env=installed.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for node in ("labnode1", "labnode2")
    }
    try:
        results = {node: p.communicate(timeout=300) for node, p in procs.items()}
        for node, (out, err) in results.items():
            assert procs[node].returncode == 0, err
            data = json.loads(out)
            assert len(re.findall(r"[A-Za-z]{2,}", data["text"])) >= 3, data
            assert data["reused_worker"] is False
            assert "starting it" in err  # the keeper started each node's hive over SSH
        warm = installed.run(*args, "--node", "labnode1")
        assert warm.returncode == 0, warm.stderr
        assert json.loads(warm.stdout)["reused_worker"] is True
        # The worker really runs as the node's user, on the node.
        assert any("rbee_fabric.worker" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
                   for pid in lab_mod.user_processes("rbeelab1"))  # fmt: skip
    finally:
        for node in ("labnode1", "labnode2"):
            installed.run("hive", "stop", node)
    assert nothing_runs_as("rbeelab1") and nothing_runs_as("rbeelab2")


def test_a_node_without_rbee_says_how_to_install(lab_home: RbeeHome) -> None:
    r = lab_home.run("infer", "--node", "labnode5", "--model", "gemma3-270m", "--prompt", "x")
    assert r.returncode == 1
    assert "NOT_INSTALLED" in r.stderr and "rbee nodes install labnode5" in r.stderr


def _ssh_config_with(lab_home: RbeeHome, tmp_path: Path, known_hosts: str) -> dict[str, str]:
    kh = tmp_path / "known_hosts"
    kh.write_text(known_hosts)
    cfg = lab_mod.write_ssh_config(lab_mod.DEFAULT_DIR, tmp_path / "ssh_config", kh)
    return {"RBEE_SSH_CONFIG": str(cfg)}


def test_unknown_host_key_is_refused_with_fingerprint_then_trusted(lab_home: RbeeHome, tmp_path: Path) -> None:
    env = _ssh_config_with(lab_home, tmp_path, "")
    r = lab_home.run("infer", "--node", "labnode3", "--model", "gemma3-270m", "--prompt", "x", env=env)
    assert r.returncode == 1
    assert "HOST_KEY_UNKNOWN" in r.stderr
    assert re.search(r"SHA256:[A-Za-z0-9+/]{20,}", r.stderr)
    assert "rbee nodes trust labnode3" in r.stderr
    trust = lab_home.run("nodes", "trust", "labnode3", "--yes", env=env)
    assert trust.returncode == 0, trust.stderr
    assert "added to" in trust.stderr
    expected = (lab_mod.node(3).dir / "ssh_host_ed25519_key.pub").read_text().split()[1]
    assert expected in (tmp_path / "known_hosts").read_text()
    # Now the connection goes through (the hive is simply not running).
    status = lab_home.run("hive", "status", "labnode3", env=env)
    assert status.returncode == 1 and "stopped" in status.stdout and "HOST_KEY" not in status.stderr


def test_changed_host_key_is_a_loud_error(lab_home: RbeeHome, tmp_path: Path) -> None:
    wrong = (lab_mod.node(4).dir / "ssh_host_ed25519_key.pub").read_text().split()
    env = _ssh_config_with(lab_home, tmp_path, f"[127.0.0.4]:2222 {wrong[0]} {wrong[1]}\n")
    r = lab_home.run("hive", "status", "labnode3", env=env)
    assert r.returncode == 1
    assert "HOST_KEY_CHANGED" in r.stderr and "HAS CHANGED" in r.stderr
    assert "ssh-keygen -R" in r.stderr
    refused = lab_home.run("nodes", "trust", "labnode3", "--yes", env=env)
    assert refused.returncode == 1 and "not replacing" in refused.stderr


def test_sshd_stopped_gives_a_clear_error(lab_home: RbeeHome) -> None:
    node = lab_mod.node(6)
    lab_mod.stop_sshd(node.name)
    try:
        r = lab_home.run("infer", "--node", "labnode6", "--model", "gemma3-270m", "--prompt", "x")
        assert r.returncode == 1
        assert "NODE_UNREACHABLE" in r.stderr and "connection refused" in r.stderr
        assert "sshd" in r.stderr  # the suggestion
        assert "Traceback" not in r.stderr
    finally:
        lab_mod.start_sshd(node)


def test_wrong_user_is_an_auth_error_with_a_hint(lab_home: RbeeHome, tmp_path: Path) -> None:
    inv = tmp_path / "wrong.toml"
    inv.write_text('[nodes.labnode1]\nhostname = "127.0.0.2"\nssh_port = 2222\nuser = "rbeelab2"\n')
    r = lab_home.run("--inventory", str(inv), "hive", "status", "labnode1")
    assert r.returncode == 1
    assert "SSH_AUTH_FAILED" in r.stderr and "'rbeelab2'" in r.stderr
    assert "authorized_keys" in r.stderr


def test_models_push_to_a_node_without_internet(installed: RbeeHome, tiny_model: Path) -> None:
    r = installed.run("models", "push", "--node", "labnode2", str(tiny_model))
    assert r.returncode == 0, r.stderr
    assert "pushed and verified" in r.stderr
    pushed = Path("/home/rbeelab2/.local/share/rbee/models/pushed") / tiny_model.name
    assert pushed.read_bytes() == tiny_model.read_bytes()
    assert not pushed.with_name(pushed.name + ".part").exists()
    models = json.loads(installed.run("models", "list", "--node", "labnode2", "--json").stdout)
    assert f"file:{pushed}" in [m["reference"] for m in models]
    out = installed.run("infer", "--node", "labnode2", "--model", f"file:{pushed}", "--prompt", "x",
               "--max-tokens", "3", "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    installed.run("hive", "stop", "labnode2")
    assert nothing_runs_as("rbeelab2")


def test_direct_network_binds_the_node_address_and_requires_the_key(lab_home: RbeeHome, tmp_path: Path) -> None:
    import httpx

    inv = tmp_path / "direct.toml"
    inv.write_text('[nodes.labnode7]\nhostname = "127.0.0.8"\nuser = "rbeelab7"\nssh_port = 2222\n'
                   'hive_port = 9207\nnetwork = "direct"\n')  # fmt: skip
    env = {"RBEE_INVENTORY": str(inv)}
    assert lab_home.run("nodes", "install", "labnode7", env=env).returncode == 0
    try:
        r = lab_home.run("infer", "--node", "labnode7", "--model", "gemma3-270m", "--prompt", "Bees",
                 "--max-tokens", "4", "--json", env=env)  # fmt: skip
        assert r.returncode == 0, r.stderr
        workers = json.loads(lab_home.run("workers", "list", "--node", "labnode7", "--json", env=env).stdout)
        assert workers and workers[0]["url"].startswith("http://127.0.0.8:")  # not 127.0.0.1
        assert httpx.get("http://127.0.0.8:9207/v1/health").status_code == 200
        assert httpx.get("http://127.0.0.8:9207/v1/workers").status_code == 401  # no key, no entry
    finally:
        lab_home.run("hive", "stop", "labnode7", env=env)
    assert nothing_runs_as("rbeelab7")
