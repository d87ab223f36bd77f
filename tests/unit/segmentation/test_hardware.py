"""The CPU's fast paths are read from the machine, never assumed."""

from __future__ import annotations

from segmentation.hardware import cpu_info, parse_cpuinfo

EPYC_BF16 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9B14
flags\t\t: fpu sse sse2 avx avx2 fma avx512f avx512bw avx512_bf16 avx512_vnni
processor\t: 1
model name\t: ignored
"""
EPYC_AVX2 = "model name\t: AMD EPYC 7B12\nflags\t\t: fpu sse sse2 avx avx2 fma\n"
XEON_AMX = "model name\t: Intel(R) Xeon(R) Platinum 8481C\nflags\t\t: avx2 avx512f amx_tile amx_bf16 amx_int8\n"


def test_flags_decide_bf16_vnni_and_the_widest_isa() -> None:
    bf16 = parse_cpuinfo(EPYC_BF16)
    assert bf16.name == "AMD EPYC 9B14" and bf16.bf16 and bf16.vnni and bf16.isa == "avx512"
    assert bf16.describe() == "AMD EPYC 9B14 (avx512, bf16, vnni)"
    avx2 = parse_cpuinfo(EPYC_AVX2)
    assert not avx2.bf16 and not avx2.vnni and avx2.isa == "avx2" and avx2.describe() == "AMD EPYC 7B12 (avx2)"
    amx = parse_cpuinfo(XEON_AMX)
    assert amx.bf16 and amx.vnni and amx.isa == "amx"


def test_an_unreadable_cpuinfo_turns_every_fast_path_off() -> None:
    none = parse_cpuinfo("")
    assert not none.bf16 and not none.vnni and none.isa == "baseline" and none.name
    assert isinstance(cpu_info().flags, frozenset)  # this machine's, whatever it is
