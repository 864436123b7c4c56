"""Analytic Gaussian-mixture flow: the exact velocity of a diagonal Gaussian mixture on any path.

Data p0 = sum_k pi_k N(mu_k, diag(v_k)). Under x_t = alpha x0 + sigma x1 the marginal is
p_t = sum_k pi_k N(alpha mu_k, alpha^2 v_k + sigma^2), and with responsibilities w_k(x, t):
    E[x0 | x, k] = mu_k + alpha v_k (x - alpha mu_k) / (alpha^2 v_k + sigma^2)
    x0_hat = sum_k w_k E[x0 | x, k],  x1_hat = (x - alpha x0_hat) / sigma
    u = d_alpha x0_hat + d_sigma x1_hat
Everything is computed in float64. Used as a model with closed-form answers for the tests, and as the
fast embedded default of the foundation (2-D and high-dimensional variants).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from flowscale_ray.core.interpolants import Interpolant, LinearInterpolant
from flowscale_ray.models.base import Condition, FlowModel


class GaussianMixtureFlow(FlowModel):
    """Exact velocity model for a diagonal Gaussian mixture (unconditional: prompts are ignored)."""

    def __init__(
        self,
        means: Tensor,
        variances: Tensor,
        weights: Tensor,
        interpolant: Interpolant | None = None,
        model_id: str = "gmm",
    ) -> None:
        means = torch.as_tensor(means, dtype=torch.float64)
        variances = torch.as_tensor(variances, dtype=torch.float64)
        weights = torch.as_tensor(weights, dtype=torch.float64)
        if means.ndim != 2 or variances.shape != means.shape or weights.shape != means.shape[:1]:
            raise ValueError("means [K, D], variances [K, D] and weights [K] must agree")
        if (variances <= 0).any() or (weights <= 0).any():
            raise ValueError("variances and weights must be positive")
        self.means = means
        self.variances = variances
        self.weights = weights / weights.sum()
        self.interpolant = interpolant or LinearInterpolant()
        self.latent_shape = (means.shape[1],)
        self.model_id = model_id
        self.calls = 0  # rows evaluated, to audit NFE accounting in tests

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    # -- contract ----------------------------------------------------------------------------------
    def encode(self, prompts: Sequence[str]) -> Condition:
        return {"row": torch.zeros(len(prompts), 1)}

    def velocity(self, x: Tensor, t: Tensor, cond: Condition) -> Tensor:
        self.calls += x.shape[0]
        return self.exact_velocity(self.interpolant, x, t)

    def decode(self, x0: Tensor) -> Tensor:
        return x0

    # -- closed forms --------------------------------------------------------------------------------
    def _posterior(self, interp: Interpolant, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Responsibilities [B, K] and per-component conditional means E[x0 | x, k] [B, K, D]."""
        x64 = x.to(torch.float64)
        t64 = torch.as_tensor(t, dtype=torch.float64).reshape(-1, 1, 1)
        a, s = interp.alpha(t64), interp.sigma(t64)
        var = a**2 * self.variances + s**2  # [B, K, D]
        diff = x64[:, None, :] - a * self.means  # [B, K, D]
        logp = -0.5 * ((diff**2) / var + torch.log(2 * math.pi * var)).sum(-1) + torch.log(self.weights)
        resp = torch.softmax(logp, dim=-1)
        cond_mean = self.means + a * self.variances * diff / var
        return resp, cond_mean

    def exact_x0(self, interp: Interpolant, x: Tensor, t: Tensor) -> Tensor:
        resp, cond_mean = self._posterior(interp, x, t)
        return (resp[..., None] * cond_mean).sum(1)

    def exact_velocity(self, interp: Interpolant, x: Tensor, t: Tensor) -> Tensor:
        t64 = torch.as_tensor(t, dtype=torch.float64).reshape(-1, 1)
        x64 = x.to(torch.float64)
        x0 = self.exact_x0(interp, x64, t64.reshape(-1))
        a, s = interp.alpha(t64), interp.sigma(t64)
        x1 = (x64 - a * x0) / s
        return (interp.d_alpha(t64) * x0 + interp.d_sigma(t64) * x1).to(x.dtype)

    def log_density(self, interp: Interpolant, x: Tensor, t: Tensor) -> Tensor:
        """log p_t(x) of the marginal [B]."""
        x64 = x.to(torch.float64)
        t64 = torch.as_tensor(t, dtype=torch.float64).reshape(-1, 1, 1)
        a, s = interp.alpha(t64), interp.sigma(t64)
        var = a**2 * self.variances + s**2
        diff = x64[:, None, :] - a * self.means
        logp = -0.5 * ((diff**2) / var + torch.log(2 * math.pi * var)).sum(-1) + torch.log(self.weights)
        return torch.logsumexp(logp, dim=-1)

    def sample_data(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """n exact samples from p0 and their component labels."""
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.means[comp] + z * self.variances[comp].sqrt(), comp

    def mixture_mean(self) -> Tensor:
        return (self.weights[:, None] * self.means).sum(0)

    def mixture_covariance(self) -> Tensor:
        mean = self.mixture_mean()
        cov = torch.zeros(self.dim, self.dim, dtype=torch.float64)
        for k in range(self.means.shape[0]):
            d = (self.means[k] - mean)[:, None]
            cov += self.weights[k] * (torch.diag(self.variances[k]) + d @ d.T)
        return cov

    def component_of(self, samples: Tensor) -> Tensor:
        """Most likely component of each data sample [B] (for mode-weight checks)."""
        resp, _ = self._posterior(LinearInterpolant(), samples, torch.zeros(samples.shape[0]))
        return resp.argmax(-1)


def gmm2d(interpolant: str = "linear") -> GaussianMixtureFlow:
    """Three well-separated 2-D modes with unequal weights and anisotropic variances."""
    from flowscale_ray.core.interpolants import get_interpolant

    return GaussianMixtureFlow(
        means=torch.tensor([[-3.0, 0.0], [3.0, 2.0], [0.5, -3.5]]),
        variances=torch.tensor([[0.30, 0.60], [0.50, 0.20], [0.25, 0.25]]),
        weights=torch.tensor([0.5, 0.3, 0.2]),
        interpolant=get_interpolant(interpolant),
        model_id="gmm2d",
    )


def gmm_highdim(dim: int = 64, modes: int = 4, seed: int = 0) -> GaussianMixtureFlow:
    """`modes` random modes in `dim` dimensions (random directions, norm 3 dim^(1/4)), variances in
    [0.2, 0.6]), fixed by `seed`."""
    if dim < 1 or modes < 1:
        raise ValueError("gmm_highdim needs dim >= 1 and modes >= 1")
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn(modes, dim, generator=gen, dtype=torch.float64)
    means = 3.0 * means / means.norm(dim=1, keepdim=True) * math.sqrt(dim) ** 0.5
    variances = 0.2 + 0.4 * torch.rand(modes, dim, generator=gen, dtype=torch.float64)
    weights = 1.0 + torch.rand(modes, generator=gen, dtype=torch.float64)
    return GaussianMixtureFlow(means, variances, weights, model_id=f"gmm_highdim{dim}")


RARE_PLACES = ("far", "centre")


def gmm_rare(rare: str = "far", interpolant: str = "linear", rare_weight: float = 0.02) -> GaussianMixtureFlow:
    """A regression scenario for search methods: eight common modes on a circle of radius 4 (std 0.5) and one
    rare mode (std 0.5, weight `rare_weight`, the last component) either far outside the ring (`rare: far`: at
    distance 7 from the centre, half-way in angle between two common modes) or at its centre (`rare: centre`).

    With a reward that targets the rare mode, early improvements are easy (moving towards the nearest common
    mode improves the reward) and the best answer is rare: a method that commits its chains early ends on the
    ring. `model.rare_index` is the rare mode's component index."""
    from flowscale_ray.core.interpolants import get_interpolant

    if rare not in RARE_PLACES:
        raise ValueError(f"model.options.rare: must be one of {', '.join(RARE_PLACES)}, got {rare!r}")
    if not 0 < rare_weight < 1:
        raise ValueError(f"model.options.rare_weight: must be in (0, 1), got {rare_weight}")
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    ring = 4.0 * torch.stack([angles.cos(), angles.sin()], dim=1)
    if rare == "far":
        a = math.pi / 8
        centre = torch.tensor([[7.0 * math.cos(a), 7.0 * math.sin(a)]], dtype=torch.float64)
    else:
        centre = torch.zeros(1, 2, dtype=torch.float64)
    weights = torch.cat([torch.full((8,), (1 - rare_weight) / 8, dtype=torch.float64), torch.tensor([rare_weight])])
    model = GaussianMixtureFlow(
        means=torch.cat([ring, centre]),
        variances=torch.full((9, 2), 0.25, dtype=torch.float64),
        weights=weights,
        interpolant=get_interpolant(interpolant),
        model_id=f"gmm_rare_{rare}",
    )
    model.rare_index = 8  # type: ignore[attr-defined]
    return model
