"""bf16 detection (alignment.precision) from CPU flags, as /proc/cpuinfo lists them on the machines this runs on."""

from __future__ import annotations

import pytest
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


def test_model_dtype_auto_trains_fp32_weights_under_bf16_autocast_only_where_the_cpu_multiplies_bf16(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from alignment import precision

    monkeypatch.setattr(precision, "cpu_flags", lambda cpuinfo=None: cpu_flags(INTEL_AMX))
    assert precision.training_precision("auto", CPU) == (torch.float32, True)
    assert precision.inference_dtype("auto", CPU) == torch.bfloat16
    # a named float32 (the tests that compare losses to 1e-5) stays fp32 without autocast
    assert precision.training_precision("float32", CPU) == (torch.float32, False)
    assert precision.inference_dtype("float32", CPU) == torch.float32
    record = precision.precision_record("auto", CPU)
    assert record["bf16_autocast"] is True and record["frozen_models"] == "bfloat16"
    assert record["trained_weights"] == "float32"

    monkeypatch.setattr(precision, "cpu_flags", lambda cpuinfo=None: cpu_flags(WITHOUT))
    assert precision.training_precision("auto", CPU) == (torch.float32, False)
    assert precision.inference_dtype("auto", CPU) == torch.float32
    assert precision.training_precision("bfloat16", CPU) == (torch.bfloat16, False)
    with pytest.raises(ValueError, match="model.dtype: 'fp8'"):
        precision.training_precision("fp8", CPU)


def test_stages_take_their_bf16_default_from_model_dtype(monkeypatch: pytest.MonkeyPatch) -> None:
    from alignment import precision
    from alignment.stages.common import device_defaults

    monkeypatch.setattr(precision, "cpu_flags", lambda cpuinfo=None: cpu_flags(AMD_AVX512_BF16))
    assert device_defaults("auto")["bf16"] is True
    assert device_defaults("float32")["bf16"] is False
    monkeypatch.setattr(precision, "cpu_flags", lambda cpuinfo=None: cpu_flags(WITHOUT))
    assert device_defaults("auto")["bf16"] is False


def test_a_lora_base_is_frozen_in_bf16_only_under_auto_on_a_bf16_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from alignment import precision

    monkeypatch.setattr(precision, "cpu_flags", lambda cpuinfo=None: cpu_flags(INTEL_AMX))
    assert precision.adapter_base_dtype("auto", "lora", CPU) == torch.bfloat16
    assert precision.adapter_base_dtype("auto", "full", CPU) is None  # fp32 master weights train
    assert precision.adapter_base_dtype("float32", "lora", CPU) is None
    assert "base bfloat16, frozen" in str(precision.precision_record("auto", CPU, "lora")["trained_weights"])
    monkeypatch.setattr(precision, "cpu_flags", lambda cpuinfo=None: cpu_flags(WITHOUT))
    assert precision.adapter_base_dtype("auto", "lora", CPU) is None
