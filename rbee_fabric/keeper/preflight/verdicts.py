"""From facts to pass/warn/fail, with the rules the other commands apply.

The fit, backend and version rules are the hive's and the keeper's own
(resources.check_fit / pick_backend / required_mb as the hive's scheduler
calls them, bootstrap's Python minimum, hivectl's version check): preflight
says what those commands would say, never a rule of its own.
"""

from __future__ import annotations

import time

from rbee_fabric import __version__
from rbee_fabric.cpufeatures import CpuFeatures
from rbee_fabric.errors import (
    BackendUnavailable,
    HostKeyChanged,
    HostKeyUnknown,
    InsufficientRam,
    NodeUnreachable,
    RbeeError,
    SshAuthFailed,
    VramExhausted,
)
from rbee_fabric.hive import safemode
from rbee_fabric.keeper.bootstrap import MIN_PYTHON
from rbee_fabric.keeper.inventory import Node
from rbee_fabric.keeper.preflight.parsers import ProbeFacts, PythonResult
from rbee_fabric.keeper.preflight.report import NodeReport
from rbee_fabric.resources import backends_of, check_fit, pick_backend, required_mb
from rbee_fabric.schemas import DeviceInfo, Resources

MIN_DISK_MB = 1024
WORKER_PORTS = (9300, 9399)
DEVICE = 0  # the device a spawn uses unless told otherwise


def connection(r: NodeReport, n: Node, exc: RbeeError | None) -> bool:
    """name, ssh, host key, auth from how connecting as ssh would (SSH config) went."""
    if isinstance(exc, NodeUnreachable) and "does not resolve" in exc.message:
        r.add("name", "fail", f"{n.hostname} does not resolve (nor through the SSH config)",
              f'set hostname = "IP" for {n.name} in the inventory, add a Host entry for it '
              "to ~/.ssh/config, or fix DNS")  # fmt: skip
        return False
    r.add("name", "pass", f"{n.hostname} reached as ssh reaches it (SSH config, ProxyJump honoured)")
    if isinstance(exc, HostKeyUnknown | HostKeyChanged):
        r.add("ssh", "pass", "reachable")
        r.add("host key", "fail", exc.message, exc.hint)
        return False
    if isinstance(exc, SshAuthFailed):
        r.add("ssh", "pass", "reachable")
        r.add("host key", "pass", "known")
        r.add("auth", "fail", exc.message, exc.hint)
        return False
    if exc is not None:
        r.add("ssh", "fail", exc.message, exc.hint)
        return False
    r.add("ssh", "pass", "reachable")
    r.add("host key", "pass", "known")
    r.add("auth", "pass", "accepted")
    return True


def file_copy(r: NodeReport, exc: RbeeError | None) -> None:
    """Whether `nodes install` and `models push` can copy files (SFTP)."""
    if exc is None:
        r.add("sftp", "pass", "files can be copied (SFTP)")
    else:
        r.add("sftp", "fail", exc.message, exc.hint)


def python(r: NodeReport, n: Node, py: PythonResult, interpreter: str) -> None:
    if py.facts is None:
        r.add("python", "fail", f"{interpreter} does not run: {py.error}",
              f"install Python 3.11+ and set python = \"...\" for {n.name} in the inventory")  # fmt: skip
        return
    version = ".".join(map(str, py.facts.version))
    if py.facts.version[:2] < MIN_PYTHON:
        r.add("python", "fail", f"{version} (3.11+ needed)", "install Python 3.11 or newer on the node")
    elif not py.facts.has_venv:
        r.add("python", "fail", f"{version} without the venv module",
              "sudo apt-get install python3-venv (Debian/Ubuntu)")  # fmt: skip
    else:
        r.add("python", "pass", f"{version} with venv")


def installed(r: NodeReport, n: Node, facts: ProbeFacts, has_venv: bool) -> bool:
    """rbee-fabric on the node, at the keeper's version (as `rbee nodes install` demands)."""
    if has_venv and facts.error is not None:
        r.add("rbee-fabric", "fail", f"its Python did not answer the check: {facts.error}",
              f"reinstall it: rbee nodes install {n.name} --upgrade")  # fmt: skip
        return False
    if not has_venv or facts.installed is None:
        r.add("rbee-fabric", "fail", "not installed", f"rbee nodes install {n.name}")
        return False
    if facts.installed != __version__:
        r.add("rbee-fabric", "fail", f"{facts.installed} installed, keeper is {__version__}",
              f"rbee nodes install {n.name} --upgrade")  # fmt: skip
    else:
        r.add("rbee-fabric", "pass", f"{facts.installed} (same as the keeper)")
    return True


def ports(r: NodeReport, n: Node, host: str, facts: ProbeFacts, hive_running: bool) -> None:
    if not hive_running:
        if facts.hive_port_free is False:
            r.add("hive port", "fail", f"{host}:{n.hive_port} is taken by another program",
                  f"free the port, or set another hive_port for {n.name} in the inventory")  # fmt: skip
        else:
            r.add("hive port", "pass", f"{host}:{n.hive_port} is free")
    lo, hi = WORKER_PORTS
    if facts.error is None and facts.worker_port is None:
        r.add("worker ports", "fail", f"no free port in {lo}-{hi}", "stop what holds those ports")
    else:
        r.add("worker ports", "pass", f"{lo}-{hi} has free ports")


def disk(r: NodeReport, where: str, free_mb: int | None) -> None:
    if free_mb is None:
        r.add("disk", "warn", f"could not read free space of {where}")
    elif free_mb < MIN_DISK_MB:
        r.add("disk", "fail", f"{free_mb} MB free in {where}", "free some space, or rbee models rm")
    else:
        r.add("disk", "pass", f"{free_mb / 1024:.1f} GB free in {where}")


def resources(
    ram: tuple[int, int] | None, gpus: list[DeviceInfo], uname: tuple[str, str], built: str | None, disk_mb: int | None
) -> Resources:
    """The node's resources as the hive would report them (unknown RAM counts as 0)."""
    total, avail = ram or (0, 0)
    return Resources(
        ram_total_mb=total, ram_available_mb=avail, backends=backends_of(bool(gpus), *uname),
        devices={"cuda": gpus} if gpus else {}, llama_backend=built or "cpu", disk_free_mb=disk_mb or 0,
    )  # fmt: skip


def ram(r: NodeReport, res: Resources) -> None:
    avail = res.ram_available_mb
    r.add("ram", "pass" if avail else "warn", f"{avail} MB available" if avail else "unknown (no /proc/meminfo)")


def backends(r: NodeReport, n: Node, res: Resources, built: str | None) -> None:
    """The node's backends, and whether llama-cpp-python's build can use them (pick_backend)."""
    gpus = res.devices.get("cuda", [])
    detail = ", ".join(res.backends)
    if gpus:
        detail += "; " + ", ".join(f"cuda:{g.index} {g.name} {g.free_mb} MB free" for g in gpus)
    if built:
        detail += "; llama-cpp-python missing" if built == "missing" else f"; llama-cpp-python built for {built}"
    if built == "missing":
        r.add("backends", "fail", detail, f"llama-cpp-python is missing: rbee nodes install {n.name} --upgrade")
        return
    if built and built != "cpu":
        try:
            pick_backend(built, res)
        except BackendUnavailable:
            r.add("backends", "warn", detail, f"llama-cpp-python was built for {built}, which this node lacks")
            return
    elif built == "cpu" and pick_backend("auto", res) == "cpu" and len(res.backends) > 1:
        r.add("backends", "warn", detail, "GPU present but llama-cpp-python is a CPU build: reinstall it with GPU support")
        return
    r.add("backends", "pass", detail)


def cpu(r: NodeReport, n: Node, feats: CpuFeatures | None, facts: ProbeFacts, data: str) -> None:
    """The CPU features llama.cpp's kernels depend on, and safe mode where it is on."""
    if feats is not None:
        detail = f"{feats.model or 'unknown model'}: {feats.summary()}"
        if feats.amx:
            detail += " (llama.cpp's AMX kernels crash on some of these CPUs; the hive then uses safe mode)"
        r.add("cpu", "pass" if feats.avx2 else "warn", detail,
              None if feats.avx2 else "no AVX2: llama.cpp runs, but slowly")  # fmt: skip
    rec = facts.safe_mode
    if n.safe_mode == "on":
        r.add("safe mode", "warn", f"forced on in the inventory: {safemode.COST}",
              f'set safe_mode = "auto" for {n.name} to use AMX and repacking where they work')  # fmt: skip
    elif rec is not None:
        at = rec.get("recorded_at", 0)
        when = time.strftime("%Y-%m-%d", time.localtime(float(at) if isinstance(at, int | float) else 0))
        r.add("safe mode", "warn",
              f"on since {when}: {rec.get('reason')} ({rec.get('model')}); {safemode.COST}",
              f"to try normal mode again (e.g. after upgrading llama-cpp-python), delete "
              f"{data}/{safemode.RECORD_FILE} on {n.name}")  # fmt: skip


def model(r: NodeReport, ref: str, facts: ProbeFacts, is_installed: bool, res: Resources) -> None:
    """Whether the model fits, by the hive's own rule: required_mb, pick_backend, check_fit."""
    if not is_installed:
        r.add("model", "skip", "rbee-fabric is not installed, cannot inspect models")
        return
    if facts.alias_error is not None:
        r.add("model", "fail", f"{ref} is not installed on the node",
              f"reinstall with the demo extra: rbee nodes install {r.node} --upgrade")  # fmt: skip
        return
    if facts.model is not None and facts.model.error is not None:
        r.add("model", "fail", f"{ref}: {facts.model.error}", "check the path on the node")
        return
    if facts.model is not None:
        size, kv = facts.model.size, facts.model.kv
    elif facts.alias_size is not None:
        size, kv = facts.alias_size, facts.alias_size // 10
    else:
        r.add("model", "warn", f"{ref} is not in the catalog; it will be downloaded (size unknown)")
        return
    need = required_mb(size, kv)
    backend = pick_backend("auto", res)
    where = "VRAM" if backend == "cuda" else "RAM"
    if where == "RAM" and not res.ram_available_mb:
        r.add("model", "warn", f"needs about {need} MB; free RAM unknown")
        return
    try:
        check_fit(need, backend, DEVICE, res, ref)
    except (InsufficientRam, VramExhausted, BackendUnavailable) as exc:
        r.add("model", "fail", exc.message, exc.hint)
        return
    gpus = {d.index: d.free_mb for d in res.devices.get("cuda", [])}
    avail = gpus[DEVICE] if where == "VRAM" else res.ram_available_mb
    r.add("model", "pass", f"{ref} fits: needs {need} MB of {where} ({backend}), {avail} MB available")


__all__ = ["backends", "connection", "cpu", "disk", "file_copy", "installed", "model", "ports",
           "python", "ram", "resources"]  # fmt: skip
