"""The SSH transport: one asyncssh connection per node per command.

The only module that imports asyncssh. It honours ~/.ssh/config (or the
files in $RBEE_SSH_CONFIG) and the agent, checks host keys against
known_hosts, and maps every asyncssh and socket failure to an RbeeError here,
once. Every remote command is built from quoted arguments (shlex).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncssh

from rbee_fabric.errors import (
    HostKeyChanged,
    HostKeyUnknown,
    NodeUnreachable,
    NotInstalled,
    RemoteCommandFailed,
    SshAuthFailed,
)
from rbee_fabric.keeper.inventory import Node
from rbee_fabric.keeper.transport import RemoteResult

CONNECT_TIMEOUT_S = 10.0
KEY_FILE = ".config/rbee/api_key"


def ssh_config_files() -> list[str]:
    """$RBEE_SSH_CONFIG (os.pathsep-separated), else ~/.ssh/config if it exists."""
    if env := os.environ.get("RBEE_SSH_CONFIG"):
        return [p for p in env.split(os.pathsep) if p]
    default = Path.home() / ".ssh" / "config"
    return [str(default)] if default.exists() else []


class _KeyRecorder(asyncssh.SSHClient):
    """Remembers the host key the server showed, so errors can print its fingerprint."""

    def __init__(self) -> None:
        self.presented: asyncssh.SSHKey | None = None

    def validate_host_public_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        self.presented = key
        return False  # known_hosts already said no; we never accept silently


def _options(node: Node) -> asyncssh.SSHClientConnectionOptions:
    kwargs: dict[str, Any] = {"config": ssh_config_files(), "connect_timeout": CONNECT_TIMEOUT_S}
    if node.user:
        kwargs["username"] = node.user
    if node.ssh_port:
        kwargs["port"] = node.ssh_port
    return asyncssh.SSHClientConnectionOptions(host=node.hostname, **kwargs)


def known_hosts_files(node: Node) -> list[str]:
    """The known_hosts files that apply to node (from the SSH config, else the default).

    HostKeyUnknown when the SSH config turns checking off (`UserKnownHostsFile
    none`): asyncssh would then accept any key, and rbee never connects so.
    """
    opts = _options(node)
    if opts.known_hosts is None:
        raise HostKeyUnknown(
            f"the SSH config disables host-key checking for {node.name} "
            "(UserKnownHostsFile none); rbee does not connect without checking the host key",
            hint=f"remove `UserKnownHostsFile none` for {check_name(node)} from your SSH config "
            f"(or name a file), then run: rbee nodes trust {node.name}",
            details={"node": node.name},
        )
    files = opts.known_hosts if isinstance(opts.known_hosts, list) else []
    return [str(f) for f in files] or [str(Path.home() / ".ssh" / "known_hosts")]


def check_name(node: Node) -> str:
    """The name asyncssh checks in known_hosts: HostKeyAlias, else HostName, else the host."""
    opts = _options(node)
    return str(opts.host_key_alias or opts.host or node.hostname)


def _host_pattern(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


def _known_keys(node: Node, port: int) -> list[asyncssh.SSHKey]:
    keys: list[asyncssh.SSHKey] = []
    name = check_name(node)
    for f in known_hosts_files(node):
        if not Path(f).expanduser().exists():
            continue
        try:
            known = asyncssh.read_known_hosts(str(Path(f).expanduser()))
            trusted = known.match(name, _address(name), port)[0]
        except (OSError, ValueError):
            continue
        keys.extend(trusted)
    return keys


def _address(host: str) -> str:
    try:
        return socket.getaddrinfo(host, None)[0][4][0]  # type: ignore[return-value]
    except OSError:
        return host


class SshTransport:
    """A remote node over SSH: hive and workers reached through port forwards."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self._conn: asyncssh.SSHClientConnection | None = None
        self._lock = asyncio.Lock()
        self._forwards: dict[tuple[str, int], int] = {}
        self._api_key: str | None = None
        self._home: str | None = None

    # ------------------------------------------------------------ connection

    @property
    def port(self) -> int:
        return self.node.ssh_port or int(_options(self.node).port or 22)

    async def connection(self) -> asyncssh.SSHClientConnection:
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
        opts = _options(n)
        known_hosts_files(n)  # refuses a config that turns checking off
        try:
            # config again: asyncssh opens a ProxyJump connection with the connect()
            # call's config only, not with the one inside options.
            return await asyncssh.connect(
                n.hostname, options=opts, config=ssh_config_files(), client_factory=lambda: recorder
            )
        except asyncssh.HostKeyNotVerifiable as exc:
            key = recorder.presented
            jump = getattr(opts, "tunnel", None)
            if key is None and isinstance(jump, str) and jump:
                # Our client never saw a key: the check that failed was the jump host's.
                raise HostKeyUnknown(
                    f"the host key of the jump host {jump} (ProxyJump for {n.name}) could not "
                    f"be verified: {exc.reason}; rbee did not connect",
                    hint=f"check the jump host's key: connect once with `ssh {jump}`, compare "
                    "the fingerprint it shows with the jump host's real key, and accept it "
                    f"(its entry belongs in known_hosts; {n.name}'s own entry is not at fault)",
                    details={"node": n.name, "jump_host": jump},
                ) from None
            fingerprint = key.get_fingerprint() if key else "unknown"
            if _known_keys(n, self.port):
                raise HostKeyChanged(
                    f"THE HOST KEY OF {n.name} ({where}) HAS CHANGED: it now presents "
                    f"{fingerprint}, which is not the key in known_hosts. Someone may be "
                    "intercepting the connection, or the node was reinstalled.",
                    hint="if you know why it changed, remove the old key with "
                    f"`ssh-keygen -R '{_host_pattern(check_name(n), self.port)}'` "
                    f"(file: {known_hosts_files(n)[0]}), then run `rbee nodes trust {n.name}`",
                    details={"node": n.name, "fingerprint": fingerprint},
                ) from None
            raise HostKeyUnknown(
                f"the host key of {n.name} ({where}) is not known: {fingerprint}",
                hint=f"check the fingerprint, then trust it with: rbee nodes trust {n.name}",
                details={"node": n.name, "fingerprint": fingerprint},
            ) from None
        except asyncssh.PermissionDenied as exc:
            user = n.user or _options(n).username
            raise SshAuthFailed(
                f"SSH authentication as {user!r} failed on {n.name} ({where}): {exc.reason}",
                hint=f"check the user (`user` in the inventory or ~/.ssh/config) and that your "
                f"public key is in ~{user}/.ssh/authorized_keys on the node (or loaded in ssh-agent)",
                details={"node": n.name, "user": user},
            ) from None
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            reason = _describe(exc)
            raise NodeUnreachable(
                f"cannot reach {n.name} over SSH ({where}): {reason}",
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

    # -------------------------------------------------------------- commands

    async def run(
        self, argv: list[str], *, check: bool = True, timeout: float = 120.0, stdin: str | None = None
    ) -> RemoteResult:
        """Run a command from quoted arguments (never a pasted string)."""
        return await self.run_shell(shlex.join(argv), check=check, timeout=timeout, stdin=stdin)

    async def run_shell(
        self, command: str, *, check: bool = True, timeout: float = 120.0, stdin: str | None = None
    ) -> RemoteResult:
        """Run a shell line the caller built with shlex.quote for every argument.

        Under `umask 077`: whatever rbee creates on a node (logs, catalog,
        venv, models) is private to the node's rbee user.
        """
        conn = await self.connection()
        try:
            r = await conn.run(remote_line(command), check=False, timeout=timeout, input=stdin)
        except asyncssh.TimeoutError as exc:
            raise RemoteCommandFailed(
                f"{command!r} on {self.node.name} did not finish within {timeout:.0f} s",
                details={"command": command, "stdout": str(exc.stdout), "stderr": str(exc.stderr)},
            ) from None
        except (OSError, asyncssh.Error) as exc:
            raise NodeUnreachable(
                f"lost the SSH connection to {self.node.name}: {_describe(exc)}",
                details={"node": self.node.name},
            ) from None
        result = RemoteResult(command, r.exit_status or 0, str(r.stdout or ""), str(r.stderr or ""))
        if check and result.exit_status != 0:
            last = (result.stderr.strip() or result.stdout.strip()).splitlines()[-5:]
            raise RemoteCommandFailed(
                f"{command!r} failed on {self.node.name} with exit status {result.exit_status}"
                + (": " + " / ".join(last) if last else ""),
                details={"command": command, "exit_status": result.exit_status,
                         "stdout": result.stdout[-4000:], "stderr": result.stderr[-4000:]},
            )  # fmt: skip
        return result

    async def put(
        self, local: Path, remote: str, progress: Callable[[int, int], None] | None = None
    ) -> None:
        """Copy a file to the node over SFTP (remote paths are relative to home)."""
        conn = await self.connection()

        def handler(_src: bytes, _dst: bytes, done: int, total: int) -> None:
            if progress:
                progress(done, total)

        try:
            async with conn.start_sftp_client() as sftp:
                await sftp.put(str(local), remote, progress_handler=handler)
        except (OSError, asyncssh.Error) as exc:
            raise RemoteCommandFailed(
                f"copying {local.name} to {self.node.name}:{remote} failed: {_describe(exc)}",
                hint="check free disk space on the node",
                details={"file": str(local), "remote": remote},
            ) from None

    async def home(self) -> str:
        if self._home is None:
            self._home = (await self.run(["sh", "-c", 'printf %s "$HOME"'])).stdout.strip()
        return self._home

    async def remote_path(self, path: str) -> str:
        """Expand a leading ~/ of an inventory path on the node."""
        if path.startswith("~/"):
            return f"{await self.home()}/{path[2:]}"
        return path

    # --------------------------------------------------- transport interface

    @property
    def can_start_hive(self) -> bool:
        return True

    @property
    def bind_host(self) -> str:
        return "127.0.0.1" if self.node.network == "tunnel" else _address(self.node.hostname)

    async def hive_url(self) -> str:
        host = self.bind_host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.node.hive_port}"

    async def reach(self, url: str) -> str:
        """Tunnel mode: a local port forward to the node's loopback address."""
        if self.node.network != "tunnel":
            return url
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        conn = await self.connection()  # reconnects after a dropped session
        if (host, port) not in self._forwards:
            try:
                listener = await conn.forward_local_port("127.0.0.1", 0, host, port)
            except (OSError, asyncssh.Error) as exc:
                raise NodeUnreachable(
                    f"cannot forward a port to {self.node.name}:{port}: {_describe(exc)}",
                    hint="the node's sshd must allow TCP forwarding (AllowTcpForwarding yes)",
                    details={"node": self.node.name},
                ) from None
            self._forwards[(host, port)] = listener.get_port()
        return f"http://127.0.0.1:{self._forwards[(host, port)]}{parts.path}"

    def key_location(self) -> str:
        return f"{self.node.name}:~/{KEY_FILE}"

    async def api_key(self) -> str | None:
        if self._api_key is None:
            r = await self.run(["cat", KEY_FILE], check=False)
            self._api_key = r.stdout.strip() or None
        return self._api_key

    async def python(self) -> str:
        """The node's rbee venv interpreter; NotInstalled when absent."""
        venv_python = f"{await self.remote_path(self.node.install_dir)}/venv/bin/python"
        r = await self.run(["test", "-x", venv_python], check=False)
        if r.exit_status != 0:
            raise NotInstalled(
                f"rbee-fabric is not installed on {self.node.name}",
                hint=f"install it with: rbee nodes install {self.node.name}",
                details={"node": self.node.name},
            )
        return venv_python

    async def start_hive(self, idle_timeout: float | None = None) -> None:
        """Start rbee-hive detached on the node (it outlives this SSH session)."""
        python = await self.python()
        data = await self.remote_path(self.node.install_dir)
        argv = ["env", f"RBEE_DATA_DIR={data}", python, "-m", "rbee_fabric.hive",
                "--host", self.bind_host, "--port", str(self.node.hive_port)]  # fmt: skip
        if idle_timeout is not None:
            argv += ["--idle-timeout", str(idle_timeout)]
        await self.run_shell(hive_start_line(data, argv))
        self._api_key = None  # the hive creates the key if it was missing

    async def hive_start_failed(self) -> bool:
        return False  # the remote hive is detached; its health tells

    async def hive_pid(self) -> int | None:
        """The node's hive pid, verified on the node (start time, port: rbee_fabric.pidfile)."""
        out = await self._pidfile("hive", str(self.node.hive_port))
        return int(out) if out.isdigit() else None

    async def workers_alive(self, workers: list[tuple[int, str]]) -> list[int]:
        found = []
        for pid, wid in workers:
            if (await self._pidfile("worker", str(pid), wid)) == str(pid):
                found.append(pid)
        return found

    async def _pidfile(self, *args: str) -> str:
        try:
            python = await self.python()
        except NotInstalled:
            return ""
        data = await self.remote_path(self.node.install_dir)
        argv = ["env", f"RBEE_DATA_DIR={data}", python, "-m", "rbee_fabric.pidfile", *args]
        r = await self.run(argv, check=False)
        return r.stdout.strip() if r.exit_status == 0 else ""

    async def alive(self, pids: list[int]) -> list[int]:
        """Those pids that run one of our programs on the node."""
        if not pids:
            return []
        r = await self.run(["ps", "-o", "pid=,args=", "-p", ",".join(map(str, pids))], check=False)
        return parse_ps(r.stdout)

    async def signal_pids(self, pids: list[int], sig: int) -> None:
        ours = await self.alive(pids)
        if ours:
            name = signal.Signals(sig).name.removeprefix("SIG")
            await self.run(["kill", f"-{name}", *map(str, ours)], check=False)

    async def log_tail(self, lines: int = 20) -> list[str]:
        data = await self.remote_path(self.node.install_dir)
        r = await self.run(["tail", "-n", str(lines), f"{data}/logs/hive.log"], check=False)
        return r.stdout.splitlines()

    async def log_follow(self) -> AsyncIterator[str]:
        data = await self.remote_path(self.node.install_dir)
        conn = await self.connection()
        async with conn.create_process(shlex.join(["tail", "-n", "0", "-F", f"{data}/logs/hive.log"])) as proc:
            async for line in proc.stdout:
                yield str(line).rstrip("\n")


def remote_line(command: str) -> str:
    """What runs on the node for a command: under umask 077, so rbee's files are private."""
    return f"umask 077; {command}"


def hive_start_line(data: str, argv: list[str]) -> str:
    """The shell line that starts the hive detached, logging under data (all quoted).

    Only the daemon goes to the background, with every fd off the channel, so
    the SSH session ends at once and the hive outlives it.
    """
    log = f"{data}/logs/hive.log"
    return (
        f"mkdir -p {shlex.quote(data + '/logs')} || exit 1; "
        f"nohup setsid {shlex.join(argv)} </dev/null >>{shlex.quote(log)} 2>&1 &"
    )


def parse_ps(text: str) -> list[int]:
    """Pids from `ps -o pid=,args=` output whose command is one of ours."""
    pids = []
    for line in text.splitlines():
        parts = line.strip().split(None, 1)
        if len(parts) == 2 and parts[0].isdigit() and "rbee_fabric" in parts[1]:
            pids.append(int(parts[0]))
    return pids


def _describe(exc: BaseException) -> str:
    if isinstance(exc, socket.gaierror):
        return f"name does not resolve ({exc.strerror})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timed out"
    text = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
    return str(text).splitlines()[0][:200]


async def fetch_host_key(node: Node) -> asyncssh.SSHKey:
    """The host key a node presents (for `rbee nodes trust`)."""
    port = node.ssh_port or int(_options(node).port or 22)
    try:
        key = await asyncssh.get_server_host_key(node.hostname, port, config=ssh_config_files())
    except (OSError, asyncssh.Error) as exc:
        raise NodeUnreachable(
            f"cannot reach {node.name} over SSH ({node.hostname}:{port}): {_describe(exc)}",
            details={"node": node.name},
        ) from None
    if key is None:
        raise NodeUnreachable(f"{node.name} presented no host key")
    return key


def trust(node: Node, key: asyncssh.SSHKey) -> tuple[str, bool]:
    """Add node's key to known_hosts; (file, added). Refuses to replace a different key."""
    port = node.ssh_port or int(_options(node).port or 22)
    known = _known_keys(node, port)
    path = Path(known_hosts_files(node)[0]).expanduser()
    if any(k.public_data == key.public_data for k in known):
        return str(path), False
    if known:
        raise HostKeyChanged(
            f"{node.name} already has a different key in known_hosts; not replacing it",
            hint=f"remove the old key first: ssh-keygen -R '{_host_pattern(check_name(node), port)}' -f {path}",
            details={"node": node.name, "fingerprint": key.get_fingerprint()},
        )
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    line = f"{_host_pattern(check_name(node), port)} {key.export_public_key('openssh').decode().strip()}\n"
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line)
    return str(path), True
