"""A model plugin: the exact velocity of data x0 ~ N(center, scale^2 I) on the path x_t = a(t) x0 + s(t) x1.

With v = a^2 scale^2 + s^2 (per dimension), the posterior means are
    E[x0 | x_t] = center + a scale^2 (x - a center) / v,   E[x1 | x_t] = s (x - a center) / v,
and the velocity is u = a'(t) E[x0 | x_t] + s'(t) E[x1 | x_t] (no division by t: fine at both ends).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from flowscale_ray.core.interpolants import get_interpolant
from flowscale_ray.models.base import Condition, FlowModel


class ToyGaussianFlow(FlowModel):
    """Unconditional: prompts are ignored (each prompt still gets one condition row)."""

    def __init__(self, center: Sequence[float], scale: float, interpolant: str) -> None:
        self.center = torch.tensor(list(center), dtype=torch.float64)
        if self.center.ndim != 1 or self.center.numel() == 0:
            raise ValueError(f"model.options.center: expected a non-empty list of numbers, got {center!r}")
        if not scale > 0:
            raise ValueError(f"model.options.scale: must be > 0, got {scale}")
        self.scale = float(scale)
        self.interpolant = get_interpolant(interpolant)
        self.latent_shape = (self.center.numel(),)
        self.model_id = "toy_gaussian"

    def encode(self, prompts: Sequence[str]) -> Condition:
        return {"row": torch.zeros(len(prompts), 1)}

    def velocity(self, x: Tensor, t: Tensor, cond: Condition) -> Tensor:
        x64 = x.to(torch.float64)
        t64 = torch.as_tensor(t, dtype=torch.float64).reshape(-1, 1)
        interp = self.interpolant
        a, s = interp.alpha(t64), interp.sigma(t64)
        diff = x64 - a * self.center
        var = a**2 * self.scale**2 + s**2
        x0 = self.center + a * self.scale**2 * diff / var
        x1 = s * diff / var
        return (interp.d_alpha(t64) * x0 + interp.d_sigma(t64) * x1).to(x.dtype)

    def decode(self, x0: Tensor) -> Tensor:
        return x0  # analytic model: rewards score the sample itself


def toy_gaussian(center: Sequence[float] = (2.0, -1.0), scale: float = 0.5, interpolant: str = "linear") -> FlowModel:
    """The factory the entry point names; job-file `model.options` are its keyword arguments."""
    return ToyGaussianFlow(center, scale, interpolant)
