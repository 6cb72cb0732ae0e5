"""Pure parsers of what each preflight fact's command printed (tested from captured output).

Each takes the command's RemoteResult (exit status and output) and returns a
typed value; none does I/O. The probe's JSON is judged with the rules the
hive itself uses (llamabuild, safemode).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from rbee_fabric.cpufeatures import CpuFeatures, parse_cpuinfo, parse_sysctl
from rbee_fabric.hive.safemode import make_build_key, parse_records
from rbee_fabric.keeper.bootstrap import PythonFacts, parse_probe
from rbee_fabric.keeper.transport.base import RemoteResult
from rbee_fabric.llamabuild import backend_from_libs
from rbee_fabric.resources import parse_meminfo, parse_nvidia_smi
from rbee_fabric.schemas import DeviceInfo

_VERSION = re.compile(r"""^__version__\s*(?::\s*str\s*)?=\s*["']([^"']+)["']""", re.MULTILINE)


@dataclass(frozen=True)
class PythonResult:
    """The node's Python (bootstrap's probe), or why it did not run."""

    facts: PythonFacts | None
    error: str = ""


@dataclass(frozen=True)
class ModelFacts:
    size: int = 0
    kv: int = 0
    error: str | None = None


@dataclass(frozen=True)
class ProbeFacts:
    """What the node probe (probe.py) found, parsed; `error` when it did not answer."""

    error: str | None = None
    hive_port_free: bool | None = None
    worker_port: int | None = None
    installed: str | None = None  # rbee-fabric's version, None when absent
    llama_backend: str | None = None  # cuda, metal, cpu, ...; "missing" without llama-cpp-python
    build_key: str | None = None
    safe_mode: dict[str, object] | None = None  # the record for this node's build
    model: ModelFacts | None = None
    alias_size: int | None = None
    alias_error: str | None = None


def parse_python(r: RemoteResult) -> PythonResult:
    if r.exit_status != 0:
        return PythonResult(None, (r.stderr or r.stdout).strip()[:120] or f"exit status {r.exit_status}")
    try:
        return PythonResult(parse_probe(r.stdout))
    except ValueError as exc:
        return PythonResult(None, str(exc)[:120])


def parse_df(text: str) -> int | None:
    """Free MB from `df -Pk PATH` (POSIX format)."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if len(lines) < 2:
        return None
    parts = lines[-1].split()
    try:
        return int(parts[3]) // 1024
    except (IndexError, ValueError):
        return None


def parse_disk(r: RemoteResult) -> int | None:
    return parse_df(r.stdout)


def parse_ram(r: RemoteResult) -> tuple[int, int] | None:
    """(total MB, available MB) from /proc/meminfo; None where there is none (macOS)."""
    total, avail = parse_meminfo(r.stdout) if r.exit_status == 0 else (0, 0)
    return (total, avail) if avail else None


def parse_gpus(r: RemoteResult) -> list[DeviceInfo]:
    """CUDA devices from nvidia-smi; none when it is missing or fails."""
    return parse_nvidia_smi(r.stdout) if r.exit_status == 0 else []


def parse_uname(r: RemoteResult) -> tuple[str, str]:
    """(system, machine) from `uname -sm`."""
    parts = r.stdout.split()
    return (parts[0], parts[1]) if len(parts) >= 2 else ("", "")


def parse_cpu(r: RemoteResult) -> CpuFeatures | None:
    """The first processor of /proc/cpuinfo, or macOS's CPU sysctls; None when neither came."""
    text = r.stdout
    if not text.strip():
        return None
    return parse_sysctl(text) if "machdep.cpu" in text or "hw.optional" in text else parse_cpuinfo(text)


def parse_version(init_text: str | None) -> str | None:
    """`__version__` from a package's `__init__.py` text."""
    m = _VERSION.search(init_text or "")
    return m.group(1) if m else None


def parse_probe_output(r: RemoteResult) -> ProbeFacts:
    """The probe's JSON line, judged with the hive's rules for backend and build key."""
    try:
        raw = json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raw = None
    if not isinstance(raw, dict):
        why = (r.stderr.strip().splitlines() or [f"exit status {r.exit_status}, no output"])[-1]
        return ProbeFacts(error=why[:200])
    try:
        return _probe_facts(raw)
    except (TypeError, ValueError, KeyError) as exc:  # not what probe.py prints
        return ProbeFacts(error=f"unexpected probe output ({type(exc).__name__}: {exc})"[:200])


def _probe_facts(raw: dict[str, Any]) -> ProbeFacts:
    ports = _dict(raw.get("ports"))
    rbee = _dict(raw.get("rbee"))
    installed = parse_version(rbee.get("init")) if rbee.get("found") else None
    if rbee.get("found") and installed is None:
        installed = "unknown"
    llama = _dict(raw.get("llama"))
    backend = key = None
    record = None
    if llama.get("found"):
        libs = [lib for lib in llama.get("libs") or [] if isinstance(lib, list) and len(lib) == 3]
        backend = backend_from_libs(str(lib[0]) for lib in libs)
        files = [(str(name), int(size)) for name, size, regular in libs if regular]
        key = make_build_key(str(llama.get("version") or "missing"), backend, files)
        text = raw.get("safe_mode")
        record = parse_records(text).get(key) if isinstance(text, str) else None
    elif installed is not None:
        backend = "missing"
    model = None
    if isinstance(m := raw.get("model"), dict):
        model = ModelFacts(error=str(m["error"])) if "error" in m else ModelFacts(int(m["size"]), int(m["kv"]))
    alias = _dict(raw.get("alias"))
    worker = ports.get("worker_free")
    hive_free = ports.get("hive_free")
    return ProbeFacts(
        hive_port_free=hive_free if isinstance(hive_free, bool) else None,
        worker_port=worker if isinstance(worker, int) else None,
        installed=installed,
        llama_backend=backend,
        build_key=key,
        safe_mode=record if isinstance(record, dict) else None,
        model=model,
        alias_size=int(alias["size"]) if "size" in alias else None,
        alias_error=str(alias["error"]) if "error" in alias else None,
    )


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


__all__ = [
    "ModelFacts", "ProbeFacts", "PythonResult", "parse_cpu", "parse_df", "parse_disk",
    "parse_gpus", "parse_probe_output", "parse_python", "parse_ram", "parse_uname", "parse_version",
]  # fmt: skip
