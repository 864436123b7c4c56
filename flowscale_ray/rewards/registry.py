"""Reward registry: the built-in rewards as lazy `"module:attribute"` strings, plus plugins.

Imports no reward: a built-in is imported only when it is built. Other packages add rewards through the
entry-point group `flowscale_ray.rewards` (see docs/plugins.md). `build_reward` and `register_reward` live
in `rewards.base` beside the `Reward` contract they wrap.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flowscale_ray.plugins import REWARD_GROUP, Registry, check_callable

RewardFactory = Callable[..., Any]

BUILTIN_REWARDS: dict[str, str] = {
    "counting": "flowscale_ray.builtin.counting:CountingReward",
    "counting_heldout": "flowscale_ray.builtin.heldout:HeldoutCountingReward",
    "aesthetic": "flowscale_ray.rewards.aesthetic:AestheticReward",
    "mode_log_density": "flowscale_ray.rewards.analytic:ModeLogDensity",
    "negative_distance": "flowscale_ray.rewards.analytic:NegativeDistance",
    "negative_squared_distance": "flowscale_ray.rewards.analytic:NegativeSquaredDistance",
    "data_log_density": "flowscale_ray.rewards.analytic:DataLogDensity",
    "clip_score": "flowscale_ray.rewards.clip:ClipScore",
    "pickscore": "flowscale_ray.rewards.clip:PickScore",
    "hps": "flowscale_ray.rewards.clip:HPSv2",
    "image_reward": "flowscale_ray.rewards.image_reward:ImageReward",
    "vqa_score": "flowscale_ray.rewards.vqa:VQAScore",
    "cascade": "flowscale_ray.rewards.cascade:Cascade",
    "weighted_sum": "flowscale_ray.rewards.combine:WeightedSum",
    "object_count": "flowscale_ray.rewards.detection:ObjectCountReward",
    "jpeg_compressibility": "flowscale_ray.rewards.jpeg:JpegCompressibility",
    "jpeg_incompressibility": "flowscale_ray.rewards.jpeg:JpegIncompressibility",
}

REWARDS: Registry[RewardFactory] = Registry("reward", BUILTIN_REWARDS, REWARD_GROUP, check=check_callable)
