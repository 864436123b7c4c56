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


def _mixture(model: str, model_options: dict | None):
    from flowscale_ray.models.registry import build_model

    gmm = build_model(model, model_options)
    if not hasattr(gmm, "log_density") or not hasattr(gmm, "means"):
        raise ValueError(f"reward.options.model: {model!r} is not an analytic Gaussian-mixture model")
    return gmm


class NegativeSquaredDistance(Reward):
    """r(x) = -||x - target||^2. The target is `target`, or a mode of an analytic Gaussian-mixture model
    (`model`, `model_options`; `mode` defaults to the model's rare mode where it has one, e.g. `gmm_rare`)."""

    name = "negative_squared_distance"

    def __init__(
        self,
        target: Sequence[float] | None = None,
        model: str | None = None,
        model_options: dict | None = None,
        mode: int | None = None,
    ) -> None:
        if target is not None:
            if model is not None or mode is not None:
                raise ValueError("reward.options: give either target or model (and mode), not both")
            self.target = torch.tensor(target, dtype=torch.float64)
            return
        if model is None:
            raise ValueError("reward.options: target or model is required")
        gmm = _mixture(model, model_options)
        index = mode if mode is not None else getattr(gmm, "rare_index", None)
        if index is None:
            raise ValueError(f"reward.options.mode: required, {model!r} has no rare mode")
        if not 0 <= index < gmm.means.shape[0]:
            raise ValueError(f"reward.options.mode: must be in 0..{gmm.means.shape[0] - 1}, got {index}")
        self.target = gmm.means[index].clone()

    def __call__(self, samples: Tensor, prompts: Sequence[Prompt]) -> Tensor:
        x = samples.to(torch.float64).reshape(samples.shape[0], -1)
        return -((x - self.target) ** 2).sum(-1)


class DataLogDensity(Reward):
    """The exact data log-density log p0(x) of an analytic Gaussian-mixture model: a held-out score that
    is not the reward being optimised (a sample pushed off the data manifold to please the reward scores
    low here)."""

    name = "data_log_density"

    def __init__(self, model: str = "gmm2d", model_options: dict | None = None) -> None:
        from flowscale_ray.core.interpolants import LinearInterpolant

        self.model = _mixture(model, model_options)
        self._interp = LinearInterpolant()

    def __call__(self, samples: Tensor, prompts: Sequence[Prompt]) -> Tensor:
        x = samples.to(torch.float64).reshape(samples.shape[0], -1)
        return self.model.log_density(self._interp, x, torch.zeros(x.shape[0], dtype=torch.float64))
