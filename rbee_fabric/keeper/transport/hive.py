"""A node's rbee-hive, written once on top of a Connector (local or SSH alike).

Start it detached, find its pid (verified on the node by rbee_fabric.pidfile,
psutil: no /proc), tell whether pids still run our programs, signal them,
read its log and its API key, and map the addresses it reports to ones the
keeper can reach. The flows (hivectl, infer, preflight, the gateway) only
see this class, never an SSH object.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import AsyncIterator

from rbee_fabric import paths
from rbee_fabric.errors import NotInstalled
from rbee_fabric.keeper.inventory import Node
from rbee_fabric.keeper.transport.base import RUN_TIMEOUT_S, Connector, RemoteResult

KEY_FILE = "~/.config/rbee/api_key"


class NodeHive:
    """The hive of one node, reached through its connector."""

    def __init__(self, connector: Connector) -> None:
        self.connector = connector
        self._api_key: str | None = None
        self._started: int | None = None
        self._python: str | None = None

    @property
    def node(self) -> Node:
        return self.connector.node

    @property
    def can_start_hive(self) -> bool:
        return True

    # ------------------------------------------------------------ connector

    async def connect(self) -> None:
        """Open the connection now (errors mapped: unreachable, host key, auth)."""
        await self.connector.connect()

    async def run(
        self, argv: list[str], *, check: bool = True, timeout: float = RUN_TIMEOUT_S, stdin: str | None = None
    ) -> RemoteResult:
        return await self.connector.run(argv, check=check, timeout=timeout, stdin=stdin)

    async def remote_path(self, path: str) -> str:
        return await self.connector.expand(path)

    async def reach(self, url: str) -> str:
        return await self.connector.forward(url)

    async def close(self) -> None:
        await self.connector.close()

    # -------------------------------------------------------------- places

    async def data_dir(self) -> str:
        return await self.connector.expand(self.node.install_dir)

    async def python(self) -> str:
        """The interpreter that runs rbee on the node; NotInstalled when absent."""
        if self.node.local:
            return sys.executable  # this machine runs the keeper's own installation
        if self._python is not None:
            return self._python  # found once: the same path for the rest of the command
        venv_python = f"{await self.data_dir()}/venv/bin/python"
        if (await self.run(["test", "-x", venv_python], check=False)).exit_status != 0:
            raise NotInstalled(
                f"rbee-fabric is not installed on {self.node.name}",
                hint=f"install it with: rbee nodes install {self.node.name}",
                details={"node": self.node.name},
            )
        self._python = venv_python
        return venv_python

    async def hive_url(self) -> str:
        host = self.connector.bind_host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.node.hive_port}"

    def key_location(self) -> str:
        return str(paths.api_key_file()) if self.node.local else f"{self.node.name}:{KEY_FILE}"

    async def api_key(self) -> str | None:
        if self.node.local:
            return paths.ensure_api_key()
        if self._api_key is None:
            r = await self.run(["cat", await self.connector.expand(KEY_FILE)], check=False)
            self._api_key = r.stdout.strip() or None
        return self._api_key

    # ----------------------------------------------------------- lifecycle

    async def start_hive(self, idle_timeout: float | None = None, preload: str | None = None) -> None:
        """Start rbee-hive detached on the node (it outlives this keeper and its session);
        preload: the request about to be made (keeper/preloadhint.py)."""
        python = await self.python()
        data = await self.data_dir()
        argv = [python, "-m", "rbee_fabric.hive", "--host", self.connector.bind_host,
                "--port", str(self.node.hive_port)]  # fmt: skip
        if idle_timeout is not None:
            argv += ["--idle-timeout", str(idle_timeout)]
        if self.node.local:
            paths.ensure_api_key()
        # The hint goes in the environment, which a hive of another version ignores.
        env = {"RBEE_DATA_DIR": data, **({"RBEE_HIVE_PRELOAD": preload} if preload else {})}
        self._started = await self.connector.spawn(argv, log=f"{data}/logs/hive.log", env=env)
        self._api_key = None  # the hive creates the key if it was missing

    async def hive_start_failed(self) -> bool:
        """True when the hive this object started has already exited."""
        return self._started is not None and not await self.alive([self._started])

    async def _pidfile(self, *args: str) -> RemoteResult | None:
        try:
            python = await self.python()
        except NotInstalled:
            return None  # nothing of ours can run there
        data = await self.data_dir()
        return await self.run(["env", f"RBEE_DATA_DIR={data}", python, "-m", "rbee_fabric.pidfile", *args],
                              check=False)  # fmt: skip

    async def hive_pid(self) -> int | None:
        """The node's hive pid, verified on the node (start time, port: rbee_fabric.pidfile)."""
        r = await self._pidfile("hive", str(self.node.hive_port))
        out = r.stdout.strip() if r is not None and r.exit_status == 0 else ""
        return int(out) if out.isdigit() else None

    async def workers_alive(self, workers: list[tuple[int, str]]) -> list[int]:
        """Pids of (pid, worker id) pairs that still run that very worker."""
        found = []
        for pid, wid in workers:
            r = await self._pidfile("worker", str(pid), wid)
            if r is not None and r.stdout.strip() == str(pid):
                found.append(pid)
        return found

    async def alive(self, pids: list[int]) -> list[int]:
        """Those pids that run one of our programs on the node."""
        if not pids:
            return []
        r = await self._pidfile("alive", *map(str, pids))
        if r is None:
            return []
        if r.exit_status == 2:  # an older rbee on the node: ask ps instead
            r = await self.run(["ps", "-o", "pid=,args=", "-p", ",".join(map(str, pids))], check=False)
            return parse_ps(r.stdout)
        return [int(x) for x in r.stdout.split() if x.isdigit()]

    async def signal_pids(self, pids: list[int], sig: int) -> None:
        """Signal those of pids that still run our programs (a reused pid is left alone)."""
        if ours := await self.alive(pids):
            name = signal.Signals(sig).name.removeprefix("SIG")
            await self.run(["sh", "-c", 'kill -s "$0" "$@" 2>/dev/null; exit 0', name, *map(str, ours)], check=False)

    # ----------------------------------------------------------------- log

    async def log_tail(self, lines: int = 20) -> list[str]:
        log = f"{await self.data_dir()}/logs/hive.log"
        return (await self.run(["tail", "-n", str(lines), log], check=False)).stdout.splitlines()

    async def log_follow(self) -> AsyncIterator[str]:
        """New lines of the hive log as they are written (until interrupted)."""
        log = f"{await self.data_dir()}/logs/hive.log"
        async for line in self.connector.lines(["tail", "-n", "0", "-F", log]):
            yield line


async def wait_gone(t: NodeHive, pids: list[int], timeout: float) -> list[int]:
    """Poll until none of pids is alive; returns those still alive at the deadline."""
    deadline = time.monotonic() + timeout
    alive = await t.alive(pids)
    while alive and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        alive = await t.alive(alive)
    return alive


def parse_ps(text: str) -> list[int]:
    """Pids from `ps -o pid=,args=` output whose command is one of ours."""
    pids = []
    for line in text.splitlines():
        parts = line.strip().split(None, 1)
        if len(parts) == 2 and parts[0].isdigit() and "rbee_fabric" in parts[1]:
            pids.append(int(parts[0]))
    return pids
