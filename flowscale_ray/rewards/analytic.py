"""Analytic rewards for the Gaussian-mixture models: closed-form, cheap, with known optima."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from flowscale_ray.prompts import Prompt
from flowscale_ray.rewards.base import Reward


class ModeLogDensity(Reward):
    """Per-dimension log-density of one Gaussian mode: r(x) = log N(x; mu, diag(var)) / D.

    With `model` and `mode` the target is that mode of a registered Gaussian-mixture model; otherwise
    `mean` and `variance` give it directly. Maximal at x = mu.
    """

    name = "mode_log_density"

    def __init__(
        self,
        model: str | None = "gmm2d",
        mode: int = 1,
        mean: Sequence[float] | None = None,
        variance: Sequence[float] | None = None,
        model_options: dict | None = None,
    ) -> None:
        if mean is not None:
            self.mean = torch.tensor(mean, dtype=torch.float64)
            self.variance = (
                torch.tensor(variance, dtype=torch.float64) if variance is not None else torch.ones_like(self.mean)
            )
        else:
            from flowscale_ray.models.registry import build_model

            gmm = build_model(model or "gmm2d", model_options)
            means, variances = gmm.means, gmm.variances  # type: ignore[attr-defined]
            if not 0 <= mode < means.shape[0]:
                raise ValueError(f"reward.options.mode: must be in 0..{means.shape[0] - 1}, got {mode}")
            self.mean, self.variance = means[mode], variances[mode]
        if (self.variance <= 0).any():
            raise ValueError("reward.options.variance: must be positive")

    def __call__(self, samples: Tensor, prompts: Sequence[Prompt]) -> Tensor:
        x = samples.to(torch.float64).reshape(samples.shape[0], -1)
        quad = ((x - self.mean) ** 2 / self.variance).sum(-1)
        logdet = torch.log(2 * math.pi * self.variance).sum()
        return -0.5 * (quad + logdet) / x.shape[1]


class NegativeDistance(Reward):
    """r(x) = -||x - target|| (a held-out style check for the analytic models)."""

    name = "negative_distance"

    def __init__(self, target: Sequence[float]) -> None:
        self.target = torch.tensor(target, dtype=torch.float64)

    def __call__(self, samples: Tensor, prompts: Sequence[Prompt]) -> Tensor:
        x = samples.to(torch.float64).reshape(samples.shape[0], -1)
        return -(x - self.target).norm(dim=-1)
