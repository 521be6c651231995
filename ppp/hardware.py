"""What the machine can do fast: the CPU's model and the instruction sets that decide whether bfloat16
runs natively (Intel AMX, AVX512-BF16, Arm's BF16) or is emulated and slower than float32 (AVX2-only
CPUs: 9x slower in a measured probe, shared/notes/attack-anchors.md), and on CUDA the GPU's support."""

from __future__ import annotations

import functools
import os
import platform
import re
from pathlib import Path

import torch

# Flags in /proc/cpuinfo under which bfloat16 matrix products and convolutions have native kernels.
NATIVE_BFLOAT16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_model() -> str:
    """This machine's CPU model as /proc/cpuinfo names it (arm64 kernels often give none: then the
    implementer and part numbers)."""
    info = _cpuinfo()
    for key in ("model name", "Model", "Hardware"):
        found = re.search(rf"^{key}\s*:\s*(.+)$", info, re.M)
        if found:
            return found.group(1).strip()
    parts = [re.search(rf"^CPU {key}\s*:\s*(\S+)", info, re.M) for key in ("implementer", "part")]
    if all(parts):
        return f"{platform.machine()} implementer {parts[0].group(1)} part {parts[1].group(1)}"
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    found = re.search(r"^(?:flags|Features)\s*:\s*(.+)$", _cpuinfo(), re.M)
    return set(found.group(1).split()) if found else set()


def cpu_features() -> dict[str, bool]:
    """The instruction sets that decide whether bfloat16 is fast here."""
    flags = cpu_flags()
    return {"avx512f": "avx512f" in flags, "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags,
            "arm_bf16": "bf16" in flags}


def host_description() -> str:
    features = ", ".join(name for name, present in cpu_features().items() if present) or "none of avx512f/bf16/amx"
    return f"{cpu_model()}; {os.cpu_count()} cores; {features}"


@functools.lru_cache(maxsize=None)
def native_bfloat16(device_type: str) -> bool:
    """Whether bfloat16 autocast is expected to be faster than float32 on this device type."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type == "cpu":
        return bool(cpu_flags() & set(NATIVE_BFLOAT16_FLAGS))
    return False


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """`auto` -> bfloat16 where the device computes it natively, else float32; other values unchanged."""
    if precision != "auto":
        return precision
    return "bfloat16" if native_bfloat16(torch.device(device).type) else "float32"
