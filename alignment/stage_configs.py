"""Stage config classes: TRL config classes extended with the project's own fields.

Module-level (not built inside a function) so that transformers can pickle them into checkpoints, and kept apart
from `alignment.config` because importing TRL costs seconds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from transformers import TrainingArguments
from trl import DPOConfig, GRPOConfig, RewardConfig, RLOOConfig, SFTConfig

from alignment.data import DataConfig
from alignment.generation import GenerationConfig
from alignment.schema import ModelConfig


class StageArgsMixin:
    """Makes TRL configs with nested project dataclasses serialisable (W&B config, JSON)."""

    def to_dict(self) -> dict[str, Any]:  # type: ignore[override]
        out = super().to_dict()  # type: ignore[misc]
        for key, value in out.items():
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                out[key] = dataclasses.asdict(value)
        return out


@dataclass
class SFTStageConfig(StageArgsMixin, SFTConfig):
    """SFT stage: TRL's SFTConfig plus the stage's data. Prompt-completion rows train on the completion only."""

    data: DataConfig = field(default_factory=DataConfig)
    eval_data: DataConfig | None = None
    """Held-out data; default: `data.eval_fraction` of the training source."""
    model: ModelConfig | None = None
    """Per-stage model override; default: the pipeline's `model` (SFT) or the upstream artifact."""


@dataclass
class RewardStageConfig(StageArgsMixin, RewardConfig):
    """Reward stage: TRL's RewardConfig (Bradley-Terry loss) plus data, initialisation and diagnostics."""

    data: DataConfig = field(default_factory=lambda: DataConfig(eval_fraction=0.1))
    eval_data: DataConfig | None = None
    """Held-out pairs for the diagnostics; default: `data.eval_fraction` of the training source."""
    model: ModelConfig | None = None
    """Per-stage model override, used when `init_from: model`."""
    init_from: str = "sft"
    """`sft`: this pipeline's SFT artifact (InstructGPT); `model`: the `model` section; or an artifact path."""
    normalization: Literal["chosen", "policy_samples", "none"] = "chosen"
    """Statistics saved with the RM: its scores on the training prompts' chosen responses, or on completions
    sampled from the initial (SFT) policy, or none."""
    normalization_samples: int = 256
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    """The engine that samples the initial policy for `normalization: policy_samples` (`alignment.generation`)."""
    diagnostics_batch_size: int = 16
    use_margin: bool = False
    """Pass each pair's `margin` field to the loss (Llama 2's margin term)."""


@dataclass
class DPOStageConfig(StageArgsMixin, DPOConfig):
    """DPO stage: TRL's DPOConfig (every loss_type, beta, precompute_ref_log_probs, ...) plus data and init."""

    data: DataConfig = field(default_factory=lambda: DataConfig(eval_fraction=0.1))
    eval_data: DataConfig | None = None
    """Held-out pairs for reward accuracy / margins; default: `data.eval_fraction` of the training source."""
    model: ModelConfig | None = None
    """Per-stage model override (tuning method), used for loading; the weights come from `init_from`."""
    init_from: str = "sft"
    """`sft`: this pipeline's SFT artifact (also the frozen reference); `model`: the `model` section; or a path.
    With LoRA the reference is the policy with its adapter disabled (no second copy in memory)."""
    reference_from: str | None = None
    """The frozen reference, when it is not `init_from`: `sft` or an artifact path (a second model in memory), e.g.
    the SFT policy while a later round trains on from the previous round's policy. None: the init model."""


@dataclass
class PPOStageConfig(StageArgsMixin, TrainingArguments):
    """PPO stage (the project's own trainer, alignment.rl.ppo_trainer): transformers' TrainingArguments for the
    optimiser, schedule, logging and checkpoints, plus the RLHF-PPO knobs.

    One *iteration* = generate for `rollout_batch_size` prompts per process, score, then `ppo_epochs` passes over
    them in shuffled mini-batches of `per_device_train_batch_size x gradient_accumulation_steps`. `max_steps`
    counts iterations (the x-axis in W&B); `save_steps` and `logging_steps` too.
    """

    data: DataConfig = field(default_factory=DataConfig)
    """Prompts (any prompt source: rows' `prompt`; `gold` specs are kept for rule rewards)."""
    eval_data: DataConfig | None = None
    model: ModelConfig | None = None
    """Per-stage model override (tuning method); the weights come from `init_from`."""
    init_from: str = "sft"
    """`sft`: this pipeline's SFT artifact (also the frozen reference); `model`: the `model` section; or a path."""
    reference_from: str | None = None
    """The frozen reference of the KL penalty, when it is not `init_from`: `sft` or an artifact path (a second
    model in memory, with LoRA too). None: the init model (with LoRA the policy with its adapter disabled)."""
    reward_model: str = "reward"
    """A reward_models spec: `reward` (this pipeline's RM artifact), an RM path, `rule:tasks`, `rule:gsm8k`, or
    `mix:0.5*reward+0.5*rule:tasks`."""
    value_model: str = "auto"
    """Critic initialisation: `auto` (the RM artifact when the reward is a single learned RM, else the policy's
    init model with a fresh value head), `reward`, `policy`, or a sequence-classification model path."""
    critic_trainable_last_n_blocks: int | None = None
    """Train only the critic's last N blocks (+ value head); None trains it whole."""
    cache_critic_trunk: bool = True
    """With a partly frozen critic, keep the frozen blocks' output from the rollout and run only the trained blocks
    in the PPO epochs (the frozen trunk's activations do not change); checked against the full pass once per run,
    off under ZeRO-3 (sharded blocks). Same values, less compute; not part of the config hash."""
    min_rm_accuracy: float = 0.6
    """Refuse to optimise against a learned RM whose held-out accuracy (diagnostics.json) is lower."""
    force: bool = False
    """Optimise even against an RM below `min_rm_accuracy` or without diagnostics."""
    padding_free: bool = True
    """Pack each micro-batch's sequences end to end into one row without padding for the forward passes after
    generation (the rollout's and the PPO epochs'); attention stays within each sequence (transformers' `sdpa` runs
    once per sequence, flash attention takes the bounds). The same log-probs and values to float rounding, without
    the compute that left-padded prompts and right-padded responses waste. Not hashed."""
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    """The rollout's generation engine (`alignment.generation`): `backend: hf` decodes with the training policy;
    `vllm` with an in-process vLLM engine synced after each update (the trainer then recomputes the log-probs it
    optimises, logs the engine/trainer mismatch, and with `importance_sampling_cap` weighs tokens by the capped
    ratio); `auto` (default) takes vLLM where it is installed and runs here, else `hf`."""
    fold_adapter_for_generation: bool = True
    """With LoRA, generate with the adapter folded into a temporary copy of the adapted weights (one matmul per
    linear instead of three; the originals are put back untouched); off under ZeRO-3. The reference's log-probs
    and the PPO updates use the adapter as it is. Costs one copy of the adapted weights while generating; not
    hashed."""
    logprobs_from_generation: bool = True
    """Keep each sampled token's log-prob from the logits it was drawn from (divided by `temperature`) instead of
    recomputing the policy's log-probs with a forward pass after generation, as TRL's and OpenAI's PPO do: one
    forward pass less per rollout. Checked once per run against a full pass; above
    `generation_logprob_tolerance` the trainer falls back to recomputing, with a warning."""
    generation_logprob_tolerance: float = 0.05
    """Mean |log-prob difference| per response token allowed between sampling and a full forward pass (fp32 on
    CPU: ~4e-6; a wrong temperature or a filtered distribution: tenths of a nat)."""
    rollout_batch_size: int = 16
    """Prompts per process per iteration."""
    ppo_epochs: int = 4
    max_new_tokens: int = 64
    temperature: float = 0.7
    """Sampling temperature; every log-prob (sampling, reference, PPO updates) is taken from logits divided by it
    (N+ details #23)."""
    kl_coef: float = 0.05
    """Initial coefficient of the per-token KL penalty to the reference."""
    adaptive_kl: bool = False
    """Ziegler et al.'s controller: move kl_coef so that the KL per sequence approaches `target_kl`."""
    target_kl: float = 6.0
    kl_horizon: int = 10000
    kl_estimator: Literal["k1", "k2", "k3"] = "k1"
    gamma: float = 1.0
    lam: float = 0.95
    cliprange: float = 0.2
    cliprange_value: float | None = 0.2
    vf_coef: float = 0.1
    whiten_rewards: bool = False
    """Whiten the per-token rewards before GAE (off by default: it shifts the KL penalty too)."""
    missing_eos_penalty: float | None = 1.0
    """Subtracted from the score of responses that never emit EOS; null keeps them unpenalised."""
    reward_batch_size: int = 16
    sample_table_every: int = 10
    """Log a W&B table of prompts, completions and rewards every N iterations (0: never)."""


@dataclass
class TRLRewardStageFields:
    """What the GRPO and RLOO stages add to TRL's configs: prompts, initialisation and the reward spec."""

    data: DataConfig = field(default_factory=DataConfig)
    eval_data: DataConfig | None = None
    model: ModelConfig | None = None
    init_from: str = "sft"
    reward_model: str = "reward"
    """A reward_models spec, as for PPO (`reward`, a path, `rule:tasks`, `mix:...`)."""
    min_rm_accuracy: float = 0.6
    force: bool = False


@dataclass
class GRPOStageConfig(StageArgsMixin, TRLRewardStageFields, GRPOConfig):
    """GRPO stage: TRL's GRPOConfig; rewards from reward_models specs."""


@dataclass
class RLOOStageConfig(StageArgsMixin, TRLRewardStageFields, RLOOConfig):
    """RLOO stage: TRL's RLOOConfig; rewards from reward_models specs."""


STAGE_CONFIGS: dict[str, type] = {
    "sft": SFTStageConfig,
    "reward": RewardStageConfig,
    "dpo": DPOStageConfig,
    "ppo": PPOStageConfig,
    "grpo": GRPOStageConfig,
    "rloo": RLOOStageConfig,
}
