"""Rewards: score decoded samples for a batch of prompts. See base.Reward and the registry."""

from flowscale_ray.rewards.base import REWARDS, Reward, build_reward, register_reward

__all__ = ["REWARDS", "Reward", "build_reward", "register_reward"]
