"""Everything that scores (prompt, completion) behind one protocol: learned RMs, rules, and mixes of them.

import reward_models
rm = reward_models.load("runs/quickstart/reward")   # or "rule:tasks", "rule:gsm8k", "mix:0.8*...+0.2*..."
rewards = rm.score(prompts, completions, golds)      # torch.Tensor (N,), float32
"""

from reward_models.base import MixedReward, RewardModel, load

__all__ = ["MixedReward", "RewardModel", "load"]
