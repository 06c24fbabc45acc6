"""Generation on held-out prompts and gold scoring: how much did a policy improve on the verifiable tasks?

This is the evaluation the pipeline prints at the end of a run (gold task score of the SFT and the final policy
on the same held-out prompts, greedy decoding). The full `alignment eval` (RM scores, KL, win rates, CIs) builds
on the same generation function.
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


def gold_score_policy(
    policy: str | Path, rows: Sequence[dict[str, Any]], max_new_tokens: int = 64, batch_size: int = 16
) -> dict[str, Any]:
    """Mean gold score (reward_models.rules) of a policy artifact's greedy answers to prompt rows with `gold`."""
    from reward_models.rules import score_gold

    model, tokenizer = load_artifact_for_inference(policy)
    completions = generate(model, tokenizer, [row["prompt"] for row in rows], max_new_tokens, batch_size)
    scores = [score_gold(row["gold"], text) for row, text in zip(rows, completions, strict=True)]
    return {"mean": sum(scores) / len(scores), "n": len(scores), "scores": scores, "completions": completions}
