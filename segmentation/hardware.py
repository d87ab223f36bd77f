"""What the CPU this process runs on can do fast, read at run time (never assumed).

The machines LayerWatch runs on differ (an Intel Xeon with AMX, an AMD EPYC with AVX-512 BF16 and VNNI,
one with AVX2 only), and the fast paths differ with them: bf16 arithmetic is about 2x faster than fp32
where the CPU has AVX-512 BF16 or AMX and 30x slower where it has neither (emulated). Torch-free: the
monitor's engines read it too.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CpuInfo", "cpu_info"]

_CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class CpuInfo:
    """The CPU's name and the instruction-set flags that choose a fast path."""

    name: str
    flags: frozenset[str]

    @property
    def bf16(self) -> bool:
        """Native bf16 arithmetic (AVX-512 BF16 or AMX-BF16)."""
        return bool({"avx512_bf16", "amx_bf16"} & self.flags)

    @property
    def vnni(self) -> bool:
        """Native int8 dot products (AVX-512 VNNI, AVX-VNNI or AMX-INT8)."""
        return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & self.flags)

    @property
    def isa(self) -> str:
        """The widest vector instruction set: 'amx', 'avx512', 'avx2' or 'baseline'."""
        if "amx_tile" in self.flags:
            return "amx"
        if "avx512f" in self.flags:
            return "avx512"
        if "avx2" in self.flags:
            return "avx2"
        return "baseline"

    def describe(self) -> str:
        """One line for a benchmark or a log: name, widest ISA, bf16 and VNNI."""
        extra = [x for x, on in (("bf16", self.bf16), ("vnni", self.vnni)) if on]
        return f"{self.name} ({self.isa}{', ' + ', '.join(extra) if extra else ''})"


def parse_cpuinfo(text: str) -> CpuInfo:
    """A :class:`CpuInfo` from the text of /proc/cpuinfo (the first processor's lines)."""
    name, flags = "", frozenset[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not name:
            name = value.strip()
        elif key == "flags" and not flags:
            flags = frozenset(value.split())
        if name and flags:
            break
    return CpuInfo(name or platform.processor() or "unknown CPU", flags)


@functools.cache
def cpu_info() -> CpuInfo:
    """This machine's CPU (read once; an unreadable /proc/cpuinfo gives no flags: every fast path off)."""
    try:
        text = _CPUINFO.read_text(errors="replace")
    except OSError:
        text = ""
    return parse_cpuinfo(text)
