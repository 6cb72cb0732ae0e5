"""The CPU-feature parsers, from captured /proc/cpuinfo and sysctl text."""

from __future__ import annotations

import pytest

from rbee_fabric.cpufeatures import parse_cpuinfo, parse_sysctl

# The machine these tests were written on (2-core AMD EPYC VM): AVX2, no AVX-512, no AMX.
EPYC = 'processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\nflags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology nonstop_tsc cpuid extd_apicid tsc_known_freq pni pclmulqdq ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt tsc_deadline_timer aes xsave avx f16c rdrand hypervisor lahf_lm cmp_legacy cr8_legacy abm sse4a misalignsse 3dnowprefetch osvw topoext ssbd ibrs ibpb stibp vmmcall fsgsbase tsc_adjust bmi1 avx2 smep bmi2 erms invpcid rdseed adx smap clflushopt clwb sha_ni xsaveopt xsavec xgetbv1 xsaves clzero xsaveerptr wbnoinvd arat umip pku ospke vaes vpclmulqdq rdpid fsrm\n'

# A Sapphire Rapids cloud VM, as in issue 10 (first processor; the second repeats it).
SAPPHIRE_RAPIDS = (
    "processor\t: 0\nvendor_id\t: GenuineIntel\n"
    "model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz\n"
    "flags\t\t: fpu vme de pse tsc msr sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2 "
    "avx512f avx512dq avx512ifma avx512cd avx512bw avx512vl avx512_bf16 avx512vbmi "
    "avx512_vbmi2 avx512_vnni avx512_bitalg avx512_vpopcntdq avx512_fp16 amx_bf16 amx_tile amx_int8\n"
    "\nprocessor\t: 1\nmodel name\t: something else\nflags\t\t: fpu\n"
)

INTEL_MAC = (
    "machdep.cpu.brand_string: Intel(R) Core(TM) i9-9880H CPU @ 2.30GHz\n"
    "machdep.cpu.features: FPU VME DE PSE TSC SSE SSE2 SSE3 AVX1.0 RDRAND F16C\n"
    "machdep.cpu.leaf7_features: RDWRFSGS TSC_THREAD_OFFSET SGX BMI1 AVX2 SMEP BMI2 ERMS\n"
    "hw.optional.avx1_0: 1\nhw.optional.avx2_0: 1\nhw.optional.avx512f: 0\n"
)

APPLE_SILICON = "machdep.cpu.brand_string: Apple M2\nhw.optional.arm.FEAT_FP16: 1\nhw.optional.neon: 1\n"


def test_epyc_has_avx2_only() -> None:
    cpu = parse_cpuinfo(EPYC)
    assert (cpu.model, cpu.avx2, cpu.avx512, cpu.amx) == ("AMD EPYC", True, False, False)
    assert cpu.summary() == "AVX2 yes, AVX-512 no, AMX no"


def test_sapphire_rapids_has_amx_from_the_first_processor() -> None:
    cpu = parse_cpuinfo(SAPPHIRE_RAPIDS)
    assert cpu.model.startswith("Intel(R) Xeon(R) Platinum 8481C")
    assert cpu.avx2 and cpu.avx512 and cpu.amx
    assert cpu.summary() == "AVX2 yes, AVX-512 yes, AMX yes (amx_tile, amx_int8, amx_bf16)"
    assert "avx512_vnni" in cpu.flags and "sse" not in cpu.flags


def test_empty_or_foreign_text_gives_no_features() -> None:
    cpu = parse_cpuinfo("")
    assert not (cpu.avx2 or cpu.avx512 or cpu.amx) and cpu.model == ""


def test_intel_mac_sysctl() -> None:
    cpu = parse_sysctl(INTEL_MAC)
    assert cpu.model.startswith("Intel(R) Core(TM) i9")
    assert cpu.avx2 and not cpu.avx512 and not cpu.amx


def test_apple_silicon_has_none_of_them() -> None:
    cpu = parse_sysctl(APPLE_SILICON)
    assert cpu.model == "Apple M2" and cpu.summary() == "AVX2 no, AVX-512 no, AMX no"


def test_the_warm_up_runs_only_where_a_kernel_may_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    from rbee_fabric import cpufeatures
    from rbee_fabric.worker.engine import needs_warm_up

    for text, amx in ((EPYC, False), (SAPPHIRE_RAPIDS, True)):
        monkeypatch.setattr(cpufeatures, "detect", lambda t=text: parse_cpuinfo(t))
        assert needs_warm_up("cpu", safe_mode=False) is amx
        assert needs_warm_up("cpu", safe_mode=True) is False  # extra buffer types off: no AMX
        assert needs_warm_up("cuda", safe_mode=False) is True  # GPU backends keep it
    monkeypatch.setattr(cpufeatures, "detect", lambda: None)
    assert needs_warm_up("cpu", safe_mode=False) is True  # unknown CPU: prove it
