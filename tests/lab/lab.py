"""The lab: several "nodes" on this machine, each a real OpenSSH sshd.

Node i (1-based) is `labnode{i}`: Unix user `rbeelab{i}` with its own home,
an sshd with its own host key listening on 127.0.0.{i+1}:2222. The keeper
side gets a client key, a known_hosts file and an ssh_config under the lab
directory; `inventory/lab.toml` names the nodes.

    python -m tests.lab up [--nodes 8]     bring the lab up (root needed)
    python -m tests.lab down               stop every sshd the lab started
    python -m tests.lab env                print the variables the keeper needs

Point the keeper at it with the variables `env` prints (RBEE_SSH_CONFIG,
RBEE_INVENTORY). Traffic stays on loopback addresses.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DIR = ROOT / ".lab"
SSH_PORT = 2222
MAX_NODES = 8
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


@dataclass
class LabNode:
    index: int
    name: str
    user: str
    address: str
    port: int
    home: str
    hive_port: int
    dir: Path

    @property
    def host_key(self) -> Path:
        return self.dir / "ssh_host_ed25519_key"

    @property
    def pid_file(self) -> Path:
        return self.dir / "sshd.pid"


def node(index: int, lab_dir: Path = DEFAULT_DIR) -> LabNode:
    user = f"rbeelab{index}"
    return LabNode(
        index=index, name=f"labnode{index}", user=user, address=f"127.0.0.{index + 1}",
        port=SSH_PORT, home=f"/home/{user}", hive_port=9200 + index, dir=lab_dir / f"node{index}",
    )  # fmt: skip


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def _ensure_user(n: LabNode, fresh: bool) -> None:
    try:
        pwd.getpwnam(n.user)
    except KeyError:
        _run("useradd", "--create-home", "--home-dir", n.home, "--shell", "/bin/bash", n.user)
    # '*': no password can log in, yet the account is not "locked" (sshd without PAM
    # refuses locked accounts even for key logins).
    _run("usermod", "--password", "*", n.user)
    home = Path(n.home)
    if fresh and home.exists():
        # A clean node: nothing installed, nothing running (only our own files).
        for child in home.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    home.mkdir(parents=True, exist_ok=True)
    shutil.chown(home, n.user, n.user)
    home.chmod(0o755)


def _authorize(n: LabNode, pubkey: str) -> None:
    ssh = Path(n.home) / ".ssh"
    ssh.mkdir(mode=0o700, exist_ok=True)
    keys = ssh / "authorized_keys"
    keys.write_text(pubkey)
    keys.chmod(0o600)
    for p in (ssh, keys):
        shutil.chown(p, n.user, n.user)


def _sshd_config(n: LabNode, lab_dir: Path, sftp: bool = True) -> Path:
    cfg = n.dir / "sshd_config"
    # sftp=False: a node whose sshd has no SFTP subsystem (it cannot copy files).
    subsystem = "Subsystem sftp internal-sftp" if sftp else "# no SFTP subsystem"
    cfg.write_text(
        f"""ListenAddress {n.address}:{n.port}
HostKey {n.host_key}
PidFile {n.pid_file}
AllowUsers {n.user}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin no
AllowTcpForwarding yes
AllowAgentForwarding no
X11Forwarding no
PrintMotd no
{subsystem}
LogLevel VERBOSE
"""
    )
    return cfg


def _listening(address: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((address, port)) == 0


def _state_file(lab_dir: Path) -> Path:
    return lab_dir / "state.json"


def read_state(lab_dir: Path = DEFAULT_DIR) -> dict:
    try:
        return json.loads(_state_file(lab_dir).read_text())
    except (OSError, ValueError):
        return {"nodes": {}}


def start_sshd(n: LabNode, lab_dir: Path = DEFAULT_DIR, sftp: bool = True) -> int:
    """Start (or restart) one node's sshd (sftp=False: without SFTP); returns its pid."""
    cfg = _sshd_config(n, lab_dir, sftp)
    log = open(n.dir / "sshd.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        [SSHD, "-D", "-e", "-f", str(cfg)], stdout=log, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while not _listening(n.address, n.port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"sshd for {n.name} did not start: see {n.dir / 'sshd.log'}")
        time.sleep(0.05)
    state = read_state(lab_dir)
    state["nodes"][n.name] = {"pid": proc.pid, "user": n.user, "address": n.address}
    _state_file(lab_dir).write_text(json.dumps(state, indent=2))
    return proc.pid


def stop_sshd(name: str, lab_dir: Path = DEFAULT_DIR) -> None:
    """Stop one node's sshd (the pid the lab recorded, nothing else)."""
    state = read_state(lab_dir)
    entry = state["nodes"].pop(name, None)
    if entry:
        _kill_if_sshd(int(entry["pid"]))
    _state_file(lab_dir).write_text(json.dumps(state, indent=2))


def _kill_if_sshd(pid: int) -> None:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return
    if b"sshd" not in cmdline:
        return  # pid reused by something else: not ours
    os.kill(pid, signal.SIGTERM)
    for _ in range(50):
        if not Path(f"/proc/{pid}").exists():
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)


def user_processes(user: str) -> list[int]:
    """Pids running as a lab node's user (what a node has 'running')."""
    uid = pwd.getpwnam(user).pw_uid
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("Uid:") and int(line.split()[1]) == uid:
                    if "State:\tZ" not in status:
                        pids.append(int(entry.name))
                    break
    return pids


def kill_user_processes(user: str) -> None:
    """End what runs as a lab user (the node's hive and workers), by pid."""
    for pid in user_processes(user):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def up(nodes: int = MAX_NODES, lab_dir: Path = DEFAULT_DIR, fresh: bool = False) -> list[LabNode]:
    """Bring up `nodes` lab nodes; idempotent (running sshds are kept)."""
    if os.geteuid() != 0:
        raise PermissionError("the lab needs root (useradd, sshd)")
    if not Path(SSHD).exists():
        raise FileNotFoundError("sshd not found: apt-get install openssh-server")
    lab_dir.mkdir(parents=True, exist_ok=True)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
    client_key = lab_dir / "id_ed25519"
    if not client_key.exists():
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "rbee-lab-keeper", "-f", str(client_key))
    pubkey = (lab_dir / "id_ed25519.pub").read_text()
    known = []
    result = []
    state = read_state(lab_dir)
    for i in range(1, nodes + 1):
        n = node(i, lab_dir)
        n.dir.mkdir(parents=True, exist_ok=True)
        running = n.name in state["nodes"] and _listening(n.address, n.port)
        if fresh or not running:
            if n.name in state["nodes"]:
                stop_sshd(n.name, lab_dir)
            kill_user_processes(n.user) if _user_exists(n.user) else None
            _ensure_user(n, fresh)
            _authorize(n, pubkey)
            if not n.host_key.exists():
                _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(n.host_key))
            start_sshd(n, lab_dir)
        pub = (n.dir / "ssh_host_ed25519_key.pub").read_text().split()
        known.append(f"[{n.address}]:{n.port} {pub[0]} {pub[1]}")
        result.append(n)
    (lab_dir / "known_hosts").write_text("\n".join(known) + "\n")
    write_ssh_config(lab_dir, lab_dir / "ssh_config", lab_dir / "known_hosts")
    return result


def write_ssh_config(lab_dir: Path, path: Path, known_hosts: Path) -> Path:
    """An ssh_config for the keeper: the lab key and a known_hosts file."""
    path.write_text(
        f"""Host 127.0.0.*
    IdentityFile {lab_dir / 'id_ed25519'}
    UserKnownHostsFile {known_hosts}
    IdentitiesOnly yes
"""
        + _alias_entries(lab_dir, known_hosts)
    )
    return path


def _alias_entries(lab_dir: Path, known_hosts: Path) -> str:
    """Nodes the inventory does not name, only this SSH config: `labalias` is labnode1,
    `labjump` is labnode2 reached through labnode1 (ProxyJump)."""
    n1, n2 = node(1, lab_dir), node(2, lab_dir)
    common = f"    IdentityFile {lab_dir / 'id_ed25519'}\n    UserKnownHostsFile {known_hosts}\n    IdentitiesOnly yes\n"
    return (
        f"Host labalias\n    HostName {n1.address}\n    Port {n1.port}\n    User {n1.user}\n{common}"
        f"Host labjump\n    HostName {n2.address}\n    Port {n2.port}\n    User {n2.user}\n"
        f"    ProxyJump {n1.user}@{n1.address}:{n1.port}\n{common}"
    )


def _user_exists(user: str) -> bool:
    try:
        pwd.getpwnam(user)
    except KeyError:
        return False
    return True


def down(lab_dir: Path = DEFAULT_DIR) -> None:
    """Stop every sshd the lab started, and whatever runs as its users."""
    state = read_state(lab_dir)
    for name, entry in list(state["nodes"].items()):
        stop_sshd(name, lab_dir)
        if _user_exists(entry["user"]):
            kill_user_processes(entry["user"])


def env(lab_dir: Path = DEFAULT_DIR) -> dict[str, str]:
    return {
        "RBEE_SSH_CONFIG": str(lab_dir / "ssh_config"),
        "RBEE_INVENTORY": str(ROOT / "inventory" / "lab.toml"),
    }
