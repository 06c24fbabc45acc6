"""alignment: SFT, reward models, DPO and PPO on Accelerate / DeepSpeed, chained by one pipeline config."""

__version__ = "0.1.0"
