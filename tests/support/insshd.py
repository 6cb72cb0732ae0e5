"""An in-process SSH server for tests: asyncssh on 127.0.0.1:0, no root needed.

Commands run here as this user through `sh -c` (with HOME set to the
server's own home directory and no RBEE_* variables inherited but the
test marker), SFTP serves
this machine's files (or is switched off), local port forwards are allowed.
`ssh_config()` writes the keeper side: a Host entry with the port, the
client key and a known_hosts file that trusts the server's key.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from pathlib import Path

import asyncssh


class _Server(asyncssh.SSHServer):
    def __init__(self, conns: set[asyncssh.SSHServerConnection]) -> None:
        self._conns = conns
        self._conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self._conns.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._conns.discard(self._conn)

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str, orig_port: int) -> bool:
        return True  # local port forwards (the tunnel to a hive or worker)


class InSshd:
    """One SSH server; `await start()`, `await stop()`."""

    def __init__(self, root: Path, *, sftp: bool = True, client_key: asyncssh.SSHKey | None = None) -> None:
        self.root = root
        self.home = root / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.host_key = asyncssh.generate_private_key("ssh-ed25519")
        self.client_key = client_key or asyncssh.generate_private_key("ssh-ed25519")
        self.sftp = sftp
        self.port = 0
        self.user = os.environ.get("USER") or "rbee"
        self._server: asyncssh.SSHAcceptor | None = None
        self._conns: set[asyncssh.SSHServerConnection] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self.client_key_file = root / "id_ed25519"
        self.client_key.write_private_key(str(self.client_key_file))
        self.client_key_file.chmod(0o600)

    def env(self) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("RBEE_") or k == "RBEE_TEST_MARKER"}
        return {**base, "HOME": str(self.home)}

    async def _process(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._run(process)
        finally:
            self._handlers.discard(task)

    async def _run(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        command = process.command or "true"
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", command, cwd=self.home, env=self.env(),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdin and proc.stdout and proc.stderr

        async def feed() -> None:
            assert proc.stdin
            with contextlib.suppress(Exception):
                while data := await process.stdin.read(65536):
                    proc.stdin.write(data)
                    await proc.stdin.drain()
            with contextlib.suppress(Exception):
                proc.stdin.close()

        async def pump(src: asyncio.StreamReader, dst: asyncssh.SSHWriter[bytes]) -> None:
            while data := await src.read(65536):
                with contextlib.suppress(Exception):
                    dst.write(data)

        finished = asyncio.ensure_future(
            asyncio.gather(pump(proc.stdout, process.stdout), pump(proc.stderr, process.stderr), proc.wait())
        )
        feeding = asyncio.ensure_future(feed())
        closed = asyncio.ensure_future(process.wait_closed())
        await asyncio.wait({finished, closed}, return_when=asyncio.FIRST_COMPLETED)
        if finished.done():
            with contextlib.suppress(Exception):
                process.exit(finished.result()[2])
        else:  # the client gave up (a timeout): the command goes too, as with sshd
            proc.kill()
            await finished
        feeding.cancel()
        closed.cancel()

    async def start(self) -> InSshd:
        self._server = await asyncssh.create_server(
            lambda: _Server(self._conns), "127.0.0.1", 0,
            server_host_keys=[self.host_key],
            authorized_client_keys=asyncssh.import_authorized_keys(
                self.client_key.export_public_key().decode()
            ),
            process_factory=self._process,
            encoding=None,
            sftp_factory=True if self.sftp else None,
            allow_scp=False,
        )  # fmt: skip
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        """Stop listening, end every connection and every command still running."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for conn in list(self._conns):
            conn.close()
            with contextlib.suppress(Exception):
                await conn.wait_closed()
        if self._handlers:
            await asyncio.wait(set(self._handlers), timeout=10)

    def known_hosts_line(self, key: asyncssh.SSHKey | None = None) -> str:
        public = (key or self.host_key).export_public_key().decode().split()
        return f"[127.0.0.1]:{self.port} {public[0]} {public[1]}\n"

    def ssh_config(self, path: Path, *, alias: str = "insshd", known_hosts: str | None = None,
                   extra: str = "") -> Path:  # fmt: skip
        """A keeper-side ssh_config with `Host ALIAS` for this server."""
        kh = path.with_name(path.name + ".known_hosts")
        kh.write_text(self.known_hosts_line() if known_hosts is None else known_hosts)
        path.write_text(
            f"Host {alias}\n"
            f"    HostName 127.0.0.1\n"
            f"    Port {self.port}\n"
            f"    User {self.user}\n"
            f"    IdentityFile {self.client_key_file}\n"
            f"    UserKnownHostsFile {kh}\n"
            f"    IdentitiesOnly yes\n" + extra
        )
        return path


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fake_install(install_dir: Path, home: Path | None = None) -> Path:
    """Make install_dir look like `rbee nodes install` ran: venv/bin/python runs this
    interpreter, and (given the node's home) the node has its API key."""
    import secrets
    import sys

    if home is not None:
        key = home / ".config" / "rbee" / "api_key"
        key.parent.mkdir(parents=True, exist_ok=True)
        key.write_text(secrets.token_urlsafe(32))
        key.chmod(0o600)
    python = install_dir / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True, exist_ok=True)
    python.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    return python
