"""What this machine's CPU can do, where it decides a recipe: x86 CPUs without VNNI multiply u8 x s8 with
VPMADDUBSW, whose int16 pair sums saturate when weights use all 8 bits; ORT's `reduce_range` and NNCF's
overflow fix keep weights to 7 bits for them."""

from __future__ import annotations

import functools
import platform
from collections.abc import Iterable

REPORTED = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "asimd", "asimddp")
INT8_DOT = ("avx512_vnni", "avx_vnni", "amx_int8")  # x86 int8 dot products that accumulate in int32


@functools.cache
def _cpuinfo() -> tuple[str, frozenset[str]]:
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return platform.processor() or platform.machine(), frozenset()
    name = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")),
                platform.processor() or platform.machine())
    return name, frozenset(text.split())


def name() -> str:
    return _cpuinfo()[0]


def flags() -> list[str]:
    """The ISA extensions that decide which int8 and bf16 kernels run, of those this CPU has."""
    have = _cpuinfo()[1]
    return [f for f in REPORTED if f in have]


def int8_saturates() -> bool:
    """True on an x86 CPU without int8 dot-product instructions (AVX2 without VNNI): 8-bit weights there can
    overflow the int16 intermediate sums, so int8 built for it keeps its weights to 7 bits."""
    return saturates(platform.machine(), _cpuinfo()[1])


def saturates(arch: str, flags: Iterable[str]) -> bool:
    """`int8_saturates` for any CPU: its architecture (`platform.machine()`) and flags, as a device's agent
    reports them. Unknown flags (none read) say nothing."""
    have = set(flags)
    return arch.lower() in ("x86_64", "amd64", "i686") and bool(have) and not have & set(INT8_DOT)
