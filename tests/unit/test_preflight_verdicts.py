"""Verdicts say what the other commands would say: the hive's fit and backend rules, the keeper's versions."""

from __future__ import annotations

import pytest

from rbee_fabric import __version__
from rbee_fabric.errors import (
    HostKeyUnknown,
    InsufficientRam,
    NodeUnreachable,
    RemoteCommandFailed,
    SshAuthFailed,
)
from rbee_fabric.keeper.inventory import Node
from rbee_fabric.keeper.preflight import verdicts
from rbee_fabric.keeper.preflight.parsers import ModelFacts, ProbeFacts
from rbee_fabric.keeper.preflight.report import NodeReport
from rbee_fabric.resources import check_fit, required_mb
from rbee_fabric.schemas import DeviceInfo

NODE = Node(name="gpu-box", hostname="gpu-box.home.arpa", local=False)
GPU = DeviceInfo(index=0, name="RTX 3060", total_mb=12288, free_mb=8000)
GB = 2**30


def report() -> NodeReport:
    return NodeReport(NODE.name, NODE.reach)


def checks(r: NodeReport) -> dict[str, tuple[str, str, str | None]]:
    return {c.name: (c.status, c.detail, c.fix) for c in r.checks}


def test_a_model_too_big_for_ram_fails_with_the_hives_own_message() -> None:
    res = verdicts.resources((16000, 4000), [], ("Linux", "x86_64"), "cpu", 50000)
    r = report()
    verdicts.model(r, "file:/m/big.gguf", ProbeFacts(model=ModelFacts(8 * GB, GB)), True, res)
    status, detail, fix = checks(r)["model"]
    need = required_mb(8 * GB, GB)
    with pytest.raises(InsufficientRam) as hive_says:  # what the hive would answer a spawn with
        check_fit(need, "cpu", 0, res, "file:/m/big.gguf")
    assert detail == hive_says.value.message
    assert status == "fail" and f"needs {need} MB of RAM" in detail and "smaller quantization" in (fix or "")


def test_a_cuda_build_with_a_gpu_is_judged_against_vram() -> None:
    res = verdicts.resources((16000, 15000), [GPU], ("Linux", "x86_64"), "cuda", 50000)
    r = report()
    verdicts.model(r, "m", ProbeFacts(model=ModelFacts(10 * GB, 0)), True, res)  # fits RAM, not VRAM
    status, detail, _ = checks(r)["model"]
    assert status == "fail" and "VRAM" in detail and "device 0" in detail
    small = report()
    verdicts.model(small, "m", ProbeFacts(model=ModelFacts(GB, 0)), True, res)
    assert checks(small)["model"][0] == "pass" and "VRAM (cuda), 8000 MB" in checks(small)["model"][1]


def test_backends_follow_pick_backend() -> None:
    gpu_cpu_build = report()
    verdicts.backends(gpu_cpu_build, NODE, verdicts.resources(None, [GPU], ("Linux", "x86_64"), "cpu", 1), "cpu")
    assert checks(gpu_cpu_build)["backends"][0] == "warn"  # auto would pick cpu though a GPU is there
    cuda_no_gpu = report()
    verdicts.backends(cuda_no_gpu, NODE, verdicts.resources(None, [], ("Linux", "x86_64"), "cuda", 1), "cuda")
    assert checks(cuda_no_gpu)["backends"] == ("warn", "cpu; llama-cpp-python built for cuda",
                                               "llama-cpp-python was built for cuda, which this node lacks")  # fmt: skip
    mac = report()
    verdicts.backends(mac, NODE, verdicts.resources(None, [], ("Darwin", "arm64"), "metal", 1), "metal")
    assert checks(mac)["backends"] == ("pass", "cpu, metal; llama-cpp-python built for metal", None)
    missing = report()
    verdicts.backends(missing, NODE, verdicts.resources(None, [], ("Linux", "x86_64"), "missing", 1), "missing")
    assert checks(missing)["backends"][0] == "fail"


def test_installed_version_against_the_keepers() -> None:
    same, old, absent, broken = report(), report(), report(), report()
    verdicts.installed(same, NODE, ProbeFacts(installed=__version__), True)
    verdicts.installed(old, NODE, ProbeFacts(installed="0.0.1"), True)
    verdicts.installed(absent, NODE, ProbeFacts(installed="0.0.1"), False)  # no venv: not rbee's install
    verdicts.installed(broken, NODE, ProbeFacts(error="Segmentation fault"), True)
    assert checks(same)["rbee-fabric"][0] == "pass"
    assert checks(old)["rbee-fabric"] == ("fail", f"0.0.1 installed, keeper is {__version__}",
                                          "rbee nodes install gpu-box --upgrade")  # fmt: skip
    assert checks(absent)["rbee-fabric"] == ("fail", "not installed", "rbee nodes install gpu-box")
    assert "Segmentation fault" in checks(broken)["rbee-fabric"][1]


def test_connection_outcomes_name_the_failing_step() -> None:
    dns, key, auth, down, ok = report(), report(), report(), report(), report()
    assert not verdicts.connection(dns, NODE, NodeUnreachable("cannot reach gpu-box over SSH (x:22): name does not resolve (Name or service not known)"))
    assert list(checks(dns)) == ["name"] and checks(dns)["name"][0] == "fail"
    assert not verdicts.connection(key, NODE, HostKeyUnknown("unknown key SHA256:x", hint="rbee nodes trust gpu-box"))
    assert checks(key)["host key"] == ("fail", "unknown key SHA256:x", "rbee nodes trust gpu-box")
    assert not verdicts.connection(auth, NODE, SshAuthFailed("denied"))
    assert checks(auth)["auth"][0] == "fail" and checks(auth)["host key"][0] == "pass"
    assert not verdicts.connection(down, NODE, NodeUnreachable("connection refused", hint="is sshd running?"))
    assert checks(down)["name"][0] == "pass" and checks(down)["ssh"][0] == "fail"
    assert verdicts.connection(ok, NODE, None) and [c.status for c in ok.checks] == ["pass"] * 4


def test_file_copy_shows_the_connectors_reason_and_fix() -> None:
    r = report()
    verdicts.file_copy(r, RemoteCommandFailed("its sshd offers no SFTP", hint="Subsystem sftp internal-sftp"))
    assert checks(r)["sftp"] == ("fail", "its sshd offers no SFTP", "Subsystem sftp internal-sftp")
