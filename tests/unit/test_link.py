"""The link's protocol (keeper/link.py client, keeper/linkd.py server) on a real Unix socket.

The SSH side is replaced by plain TCP on this machine (a channel to a port
"on the node" is a connection to that port here); the lab test
(tests/e2e/test_link_lab.py) runs the same code over a real sshd.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from rbee_fabric.keeper import link
from rbee_fabric.keeper.linkd import Link


class LocalChannels:
    """Stands in for SshConnector: channels are TCP connections on this machine."""

    node = SimpleNamespace(name="n1")

    async def open_channel(self, host: str, port: int) -> Any:
        return await asyncio.open_connection(host, port)


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(1024):
        writer.write(data.upper())
        await writer.drain()
    writer.close()


@pytest.fixture
async def served(tmp_path: Path) -> Any:
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    watched = tmp_path / "hosts.toml"
    watched.write_text("")
    lk = Link(LocalChannels(), keep_s=60, watched=[watched])  # type: ignore[arg-type]
    lk.key = "secret-key"
    sock = run / "n1.sock"
    server = await asyncio.start_unix_server(lk.handle, path=str(sock))
    echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
    port = echo.sockets[0].getsockname()[1]
    yield SimpleNamespace(link=lk, sock=sock, port=port, watched=watched)
    server.close()
    echo.close()


async def test_key_and_a_channel_to_a_loopback_port(served: Any) -> None:
    assert await asyncio.to_thread(link.api_key, served.sock) == "secret-key"
    ping = await asyncio.to_thread(link.ask, served.sock, "ping")
    assert ping["node"] == "n1" and ping["pid"] == os.getpid()

    def talk() -> bytes:
        with link.connect(served.sock, "127.0.0.1", served.port, timeout=5) as s:
            s.sendall(b"hello through the link")
            s.shutdown(1)
            out = b""
            while data := s.recv(1024):
                out += data
            return out

    assert await asyncio.to_thread(talk) == b"HELLO THROUGH THE LINK"


async def test_only_the_nodes_loopback_is_reachable(served: Any) -> None:
    with pytest.raises(link.LinkError, match="loopback"):
        await asyncio.to_thread(link.connect, served.sock, "192.168.1.20", served.port, 5)
    with pytest.raises(link.LinkError, match="unknown op"):
        await asyncio.to_thread(link.ask, served.sock, "shell")


async def test_a_closed_port_is_an_error_not_a_hang(served: Any) -> None:
    probe = await asyncio.start_server(_echo, "127.0.0.1", 0)
    closed = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    with pytest.raises(link.LinkError):
        await asyncio.to_thread(link.connect, served.sock, "127.0.0.1", closed, 5)


async def test_a_changed_inventory_makes_it_stale_and_end(served: Any) -> None:
    served.watched.write_text("[nodes.n1]\nhostname = 'elsewhere'\n")
    with pytest.raises(link.LinkError, match="stale"):
        await asyncio.to_thread(link.api_key, served.sock)
    assert served.link.done.is_set()


async def test_a_directory_others_may_enter_is_not_trusted(served: Any) -> None:
    served.sock.parent.chmod(0o755)
    with pytest.raises(link.LinkError, match="not a private directory"):
        await asyncio.to_thread(link.api_key, served.sock)


def test_keep_seconds_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RBEE_SSH_KEEP_S", "0")
    assert link.keep_seconds() == 0
    assert link.ensure("n1", None) is False  # keeping is off: nothing starts
    monkeypatch.setenv("RBEE_SSH_KEEP_S", "soon")
    assert link.keep_seconds() == link.KEEP_S
    monkeypatch.setenv("RBEE_SSH_KEEP_S", "-1")
    assert link.keep_seconds() == link.KEEP_S


def test_the_socket_depends_on_the_home_inventory_and_ssh_config(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:  # fmt: skip
    monkeypatch.setenv("RBEE_DATA_DIR", str(tmp_path / "a"))
    monkeypatch.delenv("RBEE_SSH_CONFIG", raising=False)
    base = link.socket_path("mac", None)
    assert len(str(base)) < 100  # Unix socket paths are short
    assert link.socket_path("mac", tmp_path / "hosts.toml") != base
    assert link.socket_path("gpu", None) != base
    monkeypatch.setenv("RBEE_SSH_CONFIG", str(tmp_path / "ssh_config"))
    assert link.socket_path("mac", None) != base
    monkeypatch.delenv("RBEE_SSH_CONFIG")
    monkeypatch.setenv("RBEE_DATA_DIR", str(tmp_path / "b"))
    assert link.socket_path("mac", None) != base
