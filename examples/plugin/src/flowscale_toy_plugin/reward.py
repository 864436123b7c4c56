"""A reward plugin: r(x) = -||x - target||^2 / D (higher is better, maximal at the target)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from flowscale_ray.prompts import Prompt
from flowscale_ray.rewards.base import Reward


class TargetReward(Reward):
    """options: target (a point as a list of numbers). A prompt's `metadata["target"]` overrides it."""

    name = "toy_target"

    def __init__(self, target: Sequence[float] = (2.0, -1.0)) -> None:
        self.target = torch.tensor(list(target), dtype=torch.float64)

    def __call__(self, samples: Tensor, prompts: Sequence[Prompt]) -> Tensor:
        x = samples.to(torch.float64).reshape(samples.shape[0], -1)
        targets = torch.stack(
            [torch.as_tensor(p.metadata.get("target", self.target), dtype=torch.float64) for p in prompts]
        )
        return -((x - targets) ** 2).mean(-1)
