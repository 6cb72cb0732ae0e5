"""Issue 12, finding 5: host-key handling against the lab's real sshd nodes.

Lab tests: run only under the lab lock (see COMMON rules):
    flock /tmp/rbee-lab.lock env PYTHONPATH=$PWD python -m pytest tests/e2e/test_security_lab.py
"""

from __future__ import annotations

from pathlib import Path

from tests.conftest import RbeeHome
from tests.lab import lab as lab_mod

NODE3 = lab_mod.node(3)  # labnode3, 127.0.0.4:2222
NODE2 = lab_mod.node(2)  # labnode2, 127.0.0.3:2222 (the jump host below)


def host_key(n: lab_mod.LabNode) -> str:
    kind, data = (n.dir / "ssh_host_ed25519_key.pub").read_text().split()[:2]
    return f"{kind} {data}"


def lab_env(lab_home: RbeeHome, tmp_path: Path, *, hostname: str, ssh_config: str, known_hosts: str) -> dict[str, str]:
    kh = tmp_path / "known_hosts"
    kh.write_text(known_hosts)
    cfg = tmp_path / "ssh_config"
    cfg.write_text(
        ssh_config.replace("KNOWN_HOSTS", str(kh))
        + f"Host *\n    IdentityFile {lab_mod.DEFAULT_DIR / 'id_ed25519'}\n    IdentitiesOnly yes\n"
        f"    UserKnownHostsFile {kh}\n"
    )
    inv = tmp_path / "hosts.toml"
    inv.write_text(
        f'[nodes.target]\nhostname = "{hostname}"\nuser = "{NODE3.user}"\nssh_port = 2222\n'
        f'hive_port = {NODE3.hive_port}\npython = "/usr/bin/python3"\n'
    )
    return {"RBEE_SSH_CONFIG": str(cfg), "RBEE_INVENTORY": str(inv)}


def test_5_user_known_hosts_file_none_is_refused(lab_home: RbeeHome, tmp_path: Path) -> None:
    env = lab_env(lab_home, tmp_path, hostname=NODE3.address,
                ssh_config=f"Host {NODE3.address}\n    UserKnownHostsFile none\n", known_hosts="")  # fmt: skip
    r = lab_home.run("hive", "status", "target", env=env)
    assert r.returncode == 1
    assert "HOST_KEY_UNKNOWN" in r.stderr and "UserKnownHostsFile none" in r.stderr
    assert "stopped" not in r.stdout  # it never got as far as asking the node
    trust = lab_home.run("nodes", "trust", "target", "--yes", env=env)
    assert trust.returncode == 1 and "UserKnownHostsFile none" in trust.stderr


def test_5_alias_with_hostname_is_checked_and_trusted_under_its_address(lab_home: RbeeHome, tmp_path: Path) -> None:
    env = lab_env(lab_home, tmp_path, hostname="labalias",
                ssh_config=f"Host labalias\n    HostName {NODE3.address}\n    Port 2222\n", known_hosts="")  # fmt: skip
    r = lab_home.run("hive", "status", "target", env=env)
    assert r.returncode == 1
    assert "HOST_KEY_UNKNOWN" in r.stderr and "INTERNAL_ERROR" not in r.stderr, r.stderr
    trust = lab_home.run("nodes", "trust", "target", "--yes", env=env)
    assert trust.returncode == 0, trust.stderr
    assert f"[{NODE3.address}]:2222 {host_key(NODE3)}" in (tmp_path / "known_hosts").read_text()
    status = lab_home.run("hive", "status", "target", env=env)
    assert "HOST_KEY" not in status.stderr and "INTERNAL_ERROR" not in status.stderr, status.stderr
    assert "stopped" in status.stdout


def test_5_proxyjump_host_with_unknown_key_is_named_as_the_jump_host(lab_home: RbeeHome, tmp_path: Path) -> None:
    jump = f"{NODE2.user}@{NODE2.address}:2222"
    env = lab_env(
        lab_home, tmp_path, hostname=NODE3.address,
        ssh_config=f"Host {NODE3.address}\n    ProxyJump {jump}\n",
        known_hosts=f"[{NODE3.address}]:2222 {host_key(NODE3)}\n",  # the target is known, the jump host is not
    )  # fmt: skip
    r = lab_home.run("hive", "status", "target", env=env)
    assert r.returncode == 1
    assert "HOST_KEY_UNKNOWN" in r.stderr and "jump host" in r.stderr and jump in r.stderr, r.stderr
    assert "HAS CHANGED" not in r.stderr and "ssh-keygen -R" not in r.stderr
    assert f"ssh {jump}" in r.stderr
    # Once the jump host is known, the same node works through it.
    with open(tmp_path / "known_hosts", "a") as fh:
        fh.write(f"[{NODE2.address}]:2222 {host_key(NODE2)}\n")
    ok = lab_home.run("hive", "status", "target", env=env)
    assert "HOST_KEY" not in ok.stderr, ok.stderr
    assert "stopped" in ok.stdout


def test_6_everything_rbee_creates_on_a_node_is_private(lab_home: RbeeHome) -> None:
    """Every command the keeper runs on a node runs under umask 077."""
    import asyncio
    import os

    from rbee_fabric.keeper import inventory
    from rbee_fabric.keeper.transport.ssh import SshConnector

    n6 = lab_mod.node(6)
    node = inventory.load(lab_home.env["RBEE_INVENTORY"]).resolve("labnode6")

    async def main() -> str:
        t = SshConnector(node)
        try:
            await t.run(["sh", "-c", "rm -rf rbee-umask && mkdir -p rbee-umask/logs && echo x > rbee-umask/logs/a.log"])
            return (await t.run(["stat", "-c", "%a %n", "rbee-umask", "rbee-umask/logs", "rbee-umask/logs/a.log"])).stdout
        finally:
            await t.close()

    os.environ.update(lab_home.env)  # the lab's SSH config, for this process
    modes = asyncio.run(main()).split("\n")
    assert modes[:3] == ["700 rbee-umask", "700 rbee-umask/logs", "600 rbee-umask/logs/a.log"], modes
    home_files = Path(n6.home) / "rbee-umask" / "logs" / "a.log"
    assert home_files.stat().st_mode & 0o077 == 0


def test_direct_network_is_a_warning_in_nodes_check(lab_home: RbeeHome, tmp_path: Path) -> None:
    import json

    n7 = lab_mod.node(7)
    inv = tmp_path / "hosts.toml"
    inv.write_text(
        f'[nodes.direct7]\nhostname = "{n7.address}"\nuser = "{n7.user}"\nssh_port = 2222\n'
        f'hive_port = {n7.hive_port}\npython = "/usr/bin/python3"\nnetwork = "direct"\n'
        f'[nodes.tunnel7]\nhostname = "{n7.address}"\nuser = "{n7.user}"\nssh_port = 2222\n'
        f'hive_port = {n7.hive_port}\npython = "/usr/bin/python3"\n'
    )
    r = lab_home.run("nodes", "check", "direct7", "tunnel7", "--json", env={"RBEE_INVENTORY": str(inv)})
    nodes = {n["node"]: n for n in json.loads(r.stdout)["nodes"]}
    warn = [c for c in nodes["direct7"]["checks"] if c["name"] == "network"]
    assert warn and warn[0]["status"] == "warn" and "plain HTTP" in warn[0]["detail"], nodes["direct7"]
    assert 'network = "tunnel"' in warn[0]["fix"]
    assert not [c for c in nodes["tunnel7"]["checks"] if c["name"] == "network"]
