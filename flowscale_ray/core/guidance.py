"""Gradient guidance for differentiable rewards (DPS-style; RBF paper appendix E.1).

The target of reward-aligned sampling is p*_0 ~ p_0 exp(r / beta) (spec 1.7). Its score at time s is
approximated, as in Diffusion Posterior Sampling, by the model's score plus (1/beta) times the gradient of the
reward of the model's posterior-mean estimate:

    score*(x, s) = score(x, s) + scale * grad_x r(decode(x0_hat(x, s))),     scale = 1 / beta

where x0_hat(x, s) = (sigma u(x, s) - d_sigma x) / (d_alpha sigma - d_sigma alpha) is computed from the model's
velocity on the sampled path (through the interpolant conversion when the sampler runs on VP), so the gradient
flows through the reward, the decoder, the x0 formula and the model. The SDE step then uses the guided drift

    f = u - (g^2 / 2) score*,      x_next = x - f ds + g sqrt(ds) z,

that is the unguided step plus ds (g^2 / 2) scale grad_x r. With g = 0 (an ODE sampler) the term vanishes,
so guidance requires `sde: true`.

Which steps are guided: step k is the move that starts at grid time s_k (k = 0 .. M-1; a state between grid
points belongs to the step of the grid interval it lies in). `steps: [start, end]` guides start <= k < end;
`steps: f` (a fraction) guides the first f of the M steps (k < f M); unset guides every step. The final move
to s = 0 is never guided (it is the executor's denoising jump or noise-free Euler step).

Cost: the velocity cached on a particle was computed without autograd (and is reused, bit for bit, as the
unguided part of the drift), so a guided step evaluates the model once more with autograd and backpropagates
through it. The gradient is cached on the particle state: the children of one state (SVDD's K proposals, RBF's
candidates from the same state) share one gradient. Each gradient is charged 3 NFE (search.protocol's
GUIDED_STEP_NFE): the forward pass with autograd (1) and the backward pass (2, the usual cost of a backward
relative to a forward). The reward's own forward and backward on the guided state are part of that charge,
not verifier calls.

Memory: the graph exists only inside `reward_gradient` (autograd enabled there, even under inference mode) and
the returned gradient is detached, so nothing is kept across steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class GuidanceSpec:
    """DPS-style gradient guidance: the SDE drift uses score + scale * grad_x r(x0_hat(x)) on the guided steps."""

    scale: float = 1.0  # 1/beta, the weight of the reward gradient in the score; 0 turns guidance off
    steps: tuple[int, int] | float | None = None  # [start, end) of guided steps, or the leading fraction; None: all

    def __post_init__(self) -> None:
        if isinstance(self.scale, bool) or not isinstance(self.scale, int | float) or not math.isfinite(self.scale):
            raise ValueError(f"sampler.guidance.scale: must be a finite number >= 0, got {self.scale!r}")
        if self.scale < 0:
            raise ValueError(f"sampler.guidance.scale: must be a finite number >= 0, got {self.scale!r}")
        steps = self.steps
        if isinstance(steps, list):  # YAML gives a list; keep the spec hashable
            object.__setattr__(self, "steps", steps := tuple(steps))
        if steps is None:
            return
        if isinstance(steps, tuple):
            ok = (
                len(steps) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) for v in steps)
                and 0 <= steps[0] < steps[1]
            )
        else:
            ok = isinstance(steps, int | float) and not isinstance(steps, bool) and 0 < steps <= 1
        if not ok:
            raise ValueError(
                "sampler.guidance.steps: must be [start, end] with integers 0 <= start < end (steps start <= k < end "
                f"are guided) or a fraction in (0, 1] of the steps from the start, got {steps!r}"
            )

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
        """Job files give a mapping: accept a dict for this nested section (field types stay strict)."""
        from pydantic_core import core_schema

        schema = handler(source)
        handler.resolve_ref_schema(schema)["strict"] = False
        return core_schema.no_info_before_validator_function(_steps_as_tuple, schema)

    @property
    def active(self) -> bool:
        return self.scale > 0

    def guides(self, k: int, total: int) -> bool:
        """Whether step k (0-based, of `total` steps) is guided. The last step (k = total - 1) never is."""
        if not self.active or not 0 <= k < total - 1:
            return False
        if self.steps is None:
            return True
        if isinstance(self.steps, tuple):
            return self.steps[0] <= k < self.steps[1]
        return k < self.steps * total

    @classmethod
    def from_value(cls, value: Any) -> GuidanceSpec | None:
        """A GuidanceSpec from a job file's mapping (or an instance, or None)."""
        if value is None or isinstance(value, GuidanceSpec):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"sampler.guidance: expected a mapping {{scale: ..., steps: ...}}, got {value!r}")
        unknown = sorted(set(value) - {"scale", "steps"})
        if unknown:
            raise ValueError(f"sampler.guidance: unknown key {unknown[0]!r}; allowed: scale, steps")
        return cls(**value)


def _steps_as_tuple(value: Any) -> Any:
    """A job file's `steps: [start, end]` (a YAML list) as the tuple the frozen spec holds."""
    if isinstance(value, dict) and isinstance(value.get("steps"), list):
        return {**value, "steps": tuple(value["steps"])}
    return value


def step_index(s: float, grid: Sequence[float]) -> int:
    """The step a move starting at time s belongs to: the grid interval (s_{k+1}, s_k] holding s."""
    return sum(1 for g in grid[1:-1] if g >= s - 1e-12 * max(1.0, abs(s)))


def reward_gradient(
    x: Tensor,
    s: Tensor,
    velocity: Callable[[Tensor, Tensor], Tensor],
    x0_of: Callable[[Tensor, Tensor, Tensor], Tensor],
    decode: Callable[[Tensor], Tensor],
    reward: Callable[[Tensor], Tensor],
) -> Tensor:
    """grad_x r(decode(x0_hat(x, s))) per row of x, detached.

    `velocity(x, s)` is the velocity on the sampled path (model call included), `x0_of(x, u, s)` the x0 estimate,
    `decode` maps x0 to what the reward scores and `reward(images)` returns one value per row. Rows must be
    independent (the gradient of the summed reward is taken); autograd is enabled here even under inference mode.
    """
    with torch.inference_mode(False), torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        u = velocity(xg, s)
        x0 = x0_of(xg, u, s)
        values = reward(decode(x0))
        if not (isinstance(values, Tensor) and values.requires_grad):
            raise ValueError(
                "sampler.guidance: the reward gives no gradient with respect to the sample (the model's velocity, "
                "its decoder or the reward runs without autograd); guidance needs a differentiable model and reward"
            )
        if values.numel() != x.shape[0]:
            raise ValueError(f"reward returned {values.numel()} values for {x.shape[0]} samples")
        (grad,) = torch.autograd.grad(values.sum(), xg)
    return grad.detach()


__all__ = ["GuidanceSpec", "reward_gradient", "step_index"]
