"""Generation on held-out prompts and gold scoring: how much did a policy improve on the verifiable tasks?

This is the evaluation the pipeline prints at the end of a run (gold task score of the SFT and the final policy
on the same held-out prompts, greedy decoding), and the KL of a policy to its reference estimated on the policy's
own samples (`sampled_kl`, the same estimator for every algorithm). The full `alignment eval` (RM scores, win
rates) builds on the same functions.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from alignment.models import load_artifact_for_inference

logger = logging.getLogger(__name__)


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[dict[str, str]]],
    max_new_tokens: int = 64,
    batch_size: int = 16,
    temperature: float = 0.0,
    seed: int = 0,
) -> list[str]:
    """Completions (special tokens stripped) for chat prompts; greedy when temperature is 0."""
    tokenizer.padding_side = "left"  # generation appends on the right
    torch.manual_seed(seed)
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: list[str] = [""] * len(texts)
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        batch = tokenizer(
            [texts[i] for i in index], return_tensors="pt", padding=True, add_special_tokens=False
        )
        batch = batch.to(model.device)
        sampling = (
            {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
            if temperature
            else {"do_sample": False}
        )
        generated = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **sampling,
        )
        decoded = tokenizer.batch_decode(
            generated[:, batch["input_ids"].shape[1] :], skip_special_tokens=True
        )
        for i, text in zip(index, decoded, strict=True):
            out[i] = text.strip()
    return out


def mean_and_half_width(values: Sequence[float]) -> tuple[float, float]:
    """Mean and 95% half-width (normal approximation, 1.96 standard errors; NaN for fewer than 2 values)."""
    n = len(values)
    if n == 0:
        raise ValueError("no values to average")
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, 1.96 * (variance / n) ** 0.5


def _response_logprobs(
    model: Any, sequences: torch.Tensor, attention_mask: torch.Tensor, query_length: int, temperature: float
) -> torch.Tensor:
    """log p(token) of every response position (batch, response_length), logits divided by `temperature`."""
    from alignment.rl.ppo_math import gather_response_logprobs, position_ids_from

    response = sequences[:, query_length:]
    logits = model(
        input_ids=sequences,
        attention_mask=attention_mask,
        position_ids=position_ids_from(attention_mask),
        logits_to_keep=response.shape[1] + 1,  # the positions that predict response tokens (and the last)
    ).logits
    return gather_response_logprobs(logits[:, :-1], response, temperature)


@torch.no_grad()
def sampled_kl(
    policy: Any,
    reference: Any,
    tokenizer: Any,
    prompts: Sequence[list[dict[str, str]]],
    max_new_tokens: int = 64,
    batch_size: int = 16,
    samples_per_prompt: int = 1,
    temperature: float = 1.0,
    seed: int = 0,
) -> dict[str, Any]:
    """KL(policy || reference) per sequence, estimated on the policy's own samples.

    For each sample y ~ policy(. | x) (temperature `temperature`, no top-k/top-p): the sum over its response tokens
    (through the first EOS) of log policy(y_t) - log reference(y_t), both models' logits divided by the same
    temperature (1: the models' own distributions). Its mean over samples is an unbiased estimate of the
    sequence-level KL (the k1 estimator); single samples can be negative. The same estimator serves every
    algorithm, so PPO, DPO and GRPO policies are compared on one scale. `response_ids` holds each sample's
    tokens through its EOS.
    """
    from alignment.rl.ppo_math import response_mask

    tokenizer.padding_side = "left"
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    texts = [t for t in texts for _ in range(samples_per_prompt)]
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    per_sample: list[float] = []
    lengths: list[int] = []
    ended_flags: list[bool] = []
    completions: list[str] = []
    response_ids: list[list[int]] = []
    try:
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(
                texts[start : start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(policy.device)
            query_length = batch["input_ids"].shape[1]
            sequences = policy.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=True,
                temperature=temperature,
                top_k=0,
                top_p=1.0,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            response = sequences[:, query_length:]
            mask, ended = response_mask(response, tokenizer.eos_token_id)
            response = torch.where(mask.bool(), response, torch.full_like(response, tokenizer.pad_token_id))
            sequences = torch.cat([sequences[:, :query_length], response], dim=1)
            attention_mask = torch.cat([batch["attention_mask"], mask.long()], dim=1)
            log_ratio = _response_logprobs(
                policy, sequences, attention_mask, query_length, temperature
            ) - _response_logprobs(reference, sequences, attention_mask, query_length, temperature)
            per_sample.extend((log_ratio * mask).sum(dim=1).tolist())
            response_ids.extend(
                row[: int(n)].tolist() for row, n in zip(response, mask.sum(dim=1), strict=True)
            )
            lengths.extend(mask.sum(dim=1).long().tolist())
            ended_flags.extend(ended.tolist())
            without_eos = torch.where(response == tokenizer.eos_token_id, tokenizer.pad_token_id, response)
            completions.extend(
                t.strip() for t in tokenizer.batch_decode(without_eos, skip_special_tokens=True)
            )
    finally:
        torch.random.set_rng_state(generator_state)
    mean, half_width = mean_and_half_width(per_sample)
    return {
        "mean": mean,
        "ci95_half_width": half_width,
        "n": len(per_sample),
        "per_sample": per_sample,
        "mean_length": sum(lengths) / len(lengths),
        "eos_rate": sum(ended_flags) / len(ended_flags),
        "completions": completions,
        "response_ids": response_ids,
        "temperature": temperature,
        "seed": seed,
    }


def gold_score_policy(
    policy: str | Path,
    rows: Sequence[dict[str, Any]],
    max_new_tokens: int = 64,
    batch_size: int = 16,
    temperature: float = 0.0,
    samples_per_prompt: int = 1,
    seed: int = 0,
) -> dict[str, Any]:
    """Mean gold score (reward_models.rules) of a policy artifact's answers to prompt rows with `gold`: greedy by
    default, or `samples_per_prompt` samples per prompt at `temperature` (seeded), the expected score of the
    policy as it samples."""
    from reward_models.rules import score_gold

    if samples_per_prompt > 1 and not temperature:
        raise ValueError(
            "samples_per_prompt > 1 needs a sampling temperature (greedy answers are all the same)"
        )
    model, tokenizer = load_artifact_for_inference(policy)
    repeated = [row for row in rows for _ in range(samples_per_prompt)]
    completions = generate(
        model, tokenizer, [row["prompt"] for row in repeated], max_new_tokens, batch_size, temperature, seed
    )
    scores = [score_gold(row["gold"], text) for row, text in zip(repeated, completions, strict=True)]
    return {"mean": sum(scores) / len(scores), "n": len(scores), "scores": scores, "completions": completions}
