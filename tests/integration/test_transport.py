"""The connectors against a real SSH server in this process (asyncssh on port 0, no root).

The same checks run on the local connector and on the SSH one: same
defaults, same errors. Then the SSH error mapping, host-key trust, name
resolution through the SSH config, and a hive's whole lifecycle over SSH.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import asyncssh
import pytest

from rbee_fabric.errors import (
    HostKeyChanged,
    HostKeyUnknown,
    NodeUnreachable,
    RemoteCommandFailed,
    SshAuthFailed,
    UnknownNode,
)
from rbee_fabric.keeper import hivectl, inventory
from rbee_fabric.keeper.inventory import Node
from rbee_fabric.keeper.transport import Connector, NodeHive, connector_for, hostkeys
from tests.conftest import RbeeHome
from tests.support.insshd import InSshd, closed_port, fake_install
from tests.support.procs import free_port


@pytest.fixture
async def sshd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[InSshd]:
    server = await InSshd(tmp_path / "sshd").start()
    monkeypatch.setenv("RBEE_SSH_CONFIG", str(server.ssh_config(tmp_path / "ssh_config")))
    yield server
    await server.stop()


def ssh_node(tmp_path: Path, **kw: object) -> Node:
    return Node(name="insshd", hostname="insshd", local=False, install_dir=str(tmp_path / "install"), **kw)  # type: ignore[arg-type]


@pytest.fixture(params=["local", "ssh"])
async def conn(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Connector]:
    """A connector of each kind; its home is a fresh directory either way."""
    if request.param == "local":
        home = tmp_path / "localhome"
        home.mkdir()
        monkeypatch.setenv("HOME", str(home))
        c = connector_for(Node(name="localhost", hostname="127.0.0.1", local=True))
        yield c
        await c.close()
        return
    server = await InSshd(tmp_path / "sshd").start()
    monkeypatch.setenv("RBEE_SSH_CONFIG", str(server.ssh_config(tmp_path / "ssh_config")))
    c = connector_for(ssh_node(tmp_path))
    yield c
    await c.close()
    await server.stop()


async def test_run_has_the_same_defaults_and_errors_everywhere(conn: Connector) -> None:
    r = await conn.run(["sh", "-c", "echo out; echo err >&2; exit 3"], check=False)
    assert (r.exit_status, r.stdout, r.stderr) == (3, "out\n", "err\n")
    with pytest.raises(RemoteCommandFailed, match="exit status 1"):
        await conn.run(["false"])  # check is on by default
    with pytest.raises(RemoteCommandFailed, match="did not finish within"):
        await conn.run(["sleep", "5"], timeout=0.5)
    assert (await conn.run(["cat"], stdin="hello")).stdout == "hello"
    assert (await conn.run(["no-such-command-rbee"], check=False)).exit_status == 127
    assert (await conn.run(["sh", "-c", "umask"])).stdout.strip() == "0077"
    assert (await conn.run(["printf", "%s", "a b", "$HOME", "'"])).stdout == "a b$HOME'"


async def test_files_spawn_and_lines_behave_alike(conn: Connector, tmp_path: Path) -> None:
    home = await conn.expand("~/")
    assert home.endswith("/") and Path(home).is_dir()
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(300_000))
    seen: list[tuple[int, int]] = []
    await conn.run(["mkdir", "-p", await conn.expand("~/d")])
    await conn.put(src, "~/d/copy.bin", lambda done, total: seen.append((done, total)))
    assert seen and seen[-1] == (300_000, 300_000)
    back = tmp_path / "back.bin"
    await conn.get("~/d/copy.bin", back)
    assert back.read_bytes() == src.read_bytes()
    with pytest.raises(RemoteCommandFailed):
        await conn.get("~/d/missing", tmp_path / "x")

    pid = await conn.spawn(["sh", "-c", "echo started; exec sleep 30"], log="~/logs/s.log", env={"RBEE_X": "1"})
    try:
        log = Path(await conn.expand("~/logs/s.log"))
        for _ in range(100):
            if log.exists() and "started" in log.read_text():
                break
            await asyncio.sleep(0.05)
        assert "started" in log.read_text()
        assert oct(log.stat().st_mode & 0o777) == "0o600"
        os.kill(pid, 0)  # the very process (the in-process server runs here too)
    finally:
        os.kill(pid, 9)
    lines = [line async for line in conn.lines(["printf", "a\\nb\\n"])]
    assert lines == ["a", "b"]


async def test_ssh_forward_reaches_a_loopback_port_of_the_node(sshd: InSshd, tmp_path: Path) -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readline())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    c = connector_for(ssh_node(tmp_path))
    try:
        url = await c.forward(f"http://127.0.0.1:{port}/v1/health")
        m = re.fullmatch(r"http://127\.0\.0\.1:(\d+)/v1/health", url)
        assert m and int(m.group(1)) != port
        reader, writer = await asyncio.open_connection("127.0.0.1", int(m.group(1)))
        writer.write(b"through the tunnel\n")
        assert await reader.readline() == b"through the tunnel\n"
        writer.close()
        assert await c.forward(f"http://127.0.0.1:{port}/x") == url.replace("/v1/health", "/x")  # reused
    finally:
        await c.close()
        server.close()


# --------------------------------------------------------------- error mapping


async def _connect(node: Node) -> None:
    c = connector_for(node)
    try:
        await c.run(["true"])
    finally:
        await c.close()


async def test_refused_key_is_an_auth_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = await InSshd(tmp_path / "sshd").start()
    stranger = InSshd(tmp_path / "other")  # never started: only its client key is used
    cfg = server.ssh_config(tmp_path / "ssh_config")
    cfg.write_text(cfg.read_text().replace(str(server.client_key_file), str(stranger.client_key_file)))
    monkeypatch.setenv("RBEE_SSH_CONFIG", str(cfg))
    try:
        with pytest.raises(SshAuthFailed, match="authentication as") as exc:
            await _connect(ssh_node(tmp_path))
        assert "authorized_keys" in (exc.value.hint or "")
    finally:
        await server.stop()


async def test_unknown_host_key_shows_its_fingerprint_then_trust_adds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await InSshd(tmp_path / "sshd").start()
    monkeypatch.setenv("RBEE_SSH_CONFIG", str(server.ssh_config(tmp_path / "ssh_config", known_hosts="")))
    node = ssh_node(tmp_path)
    try:
        with pytest.raises(HostKeyUnknown) as exc:
            await _connect(node)
        fingerprint = server.host_key.get_fingerprint()
        assert fingerprint in exc.value.message and "rbee nodes trust insshd" in (exc.value.hint or "")
        key = await hostkeys.fetch(node)
        assert isinstance(key.fingerprint, str) and key.fingerprint == fingerprint
        assert key.algorithm == "ssh-ed25519"
        path, added = hostkeys.trust(node, key)
        assert added and f"[127.0.0.1]:{server.port} ssh-ed25519 " in Path(path).read_text()
        assert hostkeys.trust(node, key)[1] is False  # already there
        await _connect(node)  # now it connects
    finally:
        await server.stop()


async def test_changed_host_key_is_loud_and_trust_refuses_to_replace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await InSshd(tmp_path / "sshd").start()
    other = asyncssh.generate_private_key("ssh-ed25519")
    cfg = server.ssh_config(tmp_path / "ssh_config", known_hosts=server.known_hosts_line(other))
    monkeypatch.setenv("RBEE_SSH_CONFIG", str(cfg))
    node = ssh_node(tmp_path)
    try:
        with pytest.raises(HostKeyChanged, match="HAS CHANGED") as exc:
            await _connect(node)
        assert "ssh-keygen -R" in (exc.value.hint or "")
        with pytest.raises(HostKeyChanged, match="not replacing"):
            hostkeys.trust(node, await hostkeys.fetch(node))
    finally:
        await server.stop()


async def test_unreachable_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = InSshd(tmp_path / "sshd")
    server.port = closed_port()
    monkeypatch.setenv("RBEE_SSH_CONFIG", str(server.ssh_config(tmp_path / "ssh_config")))
    with pytest.raises(NodeUnreachable, match="connection refused") as exc:
        await _connect(ssh_node(tmp_path))
    assert "sshd" in (exc.value.hint or "")


async def test_a_node_without_sftp_says_so_and_how_to_fix_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = await InSshd(tmp_path / "sshd", sftp=False).start()
    monkeypatch.setenv("RBEE_SSH_CONFIG", str(server.ssh_config(tmp_path / "ssh_config")))
    c = connector_for(ssh_node(tmp_path))
    src = tmp_path / "f"
    src.write_text("x")
    try:
        assert (await c.run(["echo", "commands still run"])).stdout == "commands still run\n"
        with pytest.raises(RemoteCommandFailed, match="offers no SFTP") as exc:
            await c.put(src, "~/f")
        assert "Subsystem sftp" in (exc.value.hint or "")
    finally:
        await c.close()
        await server.stop()


# ------------------------------------------------------------ name resolution


def test_a_host_alias_of_the_ssh_config_is_used_as_typed(sshd: InSshd, tmp_path: Path) -> None:
    inv = inventory.Inventory(nodes={}, path=None)
    node = inv.resolve("insshd", resolves=lambda _h: False)
    assert node.hostname == "insshd" and not node.local
    assert "ssh config" in node.source and "127.0.0.1" in node.source


def test_an_unknown_name_says_what_was_tried(sshd: InSshd, tmp_path: Path) -> None:
    inv = inventory.Inventory(nodes={}, path=tmp_path / "hosts.toml")
    with pytest.raises(UnknownNode) as exc:
        inv.resolve("nosuchnode", resolves=lambda _h: False)
    msg = exc.value.message
    assert "not in the inventory" in msg and "nor in the SSH config" in msg
    assert "nosuchnode.home.arpa" in msg and str(tmp_path / "hosts.toml") in msg
    assert "[nodes.nosuchnode]" in (exc.value.hint or "")
    assert exc.value.exit_code == 2
    # A bare name that does resolve under .home.arpa keeps the old rule.
    assert inv.resolve("mac", resolves=lambda h: h == "mac.home.arpa").hostname == "mac.home.arpa"


# ------------------------------------------------------- a hive over SSH, whole


async def test_hive_lifecycle_over_ssh(
    rbee_home: RbeeHome, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Start, find, check and stop a real hive on the "node" through the SSH connector."""
    server = await InSshd(tmp_path / "sshd").start()
    monkeypatch.setenv("RBEE_SSH_CONFIG", str(server.ssh_config(tmp_path / "ssh_config")))
    fake_install(tmp_path / "install")  # the node's "venv"
    monkeypatch.setattr(hivectl, "BACKOFF_S", 0.01)
    t = NodeHive(connector_for(ssh_node(tmp_path, hive_port=free_port())))
    try:
        assert await t.hive_pid() is None
        async with hivectl.hive_client(t) as hive:
            notes = _Notes()
            with pytest.raises(Exception, match="did not answer after 2 attempts"):
                await hivectl.ensure_hive(t, hive, notes, start=False, attempts=2)
            assert len(notes.attempts) == 2
            await hivectl.ensure_hive(t, hive, notes)
        assert any("starting it" in m for m in notes.infos)
        st = await hivectl.status(t)
        assert st.running and st.pid == await t.hive_pid() and st.pid is not None
        assert (server.home / ".config" / "rbee" / "api_key").exists()  # the node's key, not ours
        assert any("listening on" in line for line in await t.log_tail(20))
        was_running, _ = await hivectl.stop(t)
        assert was_running and await t.alive([st.pid]) == []
        assert await t.hive_pid() is None
    finally:
        await t.close()
        await server.stop()


class _Notes:
    def __init__(self) -> None:
        self.infos: list[str] = []
        self.attempts: list[int] = []

    def info(self, msg: str) -> None:
        self.infos.append(msg)

    def attempt(self, n: int, total: int, address: str, error: str) -> None:
        self.attempts.append(n)
