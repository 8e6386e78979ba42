"""What this CPU's integer kernels can take: whether ONNX Runtime's 8-bit convs may use the full weight range.

ONNX Runtime's x86 uint8 x int8 kernels without VNNI multiply with ``vpmaddubsw``, whose int16 pair sums saturate
for weight codes above 64 in magnitude (outputs off by up to 23 steps, measured on an AVX2 CPU), so 8-bit weights
stay in -63..63 there. With VNNI (``vpdpbusd``: AVX-512 VNNI or AVX-VNNI) the products accumulate in int32 and the
full -127..127 range is exact. Other architectures are not measured here: they get the reduced range.
"""

from __future__ import annotations

import platform
from pathlib import Path

VNNI_FLAGS = ("avx512_vnni", "avx_vnni")


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The CPU feature flags Linux reports (empty where there is no such file)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def has_vnni(flags: set[str] | None = None) -> bool:
    """Whether this is an x86 CPU with VNNI (so ONNX Runtime's 8-bit kernels take the full weight range)."""
    if flags is None:
        if platform.machine().lower() not in ("x86_64", "amd64"):
            return False
        flags = cpu_flags()
    return any(flag in flags for flag in VNNI_FLAGS)


def full_range_exact() -> bool | None:
    """Whether ONNX Runtime's 8-bit kernels here compute full-range (-127..127) weights exactly: True on x86 with
    VNNI, False on x86 without (they saturate), None elsewhere (not measured)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    return has_vnni()
