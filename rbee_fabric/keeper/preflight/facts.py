"""The facts preflight reads on a node: each a command (argv) plus a pure parser.

A Fact runs through any Connector (SSH or local, the same argv), and its
parser (parsers.py) turns the RemoteResult into a typed value. The node
probe is a real module (probe.py) whose source goes to the node's Python on
stdin; the model's header is read there with the keeper's own ggufmeta.py.
"""

from __future__ import annotations

import json
import secrets
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Generic, TypeVar

from rbee_fabric.cpufeatures import CpuFeatures
from rbee_fabric.errors import RbeeError
from rbee_fabric.keeper.bootstrap import PROBE
from rbee_fabric.keeper.preflight.parsers import (
    ProbeFacts,
    PythonResult,
    parse_cpu,
    parse_disk,
    parse_gpus,
    parse_probe_output,
    parse_python,
    parse_ram,
    parse_uname,
)
from rbee_fabric.keeper.transport.base import Connector, RemoteResult
from rbee_fabric.resources import NVIDIA_SMI_QUERY
from rbee_fabric.schemas import DeviceInfo

T = TypeVar("T")
FACT_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class Fact(Generic[T]):
    """A command to run on the node and the pure parser of its result."""

    name: str
    argv: tuple[str, ...]
    parse: Callable[[RemoteResult], T]
    stdin: str | None = None

    async def read(self, c: Connector, timeout: float = FACT_TIMEOUT_S) -> T:
        r = await c.run(list(self.argv), check=False, timeout=timeout, stdin=self.stdin)
        return self.parse(r)


RAM: Fact[tuple[int, int] | None] = Fact("ram", ("cat", "/proc/meminfo"), parse_ram)
GPUS: Fact[list[DeviceInfo]] = Fact("gpus", tuple(NVIDIA_SMI_QUERY), parse_gpus)
UNAME: Fact[tuple[str, str]] = Fact("uname", ("uname", "-sm"), parse_uname)
# The first processor of /proc/cpuinfo (Linux), else the CPU sysctls (macOS).
CPU: Fact[CpuFeatures | None] = Fact("cpu", (
    "sh", "-c", "sed '/^$/q' /proc/cpuinfo 2>/dev/null || sysctl machdep.cpu hw.optional 2>/dev/null",
), parse_cpu)  # fmt: skip


def disk(path: str) -> Fact[int | None]:
    """Free MB where models go (the directory is created, as the hive would)."""
    return Fact("disk", ("sh", "-c", 'mkdir -p "$1" 2>/dev/null; df -Pk "$1"', "sh", path), parse_disk)


def python(interpreter: str) -> Fact[PythonResult]:
    """The node's Python version and venv module (the probe `rbee nodes install` uses)."""
    return Fact("python", (interpreter, "-c", PROBE), parse_python)


def probe_source() -> str:
    """The source of probe.py, as shipped to the node."""
    return resources.files(__package__ or "rbee_fabric.keeper.preflight").joinpath("probe.py").read_text("utf-8")


def gguf_reader_source() -> str:
    """The keeper's own GGUF header reader (stdlib only), run by the probe on the node."""
    return resources.files("rbee_fabric").joinpath("ggufmeta.py").read_text("utf-8")


@dataclass(frozen=True)
class ProbeRequest:
    host: str
    hive_port: int
    worker_ports: tuple[int, int]
    data: str
    model: str | None = None
    ctx: int = 2048
    alias: str | None = None

    def to_json(self) -> str:
        req: dict[str, object] = {"host": self.host, "hive_port": self.hive_port,
                                  "worker_ports": list(self.worker_ports), "data": self.data}  # fmt: skip
        if self.model:
            req.update(model=self.model, ctx=self.ctx, gguf_reader=gguf_reader_source())
        if self.alias:
            req["alias"] = self.alias
        return json.dumps(req)


def probe(interpreter: str, request: ProbeRequest) -> Fact[ProbeFacts]:
    """probe.py run by `interpreter` on the node (`python - REQUEST`, source on stdin)."""
    return Fact("probe", (interpreter, "-", request.to_json()), parse_probe_output, probe_source())


async def copy_file(c: Connector) -> RbeeError | None:
    """Whether files can be copied to the node (SFTP): a tiny file put, read back, removed.

    None when it worked, else the error the copy raised (the verdict explains it).
    """
    token = secrets.token_hex(8)
    remote = await c.expand(f"~/.rbee-check-{token}")  # the home on every connector
    with tempfile.TemporaryDirectory(prefix="rbee-check-") as tmp:
        local = Path(tmp) / "probe.txt"
        local.write_text(token)
        try:
            await c.put(local, remote)
        except RbeeError as exc:
            return exc
    try:
        back = await c.run(["cat", remote], check=False, timeout=FACT_TIMEOUT_S)
    finally:
        await c.run(["rm", "-f", remote], check=False, timeout=FACT_TIMEOUT_S)
    if back.stdout.strip() != token:
        return RbeeError(f"a file copied to the node did not arrive intact ({back.stderr.strip()[:80]})")
    return None


__all__ = ["CPU", "GPUS", "RAM", "UNAME", "Fact", "ProbeRequest", "copy_file", "disk", "probe",
           "probe_source", "python"]  # fmt: skip
