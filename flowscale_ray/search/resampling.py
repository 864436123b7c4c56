"""Log-space importance weights, effective sample size and resampling schemes (pure functions).

Resampling schemes take normalised weights [N] and return n ancestor indices; a particle with zero
weight is never selected.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def normalize_log_weights(log_w: Tensor) -> Tensor:
    """Normalised weights from log-weights (stable; -inf entries get weight 0)."""
    return torch.softmax(log_w.to(torch.float64), dim=0)


def effective_sample_size(weights: Tensor) -> float:
    """ESS = 1 / sum w^2 for normalised weights."""
    return float(1.0 / (weights.to(torch.float64) ** 2).sum())


def multinomial(weights: Tensor, n: int, generator: torch.Generator) -> Tensor:
    return torch.multinomial(weights.to(torch.float64), n, replacement=True, generator=generator)


def _from_uniforms(weights: Tensor, u: Tensor) -> Tensor:
    cdf = torch.cumsum(weights.to(torch.float64), 0)
    cdf[-1] = 1.0
    idx = torch.searchsorted(cdf, u, right=True)
    return torch.clamp(idx, max=weights.numel() - 1)


def systematic(weights: Tensor, n: int, generator: torch.Generator) -> Tensor:
    u0 = torch.rand((), generator=generator, dtype=torch.float64)
    return _from_uniforms(weights, (torch.arange(n, dtype=torch.float64) + u0) / n)


def stratified(weights: Tensor, n: int, generator: torch.Generator) -> Tensor:
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    return _from_uniforms(weights, (torch.arange(n, dtype=torch.float64) + u) / n)


RESAMPLERS: dict[str, Callable[[Tensor, int, torch.Generator], Tensor]] = {
    "multinomial": multinomial,
    "systematic": systematic,
    "stratified": stratified,
}
