import pytest

from rbee_fabric import resources
from rbee_fabric.errors import BackendUnavailable, InsufficientRam, VramExhausted
from rbee_fabric.schemas import DeviceInfo, Resources

MEMINFO = """MemTotal:       24634236 kB
MemFree:        20000000 kB
MemAvailable:   23000000 kB
Buffers:          12345 kB
"""

NVIDIA_SMI = """0, NVIDIA GeForce RTX 3090, 24576, 23000
1, NVIDIA GeForce RTX 3060, 12288, 11000
"""


def test_parse_meminfo() -> None:
    assert resources.parse_meminfo(MEMINFO) == (24056, 22460)


def test_parse_nvidia_smi() -> None:
    devices = resources.parse_nvidia_smi(NVIDIA_SMI)
    assert [d.index for d in devices] == [0, 1]
    assert devices[1].name == "NVIDIA GeForce RTX 3060"
    assert devices[0].free_mb == 23000
    assert resources.parse_nvidia_smi("NVIDIA-SMI has failed\n") == []


def _res(**kw: object) -> Resources:
    base = dict(ram_total_mb=8000, ram_available_mb=4000, backends=["cpu"], llama_backend="cpu", disk_free_mb=1000)
    base.update(kw)
    return Resources.model_validate(base)


def test_auto_backend_never_hard_codes_cpu() -> None:
    gpu = _res(backends=["cpu", "cuda"], llama_backend="cuda",
               devices={"cuda": [DeviceInfo(index=0, name="x", total_mb=1, free_mb=1)]})
    assert resources.pick_backend("auto", gpu) == "cuda"
    # CUDA hardware but a CPU-only build of llama-cpp-python: auto is cpu, cuda is refused.
    cpu_build = _res(backends=["cpu", "cuda"], llama_backend="cpu")
    assert resources.pick_backend("auto", cpu_build) == "cpu"
    with pytest.raises(BackendUnavailable, match="built for cpu"):
        resources.pick_backend("cuda", cpu_build)


def test_missing_backend_lists_what_the_node_has() -> None:
    with pytest.raises(BackendUnavailable) as exc:
        resources.pick_backend("metal", _res())
    assert "cpu" in (exc.value.hint or "")


def test_fit_check() -> None:
    need = resources.required_mb(4 * 2**30, 256 * 2**20)
    assert need == int((4 * 2**30 * 1.2 + 256 * 2**20) / 2**20) + 1
    with pytest.raises(InsufficientRam) as exc:
        resources.check_fit(need, "cpu", 0, _res(), "big")
    assert exc.value.details == {"required_mb": need, "available_mb": 4000}
    resources.check_fit(100, "cpu", 0, _res(), "small")
    gpu = _res(backends=["cpu", "cuda"], devices={"cuda": [DeviceInfo(index=0, name="x", total_mb=8000, free_mb=500)]})
    with pytest.raises(VramExhausted):
        resources.check_fit(600, "cuda", 0, gpu, "m")
    with pytest.raises(BackendUnavailable):
        resources.check_fit(100, "cuda", 3, gpu, "m")
