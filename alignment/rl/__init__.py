"""Reinforcement learning from a reward: the project's PPO and the reward adapters for TRL's GRPO / RLOO."""
