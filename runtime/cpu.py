"""What the host CPU offers for int8 inference (Linux ``/proc/cpuinfo``; empty elsewhere)."""

from __future__ import annotations

import functools
from pathlib import Path

INT8_DOT_PRODUCT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")  # int8 products summed in 32 bits, no saturation


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The first CPU's feature flags (empty where ``/proc/cpuinfo`` is absent)."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return frozenset()
    for line in cpuinfo.read_text(errors="replace").splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def saturating_int8() -> bool:
    """True on an x86 CPU whose int8 kernels must pair products into int16 (AVX2 without VNNI), which
    OpenVINO does with saturation: full-range 8-bit weights then give wrong results there."""
    flags = cpu_flags()
    return "avx2" in flags and not any(f in flags for f in INT8_DOT_PRODUCT_FLAGS)
