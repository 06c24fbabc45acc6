"""bf16 detection (alignment.precision) from CPU flags, as /proc/cpuinfo lists them on the machines this runs on."""

from __future__ import annotations

import torch

from alignment.precision import bf16_units, cpu_flags

CPU = torch.device("cpu")
INTEL_AMX = "processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"
AMD_AVX512_BF16 = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16\n"
WITHOUT = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_vnni\n"


def test_bf16_units_are_read_from_the_cpu_flags() -> None:
    assert bf16_units(CPU, INTEL_AMX) == (True, "CPU with amx_bf16, avx512_bf16")
    assert bf16_units(CPU, AMD_AVX512_BF16) == (True, "CPU with avx512_bf16")
    fast, why = bf16_units(CPU, WITHOUT)
    assert not fast and "emulated" in why
    assert cpu_flags("no flags here") == set()
    assert bf16_units(torch.device("meta"))[0] is False
