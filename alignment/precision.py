"""Which precision a device computes fast: bf16 where it has bf16 units, fp32 elsewhere.

CUDA: `torch.cuda.is_bf16_supported()`. CPUs: the instruction sets that multiply bf16 natively, AMX (`amx_bf16`)
or AVX512-BF16 (`avx512_bf16`), read from /proc/cpuinfo's flags; without them a CPU's bf16 matmul is emulated and
runs at a few GFLOP/s (measured ~1 on this project's machine without them), far below fp32.
"""

from __future__ import annotations

from pathlib import Path

import torch

BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo); empty where they cannot be read."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def bf16_units(device: torch.device, cpuinfo: str | None = None) -> tuple[bool, str]:
    """(whether `device` multiplies bf16 natively, what says so)."""
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
        return (
            supported,
            f"{torch.cuda.get_device_name(device)}: bf16 {'supported' if supported else 'unsupported'}",
        )
    if device.type == "cpu":
        found = sorted(cpu_flags(cpuinfo) & set(BF16_CPU_FLAGS))
        if found:
            return True, f"CPU with {', '.join(found)}"
        return False, "CPU without amx_bf16 or avx512_bf16 (bf16 would be emulated)"
    return False, f"{device.type}: bf16 not assumed"


def fast_dtype(device: torch.device) -> torch.dtype:
    """bf16 where `device` has bf16 units, else fp32."""
    return torch.bfloat16 if bf16_units(device)[0] else torch.float32
