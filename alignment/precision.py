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


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def dtype_name(dtype: torch.dtype) -> str:
    """`torch.bfloat16` -> "bfloat16", as configs and records name dtypes."""
    return str(dtype).removeprefix("torch.")


def default_device() -> torch.device:
    """The device a stage computes on: this process's GPU where CUDA is available, else the CPU."""
    return (
        torch.device("cuda", torch.cuda.current_device())
        if torch.cuda.is_available()
        else torch.device("cpu")
    )


def training_precision(name: str, device: torch.device | None = None) -> tuple[torch.dtype, bool]:
    """(dtype a trained model's weights load in, whether training runs under bf16 autocast) for `model.dtype`.

    `auto`: on a GPU with bf16, bf16 weights and bf16 compute (TRL's default); on a CPU with bf16 units, fp32 master
    weights under bf16 autocast (the matmuls in bf16, the optimiser's state and update in fp32); else fp32 alone.
    A named dtype loads the weights in it; a bf16 GPU autocasts to bf16 whatever the weights (as before `auto`
    existed), a CPU only when asked (a stage's `bf16: true`).
    """
    device = device or default_device()
    fast = bf16_units(device)[0]
    if name == "auto":
        if device.type == "cuda" and fast:
            return torch.bfloat16, True
        return torch.float32, fast and device.type == "cpu"
    if name not in DTYPES:
        raise ValueError(f"model.dtype: {name!r} is not one of auto, {', '.join(DTYPES)}")
    return DTYPES[name], device.type == "cuda" and fast


def inference_dtype(name: str, device: torch.device | None = None) -> torch.dtype:
    """The dtype of a model that only runs forward (frozen reference, reward model, evaluated policy) for
    `model.dtype`: `auto` is bf16 where `device` has bf16 units, else fp32; a named dtype is itself."""
    if name == "auto":
        return fast_dtype(device or default_device())
    if name not in DTYPES:
        raise ValueError(f"model.dtype: {name!r} is not one of auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def adapter_base_dtype(name: str, method: str, device: torch.device | None = None) -> torch.dtype | None:
    """The dtype of the frozen base under a LoRA adapter, where it differs from the trained weights' dtype: with
    `auto` on a CPU with bf16 units the base loads in bf16 (autocast would otherwise cast every frozen fp32 weight
    again at every op: most of a small model's step) while PEFT keeps the adapter's weights in fp32. None
    elsewhere."""
    device = device or default_device()
    weights, autocast = training_precision(name, device)
    if method == "lora" and name == "auto" and autocast and weights == torch.float32:
        return torch.bfloat16
    return None


def precision_record(
    name: str, device: torch.device | None = None, method: str = "full"
) -> dict[str, object]:
    """What `model.dtype: name` resolves to on `device` for a causal LM tuned by `method`, for manifests and
    benchmark records."""
    device = device or default_device()
    weights, autocast = training_precision(name, device)
    base = adapter_base_dtype(name, method, device)
    trained = dtype_name(weights)
    return {
        "model_dtype": name,
        "trained_weights": trained if base is None else f"{trained} (LoRA adapters; base bfloat16, frozen)",
        "bf16_autocast": autocast,
        "frozen_models": dtype_name(inference_dtype(name, device)),
        "device": bf16_units(device)[1],
    }
