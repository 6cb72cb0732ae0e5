"""The CPU features that decide which llama.cpp kernels run: AVX2, AVX-512, AMX.

Dependency-free on purpose: `rbee nodes check` runs it on every node in a
fresh interpreter. A fact is a command's output plus a pure parser, so the
parsers are tested from captured /proc/cpuinfo and sysctl text.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field

# What llama.cpp's CPU backend cares about, in the order people read them.
_AVX512_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16")
_AMX_FLAGS = ("amx_tile", "amx_int8", "amx_bf16")


@dataclass
class CpuFeatures:
    """What one CPU offers; `flags` keeps the raw names that matter."""

    model: str = ""
    avx2: bool = False
    avx512: bool = False
    amx: bool = False
    flags: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for a person: `AVX2 yes, AVX-512 no, AMX yes (amx_int8 ...)`."""
        amx = [f for f in self.flags if f.startswith("amx")]
        parts = [
            f"AVX2 {'yes' if self.avx2 else 'no'}",
            f"AVX-512 {'yes' if self.avx512 else 'no'}",
            f"AMX {'yes (' + ', '.join(amx) + ')' if self.amx else 'no'}",
        ]
        return ", ".join(parts)


def _from_flags(model: str, flags: set[str]) -> CpuFeatures:
    keep = [f for f in ("avx2", *_AVX512_FLAGS, *_AMX_FLAGS) if f in flags]
    return CpuFeatures(
        model=model,
        avx2="avx2" in flags,
        avx512="avx512f" in flags,
        amx=any(f in flags for f in _AMX_FLAGS),
        flags=keep,
    )


def parse_cpuinfo(text: str) -> CpuFeatures:
    """Features from Linux /proc/cpuinfo (the first processor's `flags` line)."""
    model, flags = "", ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = value
    return _from_flags(model, set(flags.lower().split()))


def parse_sysctl(text: str) -> CpuFeatures:
    """Features from macOS `sysctl -a` style lines (machdep.cpu.* and hw.optional.*)."""
    model = ""
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "machdep.cpu.brand_string":
            model = value
        elif key in ("machdep.cpu.features", "machdep.cpu.leaf7_features"):
            flags.update(_mac_name(f) for f in value.split())
        elif key.startswith("hw.optional.") and value == "1":
            flags.add(_mac_name(key.removeprefix("hw.optional.")))
    return _from_flags(model, flags)


def _mac_name(name: str) -> str:
    """macOS spells `AVX512VNNI`, `avx2_0`; Linux spells `avx512_vnni`, `avx2`."""
    name = name.lower().removesuffix("_0")
    return {"avx512vnni": "avx512_vnni", "avx512bf16": "avx512_bf16"}.get(name, name)


def detect() -> CpuFeatures | None:
    """This machine's features; None where they cannot be read."""
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
                return parse_cpuinfo(fh.read())
        except OSError:
            return None
    if sys.platform == "darwin":
        try:
            out = subprocess.run(
                ["sysctl", "machdep.cpu", "hw.optional"], capture_output=True, text=True, timeout=5
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return None
        return parse_sysctl(out)
    return None
