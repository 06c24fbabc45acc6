"""The arithmetic of RLHF-PPO, as pure tensor functions (each unit-tested against hand-computed values).

Conventions: tensors are (batch, response_length); `mask` is 1.0 on response tokens up to and including the first
EOS and 0.0 after it (padding). Sources: Ziegler et al. 2019 (per-token KL penalty, adaptive controller), Schulman
et al. 2016 (GAE), Schulman et al. 2017 (clipped objective), Huang et al. 2024, "The N+ Implementation Details of
RLHF with PPO" (EOS handling, whitening, value clipping, temperature-scaled log-probs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

AllReduce = Callable[[torch.Tensor], torch.Tensor]
"""Sums a tensor over all processes (identity on one process)."""


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


# ------------------------------------------------------------------------------------------------ masked stats
def masked_mean(values: torch.Tensor, mask: torch.Tensor, all_reduce: AllReduce = _identity) -> torch.Tensor:
    """Mean over the positions where mask is 1 (across processes when `all_reduce` sums over them)."""
    stats = all_reduce(torch.stack([(values * mask).sum(), mask.sum()]))
    return stats[0] / stats[1].clamp_min(1.0)


def masked_var(values: torch.Tensor, mask: torch.Tensor, all_reduce: AllReduce = _identity) -> torch.Tensor:
    """Unbiased variance over the masked positions."""
    mean = masked_mean(values, mask, all_reduce)
    stats = all_reduce(torch.stack([(((values - mean) ** 2) * mask).sum(), mask.sum()]))
    count = stats[1]
    if count < 2:
        return torch.zeros((), dtype=values.dtype)
    return stats[0] / (count - 1)


def masked_whiten(
    values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, all_reduce: AllReduce = _identity
) -> torch.Tensor:
    """(x - mean) / std over the masked positions of the whole (global) batch; masked-out positions become 0."""
    mean = masked_mean(values, mask, all_reduce)
    var = masked_var(values, mask, all_reduce)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


# ------------------------------------------------------------------------------------------- responses and EOS
def response_mask(response_ids: torch.Tensor, eos_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask, ended): mask is 1 up to and including the first EOS (the whole row when there is none); `ended`
    says whether the row contains an EOS at all."""
    is_eos = response_ids == eos_token_id
    ended = is_eos.any(dim=1)
    length = response_ids.shape[1]
    first = torch.where(
        ended, is_eos.int().argmax(dim=1), torch.full_like(ended, length - 1, dtype=torch.long)
    )
    positions = torch.arange(length, device=response_ids.device).unsqueeze(0)
    mask = (positions <= first.unsqueeze(1)).float()
    return mask, ended


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last response token (the EOS when there is one) per row."""
    return (mask.sum(dim=1).long() - 1).clamp_min(0)


def apply_missing_eos_penalty(
    scores: torch.Tensor, ended: torch.Tensor, penalty: float | None
) -> torch.Tensor:
    """Responses that never emit EOS get their score lowered by `penalty` (None: unchanged)."""
    if penalty is None:
        return scores
    return torch.where(ended, scores, scores - penalty)


# ------------------------------------------------------------------------------------------------------- KL
def kl_per_token(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(pi || ref) from samples of pi (Schulman, "Approximating KL divergence").

    k1 = log pi - log ref (unbiased, can be negative); k2 = 0.5 (log pi - log ref)^2; k3 = (r - 1) - log r with
    r = ref / pi (unbiased, always >= 0)."""
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"kl_estimator must be k1, k2 or k3, got {estimator!r}")


def token_rewards(
    scores: torch.Tensor, kl: torch.Tensor, kl_coef: float, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards r_t = -kl_coef * kl_t, plus the sequence score at the last response token.

    Returns (rewards, non_score_rewards), both zero outside the mask."""
    non_score = -kl_coef * kl * mask
    rewards = non_score.clone()
    rows = torch.arange(scores.shape[0], device=scores.device)
    rewards[rows, last_token_index(mask)] += scores
    return rewards, non_score


class FixedKLController:
    """A constant KL coefficient."""

    def __init__(self, value: float) -> None:
        self.value = value

    def update(self, current_kl: float, n_samples: int) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Ziegler et al. 2019, eq. 2: beta <- beta * (1 + K_beta * e), e = clip(KL / target - 1, -0.2, 0.2),
    with K_beta = n_samples / horizon."""

    def __init__(self, value: float, target: float, horizon: int) -> None:
        if target <= 0 or horizon <= 0:
            raise ValueError(f"adaptive KL needs target > 0 and horizon > 0, got {target}, {horizon}")
        self.value = value
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, n_samples: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_samples / self.horizon

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])


# ---------------------------------------------------------------------------------------------- advantages
def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over each row's masked response.

    delta_t = r_t + gamma * V_{t+1} - V_t, A_t = delta_t + gamma * lam * A_{t+1}; V and A are 0 past the end.
    Returns (advantages, returns = advantages + values), zero outside the mask."""
    values = values * mask
    rewards = rewards * mask
    length = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    next_advantage = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(values[:, 0])
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = (delta + gamma * lam * next_advantage) * mask[:, t]
        advantages[:, t] = next_advantage
    returns = (advantages + values) * mask
    return advantages, returns


# ---------------------------------------------------------------------------------------------------- losses
@dataclass
class PolicyLoss:
    loss: torch.Tensor
    clipfrac: torch.Tensor
    approx_kl: torch.Tensor
    ratio: torch.Tensor


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cliprange: float,
    token_weights: torch.Tensor | None = None,
) -> PolicyLoss:
    """Clipped surrogate (Schulman et al. 2017, eq. 7), as a loss to minimise, averaged over response tokens.
    `token_weights` (constants) scale each token's term: truncated importance-sampling weights when the samples
    came from another engine's distribution."""
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    per_token = torch.maximum(unclipped, clipped)
    if token_weights is not None:
        per_token = per_token * token_weights.detach()
    loss = masked_mean(per_token, mask)
    with torch.no_grad():
        clipfrac = masked_mean((clipped > unclipped).float(), mask)
        approx_kl = masked_mean(0.5 * log_ratio**2, mask)
        mean_ratio = masked_mean(ratio, mask)
    return PolicyLoss(loss, clipfrac, approx_kl, mean_ratio)


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    cliprange_value: float | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """0.5 * max((V - R)^2, (clip(V, V_old +- c) - R)^2), averaged over response tokens; (loss, clipfrac).
    `cliprange_value=None` is the unclipped squared error."""
    unclipped = (values - returns) ** 2
    if cliprange_value is None:
        return 0.5 * masked_mean(unclipped, mask), torch.zeros(())
    clipped_values = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((clipped > unclipped).float(), mask)
    return loss, clipfrac


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(R - V) / Var(R) over response tokens: 1 is a perfect critic, 0 no better than a constant."""
    var_returns = masked_var(returns, mask)
    if var_returns <= 0:
        return float("nan")
    return float(1.0 - masked_var(returns - values, mask) / var_returns)


# ------------------------------------------------------------------------------------------ batch arithmetic
@dataclass(frozen=True)
class BatchPlan:
    """How one PPO iteration's rollouts split into optimiser steps, per process."""

    rollout_batch_size: int
    """Prompts each process generates completions for per iteration."""
    micro_batch_size: int
    """Samples per forward/backward pass per process."""
    gradient_accumulation_steps: int
    """Micro-batches per optimiser step."""
    num_processes: int

    @property
    def mini_batch_size(self) -> int:
        """Samples per optimiser step per process."""
        return self.micro_batch_size * self.gradient_accumulation_steps

    @property
    def mini_batches_per_epoch(self) -> int:
        return self.rollout_batch_size // self.mini_batch_size

    @property
    def global_rollout_batch_size(self) -> int:
        return self.rollout_batch_size * self.num_processes


def plan_batches(
    rollout_batch_size: int, micro_batch_size: int, gradient_accumulation_steps: int, num_processes: int
) -> BatchPlan:
    """Check that the rollout batch splits into whole mini-batches of whole micro-batches; the error says what
    to change."""
    for name, value in (
        ("ppo.rollout_batch_size", rollout_batch_size),
        ("ppo.per_device_train_batch_size", micro_batch_size),
        ("ppo.gradient_accumulation_steps", gradient_accumulation_steps),
        ("number of processes", num_processes),
    ):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    mini = micro_batch_size * gradient_accumulation_steps
    if rollout_batch_size % mini:
        raise ValueError(
            f"ppo.rollout_batch_size={rollout_batch_size} (prompts per process per iteration) must be a multiple "
            f"of the mini-batch ppo.per_device_train_batch_size x ppo.gradient_accumulation_steps = "
            f"{micro_batch_size} x {gradient_accumulation_steps} = {mini}; e.g. set ppo.rollout_batch_size="
            f"{max(mini, rollout_batch_size - rollout_batch_size % mini)} or a mini-batch among "
            f"{_divisors(rollout_batch_size)}"
        )
    return BatchPlan(rollout_batch_size, micro_batch_size, gradient_accumulation_steps, num_processes)


@dataclass(frozen=True)
class DataPosition:
    """Where the prompt stream stands: a pass over the prompts (each pass a fixed permutation, seeded by the pass
    number) and the prompts of that pass already consumed. Independent of the number of processes, so a resume on
    another world size continues where the checkpoint stopped."""

    data_pass: int = 0
    offset: int = 0

    def next_batch(self, global_batch: int, prompt_count: int) -> DataPosition:
        """Where the next batch of `global_batch` prompts starts: here, or at the next pass when fewer than
        `global_batch` prompts of this pass remain (a batch never spans two passes: the pass's rest is dropped)."""
        if global_batch > prompt_count:
            raise ValueError(f"a batch of {global_batch} prompts out of {prompt_count}")
        if self.offset + global_batch > prompt_count:
            return DataPosition(self.data_pass + 1, 0)
        return self

    def after(self, global_batch: int, prompt_count: int) -> DataPosition:
        """The position once the next batch is consumed."""
        start = self.next_batch(global_batch, prompt_count)
        return DataPosition(start.data_pass, start.offset + global_batch)

    @classmethod
    def at_iteration(cls, iteration: int, global_batch: int, prompt_count: int) -> DataPosition:
        """The position after `iteration` batches of a constant `global_batch` (checkpoints that predate the
        recorded position)."""
        per_pass = prompt_count // global_batch
        data_pass, batches = divmod(iteration, per_pass)
        return cls(data_pass, batches * global_batch)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def last_positions(length: int, keep: int, device: torch.device | str = "cpu") -> torch.Tensor | int:
    """`logits_to_keep` for the last `keep` of `length` positions, as an index tensor (`keep` 0: 0, every position).
    transformers slices the hidden states with it before the LM head. An integer becomes a slice, a view that is not
    contiguous, and a frozen LM head (LoRA, the reference) then runs as a batched product over a broadcast copy of
    its weight; an index tensor gathers a contiguous copy, and the head runs as one matrix product (on CPU, SmolLM2's
    head 1.2x faster alone, a LoRA policy's update micro-batch 1.04x, docs/BENCHMARKS.md)."""
    if keep <= 0:
        return 0
    return torch.arange(max(length - keep, 0), length, device=device)


def position_ids_from(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as generate() uses them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def gather_response_logprobs(
    logits: torch.Tensor, response: torch.Tensor, temperature: float
) -> torch.Tensor:
    """log pi(token) of each response token from the logits that predicted it, at the sampling temperature."""
    from trl.trainer.utils import selective_log_softmax

    return selective_log_softmax(logits.float(), response, temperature=temperature)
