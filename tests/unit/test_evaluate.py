"""The KL estimator of alignment.evaluate against a token-by-token computation, and the statistics helpers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from alignment.evaluate import mean_and_half_width, paired_difference, sampled_kl

PROMPTS = [
    [{"role": "user", "content": "Say hi."}],
    [{"role": "user", "content": "Write one short sentence about the sea, in lowercase only please."}],
    [{"role": "user", "content": "What is 2 + 3?"}],
]


@pytest.fixture(scope="module")
def models(tiny_model_dir: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir, use_safetensors=True).eval()
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir, use_safetensors=True).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return policy, reference, tokenizer


def _unpadded_log_ratio(policy, reference, tokenizer, prompt, completion_ids, temperature):
    """sum_t log p(y_t | x, y_<t) - log q(y_t | x, y_<t), one sequence, no padding, computed position by position."""
    ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=False)
    total = 0.0
    with torch.no_grad():
        for t, token in enumerate(completion_ids):
            context = torch.tensor([ids + completion_ids[:t]])
            p = torch.log_softmax(policy(input_ids=context).logits[0, -1] / temperature, dim=-1)[token]
            q = torch.log_softmax(reference(input_ids=context).logits[0, -1] / temperature, dim=-1)[token]
            total += float(p - q)
    return total


def test_kl_of_a_policy_to_itself_is_zero(models) -> None:
    policy, _, tokenizer = models
    result = sampled_kl(policy, policy, tokenizer, PROMPTS, max_new_tokens=6, batch_size=3)
    assert result["per_sample"] == pytest.approx([0.0, 0.0, 0.0], abs=1e-6)
    assert result["n"] == 3 and 1 <= result["mean_length"] <= 6


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_kl_per_sample_equals_the_token_by_token_log_ratio(models, temperature: float) -> None:
    policy, reference, tokenizer = models
    # batch of prompts of different lengths: left padding and position ids must not change any log-prob
    result = sampled_kl(
        policy, reference, tokenizer, PROMPTS, max_new_tokens=5, batch_size=3, temperature=temperature, seed=3
    )
    for prompt, ids, value in zip(PROMPTS, result["response_ids"], result["per_sample"], strict=True):
        assert 1 <= len(ids) <= 5
        expected = _unpadded_log_ratio(policy, reference, tokenizer, prompt, ids, temperature)
        assert value == pytest.approx(expected, abs=2e-4)
    assert any(abs(v) > 1e-3 for v in result["per_sample"])  # the perturbed reference does differ


def test_kl_sampling_is_seeded_and_leaves_the_global_rng_alone(models) -> None:
    policy, reference, tokenizer = models
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first = sampled_kl(policy, reference, tokenizer, PROMPTS, max_new_tokens=4, seed=7)
    after = torch.rand(1)
    second = sampled_kl(policy, reference, tokenizer, PROMPTS, max_new_tokens=4, seed=7)
    assert first["per_sample"] == second["per_sample"] and first["completions"] == second["completions"]
    assert torch.equal(before, after)


def test_mean_and_half_width() -> None:
    mean, half = mean_and_half_width([0.0, 1.0, 0.0, 1.0])
    assert mean == 0.5
    assert half == pytest.approx(1.96 * math.sqrt((4 * 0.25 / 3) / 4))
    assert math.isnan(mean_and_half_width([0.3])[1])
    with pytest.raises(ValueError):
        mean_and_half_width([])


def test_paired_difference_averages_each_prompt_before_its_standard_error() -> None:
    # Per-sample differences 1,1 | 1,0 | 0,0 | 1,0: prompt means 1, 0.5, 0, 0.5 -> mean 0.5, sd^2 = 0.5 / 3,
    # SE = sqrt(1/6 / 4) = 1/sqrt(24), z = sqrt(6). (Over the 8 samples as if independent, SE would be 0.189.)
    groups = [0, 0, 1, 1, 2, 2, 3, 3]
    scores = [1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0]
    reference = [0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    result = paired_difference(scores, reference, groups)
    assert result["mean"] == pytest.approx(0.5)
    assert result["standard_error"] == pytest.approx(1 / math.sqrt(24))
    assert result["z"] == pytest.approx(math.sqrt(6))
    assert result["p_one_sided"] == pytest.approx(0.5 * math.erfc(math.sqrt(3)))
    assert result["groups"] == 4
    worse = paired_difference(reference, scores, groups)
    assert worse["z"] == pytest.approx(-math.sqrt(6)) and worse["p_one_sided"] > 0.99


def test_paired_difference_of_identical_scores_is_no_evidence() -> None:
    same = paired_difference([1.0, 0.0, 1.0, 1.0], [1.0, 0.0, 1.0, 1.0], [0, 0, 1, 1])
    assert same["mean"] == 0.0 and same["z"] == 0.0 and same["p_one_sided"] == 0.5
    constant = paired_difference([1.0, 1.0], [0.0, 0.0], [0, 1])  # the same gain on every prompt
    assert constant["z"] == math.inf and constant["p_one_sided"] == 0.0
    with pytest.raises(ValueError, match="differ in length"):
        paired_difference([1.0], [1.0, 0.0], [0, 1])
    with pytest.raises(ValueError, match="at least 2 groups"):
        paired_difference([1.0, 0.0], [0.0, 0.0], [0, 0])
