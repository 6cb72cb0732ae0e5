"""Preflight's facts are a command plus a pure parser: the parsers, from captured output."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rbee_fabric.hive.safemode import make_build_key
from rbee_fabric.keeper.preflight.parsers import (
    parse_cpu,
    parse_df,
    parse_disk,
    parse_gpus,
    parse_probe_output,
    parse_python,
    parse_ram,
    parse_uname,
    parse_version,
)
from rbee_fabric.keeper.transport.base import RemoteResult


def ok(stdout: str, status: int = 0, stderr: str = "") -> RemoteResult:
    return RemoteResult("captured", status, stdout, stderr)


# Captured on the development machine (Debian 12 VM) and a lab node.
MEMINFO = "MemTotal:        8131452 kB\nMemFree:          421920 kB\nMemAvailable:    5969260 kB\nBuffers:          183420 kB\n"
DF = """Filesystem     1024-blocks      Used Available Capacity Mounted on
/dev/vda         263174212  23264356 226429868      10% /
"""
DF_WRAPPED_NAME = """Filesystem                                  1024-blocks  Used Available Capacity Mounted on
tmpfs                                             1024       0      1024       0% /mnt/small
"""
NVIDIA_SMI = "0, NVIDIA GeForce RTX 3090, 24576, 23890\n1, NVIDIA GeForce RTX 3060, 12288, 11950\n"
CPUINFO = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse sse2 avx avx2 fma\n\n"
SYSCTL = "machdep.cpu.brand_string: Apple M2\nhw.optional.arm.FEAT_FP16: 1\nhw.optional.neon: 1\n"
# The probe (probe.py) on a lab node with rbee-fabric installed, no llama-cpp-python.
PROBE_LAB = (
    '{"python": [3, 11, 2], "ports": {"hive_free": true, "worker_free": 9300}, '
    '"rbee": {"found": true, "init": "\\"\\"\\"rbee-fabric.\\"\\"\\"\\n\\n__version__ = \\"0.1.0\\"\\n"}, '
    '"llama": {"found": false}, "safe_mode": null}\n'
)


def test_df_reads_the_available_column() -> None:
    assert parse_df(DF) == 226429868 // 1024
    assert parse_df(DF_WRAPPED_NAME) == 1
    assert parse_df("df: /nope: No such file or directory\n") is None
    assert parse_disk(ok(DF)) == 226429868 // 1024


def test_ram_is_total_and_available_or_none_without_meminfo() -> None:
    assert parse_ram(ok(MEMINFO)) == (8131452 // 1024, 5969260 // 1024)
    assert parse_ram(ok("", 1, "cat: /proc/meminfo: No such file or directory")) is None  # macOS


def test_gpus_from_nvidia_smi_and_none_where_it_is_missing() -> None:
    gpus = parse_gpus(ok(NVIDIA_SMI))
    assert [(g.index, g.name, g.free_mb) for g in gpus] == [(0, "NVIDIA GeForce RTX 3090", 23890),
                                                            (1, "NVIDIA GeForce RTX 3060", 11950)]  # fmt: skip
    assert parse_gpus(ok("", 127, "sh: 1: nvidia-smi: not found")) == []
    assert parse_gpus(ok("NVIDIA-SMI has failed because it couldn't communicate with the driver", 9)) == []


def test_uname_and_cpu() -> None:
    assert parse_uname(ok("Linux x86_64\n")) == ("Linux", "x86_64")
    assert parse_uname(ok("")) == ("", "")
    linux = parse_cpu(ok(CPUINFO))
    assert linux is not None and linux.avx2 and linux.model == "AMD EPYC"
    mac = parse_cpu(ok(SYSCTL))
    assert mac is not None and mac.model == "Apple M2" and not mac.avx2
    assert parse_cpu(ok("", 1)) is None


def test_python_facts_or_why_not() -> None:
    good = parse_python(ok("3.11.2 Linux x86_64 venv,ensurepip\n"))
    assert good.facts is not None and good.facts.version == (3, 11, 2) and good.facts.has_venv
    missing = parse_python(ok("", 127, "sh: 1: /opt/python3: not found\n"))
    assert missing.facts is None and "not found" in missing.error
    assert parse_python(ok("garbage")).facts is None


def test_version_is_read_from_the_init_text() -> None:
    assert parse_version('"""doc."""\n\n__version__ = "0.1.0"\n') == "0.1.0"
    assert parse_version("__version__: str = '1.2.3'\n") == "1.2.3"
    assert parse_version("x = 1\n") is None and parse_version(None) is None


def test_probe_output_on_an_installed_node_without_llama() -> None:
    facts = parse_probe_output(ok(PROBE_LAB))
    assert facts.error is None and facts.installed == "0.1.0"
    assert facts.hive_port_free is True and facts.worker_port == 9300
    assert facts.llama_backend == "missing" and facts.safe_mode is None and facts.model is None


def test_probe_output_backend_and_safe_mode_use_the_hives_rules() -> None:
    libs = [["libggml-base.so", 100, True], ["libggml-cuda.so", 2000, True], ["libllama.so.0", 0, False]]
    key = make_build_key("0.3.16", "cuda", [("libggml-base.so", 100), ("libggml-cuda.so", 2000)])
    record = {"signal": "SIGSEGV", "reason": "the engine crashed", "model": "m", "recorded_at": 1.0}
    other = {"signal": "SIGILL", "reason": "another build", "model": "m", "recorded_at": 1.0}
    store = json.dumps({"version": 1, "builds": {key: record, "llama-cpp-python 0.2 cpu x": other}})
    raw = {"ports": {"hive_free": False, "worker_free": None},
           "rbee": {"found": True, "init": '__version__ = "0.0.1"\n'},
           "llama": {"found": True, "version": "0.3.16", "libs": libs}, "safe_mode": store,
           "model": {"size": 500000, "kv": 4096}, "alias": {"error": "No module named 'gemma'"}}  # fmt: skip
    facts = parse_probe_output(ok(json.dumps(raw) + "\n"))
    assert facts.llama_backend == "cuda" and facts.build_key == key
    assert facts.safe_mode == record  # only the record of this very build
    assert facts.hive_port_free is False and facts.worker_port is None
    assert facts.installed == "0.0.1"
    assert facts.model is not None and (facts.model.size, facts.model.kv) == (500000, 4096)
    assert facts.alias_size is None and facts.alias_error == "No module named 'gemma'"


def test_probe_that_did_not_answer_says_why() -> None:
    facts = parse_probe_output(ok("", 1, "Traceback (most recent call last):\n  ...\nSyntaxError: invalid syntax\n"))
    assert facts.error == "SyntaxError: invalid syntax" and facts.installed is None
    assert parse_probe_output(ok("[1, 2]\n")).error is not None
    model_error = parse_probe_output(ok('{"model": {"error": "not a GGUF file"}}'))
    assert model_error.model is not None and model_error.model.error == "not a GGUF file"


SCALAR = st.none() | st.booleans() | st.integers() | st.text(max_size=8)
JSON = SCALAR | st.lists(SCALAR, max_size=3) | st.lists(st.lists(SCALAR, max_size=3), max_size=2)
KEYS = st.sampled_from(["ports", "rbee", "llama", "safe_mode", "model", "alias", "libs", "found", "init",
                        "size", "kv", "error", "hive_free", "worker_free", "version"])  # fmt: skip


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(KEYS, JSON | st.dictionaries(KEYS, JSON, max_size=4), max_size=6))
def test_probe_output_of_any_shape_never_raises(raw: dict[str, object]) -> None:
    facts = parse_probe_output(ok(json.dumps(raw)))
    assert facts.installed is None or isinstance(facts.installed, str)


@settings(deadline=None)
@given(st.text(max_size=300))
def test_text_parsers_never_raise(text: str) -> None:
    for parse in (parse_disk, parse_ram, parse_gpus, parse_uname, parse_cpu, parse_python, parse_probe_output):
        parse(ok(text))
