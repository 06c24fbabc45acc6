"""The `hf` generation backend: transformers' `generate` on the live training model.

Each token is drawn by `TokenSampler` (inverse CDF over the whole vocabulary at the temperature, one uniform
number per row, `sample_tokens`), which keeps the drawn token's log-prob; a LoRA adapter is
folded into the weights while decoding (`adapter_folded`). Greedy decoding (temperature 0) is `generate`'s own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from alignment.generation import Generated, Sampling


@contextlib.contextmanager
def adapter_folded(model: nn.Module) -> Iterator[bool]:
    """A PEFT LoRA model with its active adapters folded into fresh copies of the linear weights they adapt and
    the adapter layers off, so that each linear is one matmul (decoding a token otherwise runs three per adapted
    linear). Yields whether it folded; on exit the original weight tensors are put back untouched (no
    merge/unmerge rounding drift into the frozen base, which is also the reference). Adapters other than plain
    LoRA on linear layers (DoRA and other variants, embeddings) are left as they are."""
    try:
        from peft import PeftModel
        from peft.tuners.lora.layer import Linear as LoraLinear
        from peft.tuners.lora.layer import LoraLayer
    except ImportError:  # pragma: no cover - peft is a dependency
        yield False
        return
    if not isinstance(model, PeftModel):
        yield False
        return
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    plain = all(
        type(m) is LoraLinear
        and not m.merged
        and not m.disable_adapters
        and not any(name in m.lora_magnitude_vector for name in m.active_adapters)
        and not any(getattr(m, "lora_variant", {}).get(name) for name in m.active_adapters)
        for m in layers
    )
    if not layers or not plain:
        yield False
        return
    swapped: list[tuple[nn.Module, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for layer in layers:
                base = layer.get_base_layer()
                delta = [
                    layer.get_delta_weight(name) for name in layer.active_adapters if name in layer.lora_A
                ]
                if delta:
                    swapped.append((base, base.weight.data))
                    base.weight.data = base.weight.data + sum(delta).to(base.weight.dtype)
        with model.disable_adapter():
            yield True
    finally:
        for base, original in swapped:
            base.weight.data = original


# ------------------------------------------------------------------------------------------------ sampling
SAMPLING_BLOCK = 256
"""Vocabulary entries per block in `sample_tokens`' first level."""


def sample_tokens(logprobs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row drawn from `exp(logprobs)` (B, V) by inverse CDF: one uniform number per row.

    `torch.multinomial` draws one exponential number per vocabulary entry, which on a CPU is about a seventh of a
    decoding step of SmolLM2 at batch 16 (docs/BENCHMARKS.md). Two levels keep the draw exact: a block of
    `SAMPLING_BLOCK` entries is picked from the blocks' masses, then an entry within it, each from a cumulative sum
    in float64 (float32 on MPS, which has none), so entries far below the running sum are not absorbed into it. A
    drawn entry always has a positive probability. Returns (B, 1) token ids."""
    exact = torch.float32 if logprobs.device.type == "mps" else torch.float64
    probs = logprobs.float().exp()
    rows, vocab = probs.shape
    blocks = -(-vocab // SAMPLING_BLOCK)
    if blocks * SAMPLING_BLOCK != vocab:
        probs = torch.nn.functional.pad(probs, (0, blocks * SAMPLING_BLOCK - vocab))
    probs = probs.view(rows, blocks, SAMPLING_BLOCK)
    block_cdf = probs.sum(-1, dtype=exact).cumsum_(1)
    total = block_cdf[:, -1:]
    below = torch.nextafter(total, torch.zeros_like(total))
    draw = torch.minimum(
        torch.rand(rows, 1, dtype=exact, device=probs.device, generator=generator) * total, below
    )
    # right=True: the first block whose cumulative mass exceeds the draw, so it has mass; likewise within it.
    block = torch.searchsorted(block_cdf, draw, right=True)
    before = torch.where(block > 0, block_cdf.gather(1, (block - 1).clamp_min(0)), torch.zeros_like(draw))
    within = (
        probs.gather(1, block.unsqueeze(-1).expand(rows, 1, SAMPLING_BLOCK)).squeeze(1).to(exact).cumsum_(1)
    )
    rest = torch.minimum(draw - before, torch.nextafter(within[:, -1:], torch.zeros_like(draw)))
    return block * SAMPLING_BLOCK + torch.searchsorted(within, rest, right=True)


class TokenSampler:
    """A logits processor that draws each token itself: it divides the logits by the sampling temperature, draws
    from the full-vocabulary distribution by inverse CDF (`sample_tokens`, one uniform number per row, not
    `torch.multinomial`'s one exponential per vocabulary entry) and hands `generate` (run greedy) scores whose only
    finite entry is the drawn token. With `keep_logprobs`, it keeps each drawn token's log-prob under the
    distribution it was drawn from: the behaviour policy's log-probs, without a second forward pass.

    Memory: one (batch, vocab) row of log-probs at a time, not the whole (steps, batch, vocab) of `output_logits`."""

    def __init__(self, temperature: float, keep_logprobs: bool = True) -> None:
        self.temperature = temperature
        self.keep_logprobs = keep_logprobs
        self.taken: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        logprobs = torch.log_softmax(scores.float() / self.temperature, dim=-1)
        tokens = sample_tokens(logprobs)
        if self.keep_logprobs:
            self.taken.append(logprobs.gather(1, tokens))
        return torch.full_like(scores, float("-inf")).scatter_(1, tokens, 0.0)

    def finish(self, sequences: torch.Tensor, query_length: int) -> torch.Tensor:
        """(B, generated columns): the log-prob of every token `generate` appended after `query_length`."""
        generated = sequences.shape[1] - query_length
        taken, self.taken = self.taken, []
        # `generate` may decode one step past the stop and undo it (a deferred stop check, on some devices): the
        # undone step's draw is dropped.
        if len(taken) == generated + 1:
            taken = taken[:generated]
        if len(taken) != generated:
            raise RuntimeError(
                f"ppo: recorded {len(taken)} sampling steps for {generated} generated tokens; run with "
                "logprobs_from_generation: false"
            )
        return torch.cat(taken, dim=1)


class HFEngine:
    """`generate` of the training model itself: nothing to sync, token-exact for a seed on one machine."""

    backend = "hf"

    def __init__(self, model: nn.Module, tokenizer: Any, fold_adapter: bool = True) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.fold_adapter = fold_adapter
        self.folded: bool | None = None
        """Whether the last call decoded with a folded LoRA adapter (None before the first call)."""

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        sampling: Sampling,
        keep_logprobs: bool = False,
    ) -> Generated:
        """Left-padded prompts (B, Q) -> responses (B, T). Seeds the global RNG with `sampling.seed`."""
        from transformers import GenerationConfig

        config = GenerationConfig(
            max_new_tokens=sampling.max_new_tokens,
            min_new_tokens=sampling.min_new_tokens or None,
            do_sample=False,  # greedy; or `TokenSampler` draws each token and leaves generate that one
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
        )
        sampler = TokenSampler(sampling.temperature, keep_logprobs) if sampling.temperature else None
        torch.manual_seed(sampling.seed)
        folding = adapter_folded(self.model) if self.fold_adapter else contextlib.nullcontext(False)
        with folding as folded:
            self.folded = folded
            sequences = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                generation_config=config,
                logits_processor=[sampler] if sampler is not None else None,
            )
        query_length = input_ids.shape[1]
        logprobs = sampler.finish(sequences, query_length) if sampler and keep_logprobs else None
        return Generated(response=sequences[:, query_length:], logprobs=logprobs)

    def sync_weights(self, model: nn.Module) -> None:
        """Nothing to copy: the engine decodes with the training model's own weights."""
