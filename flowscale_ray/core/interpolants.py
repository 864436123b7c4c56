"""Interpolants x_t = alpha_t * x0 + sigma_t * x1 (x0 data, x1 ~ N(0, I); t=1 noise, t=0 data).

Every interpolant provides alpha, sigma, their time derivatives and the inverse of the signal-to-noise
ratio rho = alpha / sigma (needed to map one interpolant's time onto another's at matched SNR).
All functions take and return tensors of any shape and keep the input dtype, so identities can be
checked in float64.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor


class Interpolant(ABC):
    """alpha_0 = sigma_1 = 1, alpha_1 = sigma_0 = 0, d_alpha < 0, d_sigma > 0."""

    name: str

    @abstractmethod
    def alpha(self, t: Tensor) -> Tensor: ...

    @abstractmethod
    def sigma(self, t: Tensor) -> Tensor: ...

    @abstractmethod
    def d_alpha(self, t: Tensor) -> Tensor: ...

    @abstractmethod
    def d_sigma(self, t: Tensor) -> Tensor: ...

    @abstractmethod
    def time_from_snr(self, rho: Tensor) -> Tensor:
        """The time t with alpha_t / sigma_t = rho."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash((type(self).__name__, tuple(sorted(vars(self).items()))))


class LinearInterpolant(Interpolant):
    """Rectified flow / CondOT (FLUX, SD3): alpha = 1 - t, sigma = t."""

    name = "linear"

    def alpha(self, t: Tensor) -> Tensor:
        return 1.0 - t

    def sigma(self, t: Tensor) -> Tensor:
        return t

    def d_alpha(self, t: Tensor) -> Tensor:
        return torch.full_like(t, -1.0)

    def d_sigma(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def time_from_snr(self, rho: Tensor) -> Tensor:
        return 1.0 / (1.0 + rho)


class PolynomialInterpolant(Interpolant):
    """Polynomial convex path: alpha = (1 - t)^n, sigma = 1 - (1 - t)^n. n = 1 is the linear path."""

    name = "polynomial"

    def __init__(self, n: float = 2.0) -> None:
        if n <= 0:
            raise ValueError(f"polynomial interpolant needs n > 0, got {n}")
        self.n = float(n)

    def alpha(self, t: Tensor) -> Tensor:
        return (1.0 - t) ** self.n

    def sigma(self, t: Tensor) -> Tensor:
        return 1.0 - (1.0 - t) ** self.n

    def d_alpha(self, t: Tensor) -> Tensor:
        return -self.n * (1.0 - t) ** (self.n - 1.0)

    def d_sigma(self, t: Tensor) -> Tensor:
        return self.n * (1.0 - t) ** (self.n - 1.0)

    def time_from_snr(self, rho: Tensor) -> Tensor:
        a = rho / (1.0 + rho)  # alpha at the matched time
        return 1.0 - a ** (1.0 / self.n)

    def __repr__(self) -> str:
        return f"PolynomialInterpolant(n={self.n})"


class VPInterpolant(Interpolant):
    """Variance-preserving path with a linear beta schedule (spec 1.1), beta_min=0.1, beta_max=20.

    T(s) = (beta_max - beta_min) s^2 / 2 + beta_min s,  alpha = exp(-T/2),  sigma = sqrt(1 - exp(-T)).
    At s=1 alpha is about 0.0066, so sampling starts from pure N(0, I) noise.
    """

    name = "vp"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        if not 0 < beta_min < beta_max:
            raise ValueError(f"vp interpolant needs 0 < beta_min < beta_max, got {beta_min}, {beta_max}")
        self.beta_min = float(beta_min)
        self.beta_max = float(beta_max)

    def integral(self, s: Tensor) -> Tensor:
        return 0.5 * (self.beta_max - self.beta_min) * s**2 + self.beta_min * s

    def beta(self, s: Tensor) -> Tensor:
        return self.beta_min + (self.beta_max - self.beta_min) * s

    def alpha(self, s: Tensor) -> Tensor:
        return torch.exp(-0.5 * self.integral(s))

    def sigma(self, s: Tensor) -> Tensor:
        return torch.sqrt(-torch.expm1(-self.integral(s)))

    def d_alpha(self, s: Tensor) -> Tensor:
        return -0.5 * self.beta(s) * self.alpha(s)

    def d_sigma(self, s: Tensor) -> Tensor:
        return 0.5 * self.beta(s) * torch.exp(-self.integral(s)) / self.sigma(s)

    def time_from_snr(self, rho: Tensor) -> Tensor:
        big_t = -torch.log(rho**2 / (rho**2 + 1.0))
        span = self.beta_max - self.beta_min
        return (-self.beta_min + torch.sqrt(self.beta_min**2 + 2.0 * span * big_t)) / span

    def __repr__(self) -> str:
        return f"VPInterpolant(beta_min={self.beta_min}, beta_max={self.beta_max})"


INTERPOLANTS: dict[str, type[Interpolant]] = {
    "linear": LinearInterpolant,
    "vp": VPInterpolant,
    "polynomial": PolynomialInterpolant,
}


def get_interpolant(name: str, **options: float) -> Interpolant:
    """Build an interpolant by name ('linear', 'vp', 'polynomial')."""
    try:
        cls = INTERPOLANTS[name]
    except KeyError:
        raise ValueError(f"unknown interpolant {name!r}; allowed: {', '.join(INTERPOLANTS)}") from None
    return cls(**options)


def as_time(t: float | Tensor, like: Tensor) -> Tensor:
    """A time value as a float64 tensor broadcastable against `like`'s batch dimension."""
    if isinstance(t, Tensor):
        return t.to(dtype=torch.float64, device=like.device)
    if not math.isfinite(t):
        raise ValueError(f"time must be finite, got {t}")
    return torch.full((like.shape[0],), float(t), dtype=torch.float64, device=like.device)
