"""The reward protocol and `load(spec)`: every scorer in the project behind one call.

    rm = reward_models.load("runs/quickstart/reward")        # a trained RM artifact
    rm = reward_models.load("rule:tasks")                    # the built-in tasks' gold checker
    rm = reward_models.load("rule:gsm8k")                    # final-number exact match
    rm = reward_models.load("mix:0.8*runs/q/reward+0.2*rule:tasks")
    rewards = rm.score(prompts, completions, golds)          # torch.Tensor, float32, shape (N,)

Rules need each row's `gold` spec; learned RMs ignore it. PPO, GRPO/RLOO, evaluation and the service use only this.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class RewardModel(Protocol):
    def score(
        self, prompts: Sequence[Any], completions: Sequence[str], golds: Sequence[dict] | None = None
    ) -> torch.Tensor: ...


class MixedReward:
    """Weighted sum of several rewards: r = sum_i w_i * r_i."""

    def __init__(self, components: list[tuple[float, RewardModel]]) -> None:
        if not components:
            raise ValueError("a mixed reward needs at least one component")
        self.components = components

    def score(
        self, prompts: Sequence[Any], completions: Sequence[str], golds: Sequence[dict] | None = None
    ) -> torch.Tensor:
        total = torch.zeros(len(completions), dtype=torch.float32)
        for weight, component in self.components:
            total += weight * component.score(prompts, completions, golds)
        return total


def load(spec: str | Path, **kwargs: Any) -> RewardModel:
    """A reward from its spec: an RM artifact path, `rule:tasks`, `rule:gsm8k`, or `mix:w*spec+w*spec`."""
    spec = str(spec).strip()
    if spec.startswith("mix:"):
        components = []
        for part in spec[len("mix:") :].split("+"):
            weight_text, sep, inner = part.partition("*")
            if not sep:
                raise ValueError(f"mixed reward part {part!r} must look like 0.5*rule:tasks")
            try:
                weight = float(weight_text)
            except ValueError as error:
                raise ValueError(
                    f"mixed reward part {part!r}: weight {weight_text!r} is not a number"
                ) from error
            components.append((weight, load(inner, **kwargs)))
        return MixedReward(components)
    if spec.startswith("rule:"):
        from reward_models.rules import RuleReward

        return RuleReward(spec[len("rule:") :])
    path = Path(spec)
    if not path.exists():
        raise ValueError(
            f"reward spec {spec!r}: no such RM artifact; use a directory from the reward stage, "
            "rule:tasks, rule:gsm8k or mix:w*spec+w*spec"
        )
    from alignment.artifacts import is_complete
    from reward_models.learned import LearnedRewardModel

    if not is_complete(path) and not (path / "config.json").is_file():
        raise ValueError(f"reward spec {spec!r}: {path} is neither a complete artifact nor a model directory")
    return LearnedRewardModel(path, **kwargs)
