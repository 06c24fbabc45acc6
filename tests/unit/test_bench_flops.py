"""Model FLOP counts of `python -m bench stages` (bench/flops.py), against hand-derived values."""

from __future__ import annotations

import pytest
import torch

from bench.flops import (
    MatmulParameters,
    grpo_flops,
    matmul_parameters,
    ppo_flops,
    ppo_phase_flops,
    training_factor,
    trl_stage_flops,
)

# body 100, LM head 1000 (vocab x hidden), hidden 10, 4 blocks: causal LM 1100, scorer 110
SIZE = MatmulParameters(body=100, lm_head=1000, hidden=10, layers=4)


def test_training_factor_full_and_adapters() -> None:
    assert training_factor("full") == 6
    assert training_factor("lora") == 4
    assert training_factor("freeze") == 4


@pytest.mark.parametrize(
    ("stage", "method", "expected"),
    [
        ("sft", "full", 6 * 1100 * 7),
        ("sft", "lora", 4 * 1100 * 7),
        ("reward", "full", 6 * 110 * 7),  # score head (hidden x 1), no LM head
        ("dpo", "full", (6 + 2) * 1100 * 7),  # + the reference's forward pass
        ("dpo", "lora", (4 + 2) * 1100 * 7),
    ],
)
def test_trl_stage_flops(stage: str, method: str, expected: int) -> None:
    assert trl_stage_flops(stage, method, SIZE, tokens=7) == expected


def test_trl_stage_flops_refuses_rl_stages() -> None:
    with pytest.raises(ValueError, match="ppo_flops"):
        trl_stage_flops("ppo", "full", SIZE, tokens=7)


def test_ppo_flops_critic_trained_whole() -> None:
    # T = 10 tokens, R = 4 generated, 2 epochs, full fine-tuning
    policy_pass = 100 * 10 + 1000 * 4  # LM head over response positions only: 5000
    generation = 2 * 1100 * 4  # 8800
    rollout = 2 * policy_pass + 2 * policy_pass + 2 * 110 * 10  # policy, reference, critic: 22200
    scoring = 2 * 110 * 10  # the RM's forward pass over the same tokens: 2200
    update = 2 * (6 * policy_pass + 6 * 110 * 10)  # 73200
    phases = ppo_phase_flops(SIZE, "full", tokens=10, response_tokens=4, ppo_epochs=2)
    assert phases == {"generation": 8800, "rollout_forward": 22200, "scoring": 2200, "training": 73200}
    assert generation + rollout + scoring + update == 106400
    assert ppo_flops(SIZE, "full", tokens=10, response_tokens=4, ppo_epochs=2) == 106400


def test_ppo_flops_with_log_probs_kept_from_sampling() -> None:
    # no policy pass after generation: 2 x 5000 fewer in the rollout
    recomputed = ppo_flops(SIZE, "full", tokens=10, response_tokens=4, ppo_epochs=2)
    kept = ppo_flops(SIZE, "full", tokens=10, response_tokens=4, ppo_epochs=2, old_logprob_pass=False)
    assert recomputed - kept == 2 * 5000


def test_ppo_flops_partly_frozen_critic_with_and_without_the_cached_trunk() -> None:
    # last 1 of 4 blocks trainable: trained part 100 / 4 + 10 = 35 per token
    with_cache = (2 * 35 + 4 * 35) * 10  # only the trained blocks run in the epochs: 2100
    without = (2 * 110 + 4 * 35) * 10  # the whole critic runs forward: 3600
    base = 8800 + 22200 + 2200 + 2 * 6 * 5000
    assert ppo_flops(SIZE, "full", 10, 4, 2, critic_trainable_last_n_blocks=1, cache_critic_trunk=True) == (
        base + 2 * with_cache
    )
    assert ppo_flops(SIZE, "full", 10, 4, 2, critic_trainable_last_n_blocks=1, cache_critic_trunk=False) == (
        base + 2 * without
    )


def test_ppo_flops_lora_policy() -> None:
    # the policy's update costs 4 per parameter instead of 6; the critic still trains whole
    full = ppo_flops(SIZE, "full", 10, 4, 2)
    lora = ppo_flops(SIZE, "lora", 10, 4, 2)
    assert full - lora == 2 * (6 - 4) * 5000


def test_grpo_flops() -> None:
    # T = 10, C = 4, LoRA, 2 iterations per generation, beta != 0: a reference pass once per generation
    one_pass = 100 * 10 + 1000 * 4  # 5000
    expected = 2 * 1100 * 4 + 2 * one_pass + 2 * 4 * one_pass
    assert expected == 58800
    assert grpo_flops(SIZE, "lora", 10, 4, num_iterations=2, beta=0.04) == 58800
    # beta 0: no reference; an unaligned generation adds the old-log-prob pass instead
    assert grpo_flops(SIZE, "lora", 10, 4, num_iterations=2, beta=0.0) == 58800 - 10000
    assert grpo_flops(SIZE, "lora", 10, 4, num_iterations=2, beta=0.0, old_logprob_pass=True) == 58800


@pytest.mark.parametrize("tied", [True, False])
def test_matmul_parameters_counts_the_lm_head_once_tied_or_not(tied: bool) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=100,
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=tied,
    )
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    # per block: q 8x8, k 8x4, v 8x4, o 8x8, MLP 3 x 8x16, two norms of 8; final norm 8
    body = 3 * (64 + 32 + 32 + 64 + 3 * 128 + 2 * 8) + 8
    assert matmul_parameters(model) == MatmulParameters(body=body, lm_head=800, hidden=8, layers=3)
