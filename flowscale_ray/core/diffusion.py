"""Diffusion coefficient schedules g(s) for the SDE sampler (spec 1.3).

`s` is the time of the interpolant being sampled (the VP time under VP conversion). The paper's
choice is g = 3 s^2 ('square' with norm 3).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from flowscale_ray.core.interpolants import Interpolant


def _square(s: Tensor, interp: Interpolant) -> Tensor:
    return s**2


def _sigma(s: Tensor, interp: Interpolant) -> Tensor:
    return interp.sigma(s)


def _constant(s: Tensor, interp: Interpolant) -> Tensor:
    return torch.ones_like(s)


def _sin(s: Tensor, interp: Interpolant) -> Tensor:
    return torch.sin(math.pi * s / 2.0)


def _linear(s: Tensor, interp: Interpolant) -> Tensor:
    return s


def _clipping(s: Tensor, interp: Interpolant) -> Tensor:
    return torch.clamp(2.0 * (s - 0.5), min=0.0)


def _exp(s: Tensor, interp: Interpolant) -> Tensor:
    return torch.exp(-(((s - 1.0) / 0.1) ** 2))


def _tan(s: Tensor, interp: Interpolant) -> Tensor:
    return torch.tan(math.pi / 2.0 * torch.clamp(s, max=0.95))


DIFFUSION_SCHEDULES: dict[str, Callable[[Tensor, Interpolant], Tensor]] = {
    "square": _square,
    "sigma": _sigma,
    "constant": _constant,
    "sin": _sin,
    "linear": _linear,
    "clipping": _clipping,
    "exp": _exp,
    "tan": _tan,
}


def diffusion_coefficient(name: str, norm: float, s: Tensor, interp: Interpolant) -> Tensor:
    """g(s) = norm * shape(s) for the named schedule."""
    try:
        shape = DIFFUSION_SCHEDULES[name]
    except KeyError:
        raise ValueError(f"unknown diffusion schedule {name!r}; allowed: {', '.join(DIFFUSION_SCHEDULES)}") from None
    return norm * shape(s, interp)
