"""What a node has: RAM, GPUs, backends, disk; and whether a model fits.

Each remote-able fact is a command plus a pure parser of its output, so the
parsers are tested from captured output.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

from rbee_fabric.errors import BackendUnavailable, InsufficientRam, VramExhausted
from rbee_fabric.schemas import DeviceInfo, Resources

NVIDIA_SMI_QUERY = [
    "nvidia-smi",
    "--query-gpu=index,name,memory.total,memory.free",
    "--format=csv,noheader,nounits",
]


def parse_meminfo(text: str) -> tuple[int, int]:
    """(total MB, available MB) from /proc/meminfo."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[key.strip()] = int(parts[0])
    total = values.get("MemTotal", 0)
    avail = values.get("MemAvailable", values.get("MemFree", 0))
    return total // 1024, avail // 1024


def parse_nvidia_smi(text: str) -> list[DeviceInfo]:
    """Devices from `nvidia-smi --query-gpu=index,name,memory.total,memory.free`."""
    devices = []
    for line in text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 4:
            continue
        try:
            devices.append(
                DeviceInfo(
                    index=int(parts[0]), name=parts[1],
                    total_mb=int(float(parts[2])), free_mb=int(float(parts[3])),
                )
            )
        except ValueError:
            continue
    return devices


def ram_mb() -> tuple[int, int]:
    try:
        return parse_meminfo(Path("/proc/meminfo").read_text())
    except OSError:
        import psutil  # macOS and others

        vm = psutil.virtual_memory()
        return vm.total // 2**20, vm.available // 2**20


def cuda_devices() -> list[DeviceInfo]:
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(
            NVIDIA_SMI_QUERY, capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return parse_nvidia_smi(out)


def backends_of(cuda: bool, system: str, machine: str) -> list[str]:
    """The backends a node offers: cpu, cuda where nvidia-smi lists devices, metal on Apple silicon."""
    return ["cpu"] + (["cuda"] if cuda else []) + (["metal"] if (system, machine) == ("Darwin", "arm64") else [])


def disk_free_mb(path: Path) -> int:
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free // 2**20


def gather(models_dir: Path, llama_backend: str) -> Resources:
    total, avail = ram_mb()
    devices: dict[str, list[DeviceInfo]] = {}
    if cuda := cuda_devices():
        devices["cuda"] = cuda
    backends = backends_of(bool(cuda), platform.system(), platform.machine())
    return Resources(
        ram_total_mb=total,
        ram_available_mb=avail,
        backends=backends,
        devices=devices,
        llama_backend=llama_backend,
        disk_free_mb=disk_free_mb(models_dir),
    )


def pick_backend(requested: str, res: Resources) -> str:
    """Resolve `auto` and refuse a backend this node lacks."""
    if requested == "auto":
        for candidate in ("cuda", "metal"):
            if candidate in res.backends and res.llama_backend == candidate:
                return candidate
        return "cpu"
    if requested not in res.backends:
        raise BackendUnavailable(
            f"backend {requested!r} is not available on this node",
            hint=f"this node has: {', '.join(res.backends)}; use --backend "
            + " or --backend ".join(res.backends),
            details={"requested": requested, "available": res.backends},
        )
    if requested != "cpu" and res.llama_backend != requested:
        raise BackendUnavailable(
            f"llama-cpp-python on this node was built for {res.llama_backend}, not {requested}",
            hint=f"reinstall llama-cpp-python with {requested} support, or use --backend cpu",
            details={"requested": requested, "built_with": res.llama_backend},
        )
    return requested


def required_mb(size_bytes: int, kv_cache_bytes: int) -> int:
    """Model size times 1.2 plus the KV cache of the context, in MB."""
    return int((size_bytes * 1.2 + kv_cache_bytes) / 2**20) + 1


def check_fit(required: int, backend: str, device: int, res: Resources, model: str) -> None:
    """Raise INSUFFICIENT_RAM or VRAM_EXHAUSTED when the model will not fit."""
    if backend == "cuda":
        gpus = {d.index: d for d in res.devices.get("cuda", [])}
        if device not in gpus:
            raise BackendUnavailable(
                f"no CUDA device {device} on this node",
                hint=f"devices: {sorted(gpus) or 'none'}",
                details={"device": device},
            )
        free = gpus[device].free_mb
        if required > free:
            raise VramExhausted(
                f"{model} needs {required} MB of VRAM, device {device} has {free} MB free",
                details={"required_mb": required, "available_mb": free, "device": device},
            )
        return
    if required > res.ram_available_mb:
        raise InsufficientRam(
            f"{model} needs {required} MB of RAM, {res.ram_available_mb} MB available",
            details={"required_mb": required, "available_mb": res.ram_available_mb},
        )


def llama_backend_probe() -> str:
    """The backend llama-cpp-python was built with (read from its files, not imported)."""
    from rbee_fabric.llamabuild import llama_build_backend

    return llama_build_backend()
