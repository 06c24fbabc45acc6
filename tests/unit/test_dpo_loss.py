"""The DPO loss TRL computes for a fixed batch equals the hand-computed value (Rafailov et al., 2023, eq. 7)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch


def _sequence_logp(model, tokenizer, prompt: list[dict], reply: str) -> float:
    """Sum of log-probabilities of the reply tokens given the prompt, as the chat template renders them."""
    prompt_ids = tokenizer.apply_chat_template(
        prompt, tokenize=True, add_generation_prompt=True, return_dict=False
    )
    full_ids = tokenizer.apply_chat_template(
        prompt + [{"role": "assistant", "content": reply}], tokenize=True, return_dict=False
    )
    assert full_ids[: len(prompt_ids)] == prompt_ids
    ids = torch.tensor([full_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1]  # (T-1, V)
    logps = torch.log_softmax(logits.float(), dim=-1).gather(1, ids[0, 1:, None])[:, 0]  # (T-1,)
    return logps[len(prompt_ids) - 1 :].sum().item()


def test_dpo_eval_loss_matches_hand_computation(tiny_model_dir: Path, tmp_path: Path) -> None:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    torch.manual_seed(1)
    with torch.no_grad():  # a reference that differs from the policy
        for parameter in policy.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    policy.save_pretrained(tmp_path / "policy")
    tokenizer.save_pretrained(tmp_path / "policy")
    policy = AutoModelForCausalLM.from_pretrained(tmp_path / "policy")
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir)

    pairs = [
        {
            "prompt": [{"role": "user", "content": "What is 2 plus 2?"}],
            "chosen": [{"role": "assistant", "content": "4"}],
            "rejected": [{"role": "assistant", "content": "5"}],
        },
        {
            "prompt": [{"role": "user", "content": "Say hi in lowercase."}],
            "chosen": [{"role": "assistant", "content": "hi there"}],
            "rejected": [{"role": "assistant", "content": "Hi There"}],
        },
    ]
    beta = 0.3
    args = DPOConfig(
        output_dir=str(tmp_path / "out"),
        beta=beta,
        per_device_eval_batch_size=2,
        use_cpu=True,
        bf16=False,
        report_to=[],
        max_length=None,
    )
    trainer = DPOTrainer(
        model=policy,
        ref_model=reference,
        args=args,
        train_dataset=Dataset.from_list(pairs),
        eval_dataset=Dataset.from_list(pairs),
        processing_class=tokenizer,
    )
    metrics = trainer.evaluate()

    losses, margins = [], []
    for pair in pairs:
        chosen, rejected = pair["chosen"][0]["content"], pair["rejected"][0]["content"]
        chosen_ratio = _sequence_logp(policy, tokenizer, pair["prompt"], chosen) - _sequence_logp(
            reference, tokenizer, pair["prompt"], chosen
        )
        rejected_ratio = _sequence_logp(policy, tokenizer, pair["prompt"], rejected) - _sequence_logp(
            reference, tokenizer, pair["prompt"], rejected
        )
        logits = beta * (chosen_ratio - rejected_ratio)
        losses.append(-math.log(1 / (1 + math.exp(-logits))))
        margins.append(beta * (chosen_ratio - rejected_ratio))
    assert metrics["eval_loss"] == pytest.approx(sum(losses) / 2, abs=1e-4)
    assert metrics["eval_rewards/margins"] == pytest.approx(sum(margins) / 2, abs=1e-4)
    assert abs(sum(losses) / 2 - math.log(2)) > 1e-3  # the check is not the trivial policy == reference case
