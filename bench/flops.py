"""Model FLOPs of one benchmarked stage run, from the token counts its log holds (the numerator of MFU).

Parameters are counted by the matmul they do per token (`MatmulParameters`): the *body* (decoder blocks and final
norm) does one multiply-add per parameter per token; the input embedding is a lookup (no matmul); the LM head does
vocab x hidden per position it is computed for (whether or not it is tied to the embedding); a sequence scorer (RM,
critic) has a one-output score head, hidden per token. A forward pass costs 2 FLOPs per matmul parameter per token;
attention's sequence-length term is left out, as in the usual 6N. Training (forward + backward) costs
`training_factor`: 6 with full fine-tuning (backward 4: activation and weight gradients), 4 with adapters or frozen
blocks (backward 2 through the frozen weights for activation gradients; the adapters' own gradients are
negligible, and with `freeze` the backward pass is cut short after the trained blocks, so 4 is an upper bound).

Per stage, T = the tokens the trainer logs as `num_tokens`:
- sft:    training x (body + LM head) x T;
- reward: training x (body + score head) x T (chosen and rejected sequences both count in T);
- dpo:    training x (body + LM head) x T, plus the reference's forward pass 2 x (body + LM head) x T (with LoRA
          the reference is the adapter-disabled policy: the same count);
- ppo (ours, alignment.rl.ppo_trainer): T = query + response tokens of all rollouts, R = response tokens, E =
  `ppo_epochs`. Generation: 2 x (body + LM head) per generated token (R; the prompt prefill is not counted).
  Rollout forward passes: reference 2 x (body x T + LM head x R) (the trainer computes LM-head logits for
  response positions only), the policy the same only with `logprobs_from_generation` off (by default the sampled
  tokens' log-probs are kept while generating), critic 2 x (body + score) x T. Each of the E epochs: policy training x
  (body x T + LM head x R); critic 6 x (body + score) x T when trained whole, else with its last k of L blocks
  trainable: a forward pass over the blocks it runs (all of them, or only the k after the cached frozen trunk
  with `cache_critic_trunk`) plus 4 x the trained part (backward through the trained blocks only). The critic is
  assumed to have the policy's architecture (it starts from the RM or the policy's init model). A learned RM's
  scoring pass (its own tokenizer) is not counted; rule rewards cost no FLOPs.
- grpo and rloo (TRL's GRPOTrainer and RLOOTrainer, built alike): T = prompt + completion tokens of all generations, C = completion tokens. Generation:
  2 x (body + LM head) x C (prefill not counted). Each of `num_iterations` passes over a generation: training x
  (body x T + LM head x C) (TRL keeps logits for completion positions only). Once per generation: a reference
  forward pass 2 x (body x T + LM head x C) when beta != 0, and an old-log-prob forward pass of the same size
  when the generation does not line up with the optimiser steps (gradient_accumulation_steps not a multiple of steps_per_generation x
  num_iterations); RLOO always runs that pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class MatmulParameters:
    """A decoder's parameters by the matmul work they do per token."""

    body: int
    """Decoder blocks and final norm: everything but the input embedding and the heads."""
    lm_head: int
    """vocab x hidden: the LM head's matmul, tied to the input embedding or not."""
    hidden: int
    """The one-output score head of an RM or critic."""
    layers: int

    @property
    def causal_lm(self) -> int:
        return self.body + self.lm_head

    @property
    def scorer(self) -> int:
        return self.body + self.hidden


def matmul_parameters(model: Any) -> MatmulParameters:
    """Split a causal LM's parameters (e.g. built on the meta device) into body and heads."""
    total = sum(p.numel() for p in model.parameters())  # a tied head is listed once, as the embedding
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    untied_head = 0 if head is embedding else head.numel()
    return MatmulParameters(
        body=total - embedding.numel() - untied_head,
        lm_head=head.numel(),
        hidden=model.config.hidden_size,
        layers=model.config.num_hidden_layers,
    )


def training_factor(method: str) -> int:
    """FLOPs per matmul parameter per token of a training pass (forward + backward)."""
    return 6 if method == "full" else 4


def trl_stage_flops(stage: str, method: str, size: MatmulParameters, tokens: float) -> float:
    """Model FLOPs of an SFT, reward or DPO run over `tokens` logged tokens."""
    train = training_factor(method)
    if stage == "sft":
        return train * size.causal_lm * tokens
    if stage == "reward":
        return train * size.scorer * tokens
    if stage == "dpo":
        return (train + 2) * size.causal_lm * tokens
    raise ValueError(f"no per-token FLOP count for stage {stage!r} (ppo and grpo: ppo_flops, grpo_flops)")


def ppo_phase_flops(
    size: MatmulParameters,
    method: str,
    tokens: float,
    response_tokens: float,
    ppo_epochs: int,
    critic_trainable_last_n_blocks: int | None = None,
    cache_critic_trunk: bool = False,
    old_logprob_pass: bool = True,
) -> dict[str, float]:
    """Model FLOPs of our PPO per phase of its loop (the phases it times: generation, rollout forward passes, RM
    scoring, training) over `tokens` query + response tokens of which `response_tokens` were generated;
    `old_logprob_pass`: the policy's log-probs are recomputed after generation (`logprobs_from_generation` off).
    Scoring is counted over the policy's tokens (the RM re-tokenises the decoded text; with the SFT tokenizer, the
    same tokens)."""
    policy_pass = size.body * tokens + size.lm_head * response_tokens  # one pass's matmul work / 2
    # policy (when recomputed), reference, critic
    rollout = (2 * policy_pass if old_logprob_pass else 0) + 2 * policy_pass + 2 * size.scorer * tokens
    if critic_trainable_last_n_blocks is None:
        critic_update = 6 * size.scorer * tokens
    else:
        trained = size.body * critic_trainable_last_n_blocks / size.layers + size.hidden
        run = trained if cache_critic_trunk else size.scorer
        critic_update = (2 * run + 4 * trained) * tokens
    return {
        "generation": 2 * size.causal_lm * response_tokens,
        "rollout_forward": rollout,
        "scoring": 2 * size.scorer * tokens,
        "training": ppo_epochs * (training_factor(method) * policy_pass + critic_update),
    }


def ppo_flops(*args: Any, **kwargs: Any) -> float:
    """Model FLOPs of a whole PPO run: `ppo_phase_flops` summed."""
    return sum(ppo_phase_flops(*args, **kwargs).values())


def grpo_flops(
    size: MatmulParameters,
    method: str,
    tokens: float,
    completion_tokens: float,
    num_iterations: int = 1,
    beta: float = 0.0,
    old_logprob_pass: bool = False,
) -> float:
    """Model FLOPs of TRL's GRPO over `tokens` prompt + completion tokens, `completion_tokens` of them generated."""
    one_pass = size.body * tokens + size.lm_head * completion_tokens
    generation = 2 * size.causal_lm * completion_tokens
    forward_only = (
        2 * one_pass * ((1 if beta != 0 else 0) + (1 if old_logprob_pass else 0))
    )  # once per generation
    return generation + forward_only + num_iterations * training_factor(method) * one_pass
