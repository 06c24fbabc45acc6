"""Stage config classes: TRL config classes extended with the project's own fields.

Module-level (not built inside a function) so that transformers can pickle them into checkpoints, and kept apart
from `alignment.config` because importing TRL costs seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from trl import DPOConfig, RewardConfig, SFTConfig

from alignment.config import ModelConfig, StageArgsMixin
from alignment.data import DataConfig


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


STAGE_CONFIGS: dict[str, type] = {"sft": SFTStageConfig, "reward": RewardStageConfig, "dpo": DPOStageConfig}
