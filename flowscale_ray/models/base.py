"""The model contract every flow model implements (FLUX, SD3, the built-in model, analytic test models).

Time convention: t in [0, 1], t=1 noise, t=0 data, on the model's native path (`interpolant`, linear
for rectified-flow models). Each adapter absorbs its model's own quirks (timestep scaling, latent
packing, guidance) so that callers only see:

    cond = model.encode(prompts)            # once per prompt; dict of tensors with a leading batch dim
    u    = model.velocity(x, t, cond)       # x [B, *latent_shape], t [B], cond rows aligned with x
    img  = model.decode(x0)                 # [B, C, H, W] in [0, 1] (analytic models: the sample itself)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import Tensor

from flowscale_ray.core.interpolants import Interpolant, LinearInterpolant

Condition = dict[str, Tensor]


def take_condition(cond: Condition, index: Tensor) -> Condition:
    """Rows of a batched condition (index [B] of row numbers)."""
    return {k: v.index_select(0, index.to(v.device)) for k, v in cond.items()}


def cat_conditions(conds: Sequence[Condition]) -> Condition:
    """Concatenate conditions along the batch dimension (all must have the same keys)."""
    if not conds:
        return {}
    keys = conds[0].keys()
    return {k: torch.cat([c[k] for c in conds], dim=0) for k in keys}


class FlowModel(ABC):
    """A velocity model. Subclasses set `model_id`, `latent_shape` and optionally `interpolant`."""

    model_id: str = "model"
    latent_shape: tuple[int, ...] = ()
    interpolant: Interpolant = LinearInterpolant()
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32

    @abstractmethod
    def encode(self, prompts: Sequence[str]) -> Condition:
        """Encode prompts into a batched condition (one row per prompt)."""

    @abstractmethod
    def velocity(self, x: Tensor, t: Tensor, cond: Condition) -> Tensor:
        """Velocity dx/dt on the native path at (x, t); one row of `cond` per row of x."""

    @abstractmethod
    def decode(self, x0: Tensor) -> Tensor:
        """Latent data estimate -> what rewards score (images in [0, 1], or the sample itself)."""
