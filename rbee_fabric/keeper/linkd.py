"""The daemon behind a node's link (keeper/link.py): one SSH connection, kept while used.

`python -m rbee_fabric.keeper.linkd NODE --socket PATH --keep SECONDS
[--inventory FILE]`, started by keeper/link.py ensure() after a remote
`rbee infer`. It resolves NODE as the keeper does, connects with the same
checks (host key against known_hosts, the SSH config; keeper/transport/ssh.py),
reads the node's API key once, then serves the socket. It ends when it has
been idle for SECONDS, when the connection drops, when the inventory or an
SSH config file changes (it answers "stale", and the next command connects
anew), on `rbee hive stop NODE`, or on SIGTERM. One per socket (a lock).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import os
import signal
import socket
import struct
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rbee_fabric.errors import RbeeError
from rbee_fabric.keeper import inventory
from rbee_fabric.keeper.fastpath_node import inventory_path
from rbee_fabric.keeper.transport.hive import NodeHive

if TYPE_CHECKING:
    from rbee_fabric.keeper.transport.ssh import SshConnector

LOOPBACK = ("127.0.0.1", "::1", "localhost")
_GRACE_S = 5.0  # how long one direction of a channel may outlive the other
_LOCK_WAIT_S = 10.0


def log(message: str) -> None:
    sys.stderr.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} link: {message}\n")
    sys.stderr.flush()


def _signature(files: list[Path]) -> list[tuple[str, int, int] | None]:
    out: list[tuple[str, int, int] | None] = []
    for f in files:
        try:
            st = f.stat()
            out.append((str(f), st.st_mtime_ns, st.st_size))
        except OSError:
            out.append(None)
    return out


def _peer_uid(sock: socket.socket | None) -> int | None:
    """The connecting process's uid (Linux); None where the system cannot say."""
    if sock is None or not hasattr(socket, "SO_PEERCRED"):
        return None
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", raw)[1])


async def _pump(read: Any, write: Any) -> None:
    with contextlib.suppress(Exception):
        while data := await read(65536):
            write.write(data)
            await write.drain()
    with contextlib.suppress(Exception):
        write.write_eof()


class Link:
    def __init__(self, connector: SshConnector, keep_s: float, watched: list[Path]) -> None:
        self.connector = connector
        self.hive = NodeHive(connector)
        self.keep_s = keep_s
        self.watched = watched
        self.signature = _signature(watched)
        self.key: str | None = None
        self.active = 0
        self.last = time.monotonic()
        self.done = asyncio.Event()

    async def open(self) -> None:
        await self.connector.connect()
        self.key = await self.hive.api_key()

    def stale(self) -> bool:
        return _signature(self.watched) != self.signature

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.active += 1
        try:
            uid = _peer_uid(writer.get_extra_info("socket"))
            if uid is not None and uid != os.getuid():
                log(f"refused a connection from uid {uid}")
                return
            try:
                op = json.loads(await asyncio.wait_for(reader.readline(), 5.0))
            except (ValueError, TimeoutError, OSError):
                return
            await self._serve(op if isinstance(op, dict) else {}, reader, writer)
        finally:
            self.active -= 1
            self.last = time.monotonic()
            writer.close()

    async def _serve(self, op: dict[str, Any], reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        def answer(**fields: Any) -> None:
            writer.write(json.dumps(fields).encode() + b"\n")

        kind = op.get("op")
        if self.stale():
            log("the inventory or the SSH config changed: ending (the next command connects anew)")
            answer(ok=False, error="stale")
            self.done.set()
        elif kind == "ping":
            answer(ok=True, node=self.hive.node.name, pid=os.getpid())
        elif kind == "key":
            answer(ok=True, api_key=self.key) if self.key else answer(ok=False, error="no API key on the node")
        elif kind == "stop":
            log("asked to stop")
            answer(ok=True)
            self.done.set()
        elif kind == "connect":
            await self._channel(op, reader, writer, answer)
            return
        else:
            answer(ok=False, error=f"unknown op {kind!r}")
        with contextlib.suppress(Exception):
            await writer.drain()

    async def _channel(self, op: dict[str, Any], reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter, answer: Any) -> None:  # fmt: skip
        host, port = op.get("host"), op.get("port")
        if host not in LOOPBACK or type(port) is not int or not 0 < port < 65536:
            answer(ok=False, error="only the node's loopback ports are reachable")
            return
        try:
            chan_reader, chan_writer = await self.connector.open_channel(host, port)
        except (RbeeError, OSError) as exc:
            answer(ok=False, error=str(exc))
            return
        answer(ok=True)
        up = asyncio.ensure_future(_pump(reader.read, chan_writer))
        down = asyncio.ensure_future(_pump(chan_reader.read, writer))
        _, pending = await asyncio.wait([up, down], return_when=asyncio.FIRST_COMPLETED)
        if pending:
            await asyncio.wait(pending, timeout=_GRACE_S)
        for task in (up, down):
            task.cancel()
        chan_writer.close()

    async def idle(self, conn_closed: asyncio.Future[None]) -> None:
        """Return when the link should end."""
        while not self.done.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.done.wait(), 1.0)
            if conn_closed.done():
                log("the SSH connection closed: ending")
                return
            if self.active == 0 and time.monotonic() - self.last >= self.keep_s:
                log(f"idle for {self.keep_s:g} s: ending")
                return


async def serve(node_name: str, explicit_inventory: str | None, sock_path: Path, keep_s: float) -> int:
    from rbee_fabric.keeper.transport.ssh import SshConnector
    from rbee_fabric.keeper.transport.sshconfig import ssh_config_files

    node = inventory.load(explicit_inventory).resolve(node_name)
    if node.local or node.network != "tunnel":
        log(f"{node_name} is not a tunnel node over SSH: nothing to keep")
        return 2
    inv = inventory_path(explicit_inventory)
    link = Link(SshConnector(node), keep_s, [*([inv] if inv else []), *map(Path, ssh_config_files())])
    await link.open()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, link.done.set)
    old = os.umask(0o177)
    try:
        server = await asyncio.start_unix_server(link.handle, path=str(sock_path))
    finally:
        os.umask(old)
    ino = os.stat(sock_path).st_ino
    log(f"keeping the SSH connection to {node_name} ({os.getpid()}): idle limit {keep_s:g} s, {sock_path}")
    closed = asyncio.ensure_future(link.connector.wait_closed())
    try:
        await link.idle(closed)
    finally:
        server.close()
        with contextlib.suppress(OSError):
            if os.stat(sock_path).st_ino == ino:
                os.unlink(sock_path)
        await link.connector.close()
    return 0


def _lock(path: str, wait_s: float) -> bool:
    """Hold path's lock for this process's life; False when another holds it for wait_s
    (a link that is ending, after "stale" or "stop", lets go within a second or two)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError:
            if time.monotonic() >= deadline:
                os.close(fd)
                return False
            time.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rbee_fabric.keeper.linkd")
    p.add_argument("node")
    p.add_argument("--socket", required=True, type=Path)
    p.add_argument("--keep", type=float, default=300.0)
    p.add_argument("--inventory")
    a = p.parse_args(argv)
    os.umask(0o077)
    if not _lock(f"{a.socket}.lock", _LOCK_WAIT_S):
        log("another link serves this socket")
        return 0
    try:
        return asyncio.run(serve(a.node, a.inventory, a.socket, a.keep))
    except RbeeError as exc:
        log(f"{exc.code}: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
