"""The SSH connector: one asyncssh connection per node, opened on first use.

With sshconfig.py and hostkeys.py, the only code that touches asyncssh. It
honours ~/.ssh/config (or the files in $RBEE_SSH_CONFIG) and the agent,
checks host keys against known_hosts, and maps every asyncssh and socket
failure to an RbeeError here, once. Every remote command is built from
quoted arguments (shlex). Same semantics as transport/local.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncssh

from rbee_fabric.errors import NodeUnreachable, RemoteCommandFailed, SshAuthFailed
from rbee_fabric.keeper.inventory import Node
from rbee_fabric.keeper.transport import hostkeys
from rbee_fabric.keeper.transport.base import (
    RUN_TIMEOUT_S,
    Progress,
    RemoteResult,
    check_result,
    timed_out,
)
from rbee_fabric.keeper.transport.sshconfig import (
    address,
    describe,
    options,
    ssh_config_files,
    target,
)


class _KeyRecorder(asyncssh.SSHClient):
    """Remembers the host key the server showed, so errors can print its fingerprint."""

    def __init__(self) -> None:
        self.presented: str | None = None

    def validate_host_public_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        self.presented = key.get_fingerprint()
        return False  # known_hosts already said no; we never accept silently


class SshConnector:
    """A remote node over SSH: commands, SFTP, detached processes, port forwards."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self._conn: asyncssh.SSHClientConnection | None = None
        self._lock = asyncio.Lock()
        self._forwards: dict[tuple[str, int], int] = {}
        self._home: str | None = None

    @property
    def port(self) -> int:
        return target(self.node).port

    @property
    def bind_host(self) -> str:
        return "127.0.0.1" if self.node.network == "tunnel" else address(target(self.node).hostname)

    # ------------------------------------------------------------ connection

    async def connect(self) -> None:
        await self._connection()

    async def _connection(self) -> asyncssh.SSHClientConnection:
        """The node's one connection, opened on first use; errors mapped here."""
        async with self._lock:
            if self._conn is not None and self._conn.is_closed():
                # The session dropped: connect again; old forwards died with it.
                self._conn = None
                self._forwards.clear()
            if self._conn is None:
                self._conn = await self._connect()
            return self._conn

    async def _connect(self) -> asyncssh.SSHClientConnection:
        n = self.node
        recorder = _KeyRecorder()
        where = f"{n.user + '@' if n.user else ''}{n.hostname}:{self.port}"
        opts = options(n)
        hostkeys.known_hosts_files(n)  # refuses a config that turns checking off
        try:
            # config again: asyncssh opens a ProxyJump connection with the connect()
            # call's config only, not with the one inside options.
            return await asyncssh.connect(
                n.hostname, options=opts, config=ssh_config_files(), client_factory=lambda: recorder
            )
        except asyncssh.HostKeyNotVerifiable as exc:
            raise hostkeys.refused(n, where, recorder.presented, target(n).jump, exc.reason) from None
        except asyncssh.PermissionDenied as exc:
            user = n.user or opts.username
            raise SshAuthFailed(
                f"SSH authentication as {user!r} failed on {n.name} ({where}): {exc.reason}",
                hint=f"check the user (`user` in the inventory or ~/.ssh/config) and that your "
                f"public key is in ~{user}/.ssh/authorized_keys on the node (or loaded in ssh-agent)",
                details={"node": n.name, "user": user},
            ) from None
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            raise NodeUnreachable(
                f"cannot reach {n.name} over SSH ({where}): {describe(exc)}",
                hint=f"is the node on and is sshd running on it? try: ssh -p {self.port} "
                f"{n.user + '@' if n.user else ''}{n.hostname}",
                details={"node": n.name, "address": where},
            ) from None

    async def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            with contextlib.suppress(Exception):
                await self._conn.wait_closed()
            self._conn = None
            self._forwards.clear()

    def _lost(self, exc: BaseException) -> NodeUnreachable:
        return NodeUnreachable(
            f"lost the SSH connection to {self.node.name}: {describe(exc)}", details={"node": self.node.name}
        )

    # -------------------------------------------------------------- commands

    async def run(
        self, argv: list[str], *, check: bool = True, timeout: float = RUN_TIMEOUT_S, stdin: str | None = None
    ) -> RemoteResult:
        """Run a command from quoted arguments (never a pasted string), under umask 077."""
        return await self.run_shell(shlex.join(argv), check=check, timeout=timeout, stdin=stdin)

    async def run_shell(
        self, command: str, *, check: bool = True, timeout: float = RUN_TIMEOUT_S, stdin: str | None = None
    ) -> RemoteResult:
        """A shell line the caller built with shlex.quote for every argument."""
        conn = await self._connection()
        try:
            r = await conn.run(remote_line(command), check=False, timeout=timeout, input=stdin)
        except asyncssh.TimeoutError:
            raise timed_out(command, self.node.name, timeout) from None
        except (OSError, asyncssh.Error) as exc:
            raise self._lost(exc) from None
        result = RemoteResult(command, _status(r), str(r.stdout or ""), str(r.stderr or ""))
        return check_result(result, self.node.name, check)

    async def lines(self, argv: list[str]) -> AsyncIterator[str]:
        conn = await self._connection()
        try:
            async with conn.create_process(remote_line(shlex.join(argv))) as proc:
                async for line in proc.stdout:
                    if not line:
                        break  # end of output
                    yield str(line).rstrip("\n")
        except (OSError, asyncssh.Error) as exc:
            raise self._lost(exc) from None

    async def spawn(self, argv: list[str], *, log: str, env: dict[str, str] | None = None) -> int:
        r = await self.run_shell(spawn_line(await self.expand(log), argv, env or {}))
        return int(r.stdout.strip().splitlines()[-1])

    # ----------------------------------------------------------------- files

    async def _sftp(self, what: str) -> asyncssh.SFTPClient:
        conn = await self._connection()
        try:
            return await conn.start_sftp_client()
        except (OSError, asyncssh.Error) as exc:
            raise RemoteCommandFailed(
                f"cannot {what} {self.node.name}: its sshd offers no SFTP ({describe(exc)})",
                hint="enable SFTP on the node: `Subsystem sftp internal-sftp` (or the sftp-server "
                "path) in its sshd_config, then reload sshd",
                details={"node": self.node.name},
            ) from None

    async def put(self, local: Path, remote: str, progress: Progress | None = None) -> None:
        """Copy a file to the node over SFTP."""
        target_path = await self.expand(remote)

        def handler(_src: bytes, _dst: bytes, done: int, total: int) -> None:
            if progress:
                progress(done, total)

        sftp = await self._sftp("copy files to")
        try:
            async with sftp:
                await sftp.put(str(local), target_path, progress_handler=handler)
        except (OSError, asyncssh.Error) as exc:
            raise RemoteCommandFailed(
                f"copying {local.name} to {self.node.name}:{remote} failed: {describe(exc)}",
                hint="check free disk space on the node",
                details={"file": str(local), "remote": remote},
            ) from None

    async def get(self, remote: str, local: Path) -> None:
        """Copy a file from the node over SFTP."""
        source = await self.expand(remote)
        sftp = await self._sftp("copy files from")
        try:
            async with sftp:
                await sftp.get(source, str(local))
        except (OSError, asyncssh.Error) as exc:
            raise RemoteCommandFailed(
                f"copying {self.node.name}:{remote} to {local} failed: {describe(exc)}",
                details={"remote": remote, "file": str(local)},
            ) from None

    async def expand(self, path: str) -> str:
        """A leading ~/ as the node user's home."""
        if not path.startswith("~/"):
            return path
        if self._home is None:
            self._home = (await self.run(["sh", "-c", 'printf %s "$HOME"'])).stdout.strip()
        return f"{self._home}/{path[2:]}"

    # -------------------------------------------------------------- forwards

    async def open_channel(self, host: str, port: int) -> tuple[asyncssh.SSHReader[bytes], asyncssh.SSHWriter[bytes]]:
        """A channel to host:port as the node sees it (direct-tcpip): (reader, writer)."""
        conn = await self._connection()
        try:
            return await conn.open_connection(host, port, encoding=None)
        except (OSError, asyncssh.Error) as exc:
            raise NodeUnreachable(
                f"cannot reach {host}:{port} on {self.node.name}: {describe(exc)}",
                details={"node": self.node.name},
            ) from None

    async def wait_closed(self) -> None:
        """Return when the node's connection closes (opened first if need be)."""
        conn = await self._connection()
        await conn.wait_closed()

    async def forward(self, url: str) -> str:
        """Tunnel mode: a local port forward to the node's loopback address."""
        if self.node.network != "tunnel":
            return url
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        conn = await self._connection()  # reconnects after a dropped session
        if (host, port) not in self._forwards:
            try:
                listener = await conn.forward_local_port("127.0.0.1", 0, host, port)
            except (OSError, asyncssh.Error) as exc:
                raise NodeUnreachable(
                    f"cannot forward a port to {self.node.name}:{port}: {describe(exc)}",
                    hint="the node's sshd must allow TCP forwarding (AllowTcpForwarding yes)",
                    details={"node": self.node.name},
                ) from None
            self._forwards[(host, port)] = listener.get_port()
        return f"http://127.0.0.1:{self._forwards[(host, port)]}{parts.path}"


def _status(r: asyncssh.SSHCompletedProcess) -> int:
    if r.exit_status is not None and r.exit_status >= 0:
        return r.exit_status
    return 128 + 9 if r.exit_signal else 255  # killed by a signal, or the channel closed


def remote_line(command: str) -> str:
    """What runs on the node for a command: under umask 077, so rbee's files are private."""
    return f"umask 077; {command}"


def spawn_line(log: str, argv: list[str], env: dict[str, str]) -> str:
    """The shell line that starts argv detached, appending to log, and prints its pid (all quoted).

    Only the daemon goes to the background, with every fd off the channel, so
    the SSH session ends at once and the daemon outlives it.
    """
    logdir = log.rsplit("/", 1)[0] if "/" in log else "."
    envs = ["PYTHONUNBUFFERED=1", *(f"{k}={v}" for k, v in env.items())]
    return (
        f"mkdir -p {shlex.quote(logdir)} || exit 1; "
        f"nohup setsid {shlex.join(['env', *envs, *argv])} "
        f"</dev/null >>{shlex.quote(log)} 2>&1 & echo $!"
    )
