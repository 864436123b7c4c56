"""Dynamics: one sampling configuration (path, ODE/SDE, diffusion, grid, final step) applied to a model.

The model predicts velocity on its native path (`source`, linear for FLUX/SD3). When the sampler runs on
another path (`target`, e.g. VP), each velocity query goes through the SNR-matched time conversion of spec
1.4. Particle latents live on the target path. All step math runs in float32 or wider.

Steps (spec 1.3), with ds = s - s_next > 0:
    ODE:  x_next = x - u ds
    SDE:  x_next = x - (u - g^2/2 * score) ds + g sqrt(ds) z,   g = norm * shape(s)
Final step to s=0 ('final_step'):
    'denoise': x_0 = x0_hat(x, u, s), the exact jump to the posterior mean (for the linear ODE this is
               the Euler step itself; it is what the reference code returns).
    'euler':   the sampler's own Euler / noise-free Euler-Maruyama step to 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from flowscale_ray.core.conversions import (
    TimeConversion,
    _bcast,
    convert_velocity,
    time_conversion,
    velocity_to_score,
    velocity_to_x0,
)
from flowscale_ray.core.diffusion import DIFFUSION_SCHEDULES, diffusion_coefficient
from flowscale_ray.core.guidance import GuidanceSpec, step_index
from flowscale_ray.core.interpolants import INTERPOLANTS, Interpolant, get_interpolant
from flowscale_ray.core.timegrid import TIME_GRIDS, time_grid

FINAL_STEPS = ("denoise", "euler")

# Named presets used by the paper's tables: path + ODE/SDE.
SAMPLER_PRESETS: dict[str, dict[str, object]] = {
    "linear-ode": {"interpolant": "linear", "sde": False},
    "linear-sde": {"interpolant": "linear", "sde": True},
    "vp-sde": {"interpolant": "vp", "sde": True},
    "vp-ode": {"interpolant": "vp", "sde": False},
}


MAX_STEPS = 10_000  # a grid of more steps is a typo, not a sampler (and would take minutes to build)


@dataclass(frozen=True)
class SamplerSpec:
    """How particles move. Defaults are the paper's: VP-SDE, g = 3 s^2, 10 steps on the sqrt grid."""

    interpolant: str = "vp"
    sde: bool = True
    diffusion: str = "square"
    diffusion_norm: float = 3.0
    steps: int = 10
    grid: str = "sqrt"
    final_step: str = "denoise"
    shift: float = 1.0  # timestep shift applied to the grid (timegrid.shift_time); SD3 3.0, FLUX.1-dev exp(mu)
    guidance: GuidanceSpec | None = None  # DPS-style reward-gradient guidance (core.guidance); None: off

    def __post_init__(self) -> None:
        if self.interpolant not in INTERPOLANTS:
            raise ValueError(f"sampler.interpolant: unknown {self.interpolant!r}; allowed: {', '.join(INTERPOLANTS)}")
        if self.diffusion not in DIFFUSION_SCHEDULES:
            raise ValueError(
                f"sampler.diffusion: unknown {self.diffusion!r}; allowed: {', '.join(DIFFUSION_SCHEDULES)}"
            )
        if self.grid not in TIME_GRIDS:
            raise ValueError(f"sampler.grid: unknown {self.grid!r}; allowed: {', '.join(TIME_GRIDS)}")
        if self.final_step not in FINAL_STEPS:
            raise ValueError(f"sampler.final_step: unknown {self.final_step!r}; allowed: {', '.join(FINAL_STEPS)}")
        if not 2 <= self.steps <= MAX_STEPS:
            raise ValueError(f"sampler.steps: must be 2 to {MAX_STEPS}, got {self.steps}")
        if not (isinstance(self.shift, int | float) and 0 < self.shift < float("inf")):
            raise ValueError(f"sampler.shift: must be a finite number > 0, got {self.shift!r}")
        if not 0 <= self.diffusion_norm < float("inf"):
            raise ValueError(f"sampler.diffusion_norm: must be a finite number >= 0, got {self.diffusion_norm}")
        object.__setattr__(self, "guidance", GuidanceSpec.from_value(self.guidance))
        if self.guided and not self.sde:
            raise ValueError(
                "sampler.guidance: needs an SDE sampler (sde: true); with g = 0 the guidance term vanishes"
            )

    @property
    def guided(self) -> bool:
        """Whether reward-gradient guidance is on (a guidance section with scale > 0)."""
        return self.guidance is not None and self.guidance.active

    @property
    def label(self) -> str:
        return f"{self.interpolant}-{'sde' if self.sde else 'ode'}"

    def grid_times(self) -> tuple[float, ...]:
        return time_grid(self.grid, self.steps, self.shift)

    def guided_moves(self) -> Callable[[float], bool] | None:
        """Whether a move starting at time s is a guided step (None without guidance): what the executors charge
        gradients by and the plans count them by (search.plan)."""
        if self.guidance is None or not self.guided:
            return None
        grid, guidance = self.grid_times(), self.guidance
        return lambda s: guidance.guides(step_index(s, grid), len(grid) - 1)


class Dynamics:
    """Velocity queries and particle moves for one SamplerSpec on a model's native path."""

    def __init__(self, spec: SamplerSpec, source: Interpolant) -> None:
        self.spec = spec
        self.source = source
        self.target = get_interpolant(spec.interpolant)
        self.converts = self.target != self.source

    # -- velocity ---------------------------------------------------------------------------------
    def model_query(self, x: Tensor, s: Tensor) -> tuple[Tensor, Tensor, TimeConversion | None]:
        """(x, t) at which to call the model for target state x at target time s, and the conversion."""
        s = s.to(torch.float64)
        if not self.converts:
            return x, s, None
        conv = time_conversion(self.source, self.target, s)
        return x / _bcast(conv.scale, x), conv.source_time, conv

    def target_velocity(self, x: Tensor, u_model: Tensor, conv: TimeConversion | None) -> Tensor:
        """The velocity on the target path from the model's output at the converted query."""
        u_model = u_model.to(x.dtype)
        return u_model if conv is None else convert_velocity(conv, x, u_model)

    # -- derived quantities -------------------------------------------------------------------------
    def x0(self, x: Tensor, u: Tensor, s: Tensor) -> Tensor:
        return velocity_to_x0(self.target, x, u, s.to(torch.float64))

    def g(self, s: Tensor) -> Tensor:
        return diffusion_coefficient(self.spec.diffusion, self.spec.diffusion_norm, s, self.target)

    # -- moves ----------------------------------------------------------------------------------------
    def step(
        self, x: Tensor, u: Tensor, s: Tensor, s_next: Tensor, noise: Tensor | None, guide: Tensor | None = None
    ) -> Tensor:
        """One Euler (ODE) or Euler-Maruyama (SDE) step from s to s_next < s. `noise` ~ N(0, I) for SDE.
        `guide` (SDE only) is added to the score: scale * grad_x r(x0_hat(x)) for guided rows (core.guidance)."""
        s, s_next = s.to(torch.float64), s_next.to(torch.float64)
        ds = s - s_next
        if not self.spec.sde:
            return x - _bcast(ds, x) * u
        g = self.g(s)
        score = velocity_to_score(self.target, x, u, s)
        if guide is not None:
            score = score + guide.to(score.dtype)
        drift = u - _bcast(0.5 * g**2, x) * score
        out = x - _bcast(ds, x) * drift
        if noise is not None:
            out = out + _bcast(g * torch.sqrt(ds), x) * noise
        return out

    def renoise(self, x: Tensor, s: Tensor, s_next: Tensor, noise: Tensor) -> Tensor:
        """Forward (noising) kernel from s to s_next > s on the target path (Search over Paths):
        x' = (a'/a) x + sqrt(sig'^2 - (a'/a)^2 sig^2) eps."""
        s, s_next = s.to(torch.float64), s_next.to(torch.float64)
        a, sig = self.target.alpha(s), self.target.sigma(s)
        a2, sig2 = self.target.alpha(s_next), self.target.sigma(s_next)
        ratio = a2 / a
        std = torch.sqrt(torch.clamp(sig2**2 - ratio**2 * sig**2, min=0.0))
        return _bcast(ratio, x) * x + _bcast(std, x) * noise

    def final(self, x: Tensor, u: Tensor, s: Tensor) -> Tensor:
        """The last move to s = 0 (see module docstring)."""
        if self.spec.final_step == "denoise":
            return self.x0(x, u, s)
        return self.step(x, u, s, torch.zeros_like(s, dtype=torch.float64), noise=None)


# Past this factor the sampler's intermediate states are far off the marginals a model was trained on: the
# built-in model's samples saturate from about 3000 (VP-SDE, g = 12 s^2, 10 steps); 160 (g = 10 s^2) still samples
# normally (benchmarks.counting_probes noise-edge). A warning, not an error: the figure is from one model.
OVERSHOOT_WARNING = 1000.0


def gaussian_overshoot(spec: SamplerSpec, data_variance: float = 0.25) -> tuple[float, int, float]:
    """The sampler on data x0 ~ N(0, data_variance I), whose exact velocity on the sampled path is linear in x:
    each step maps the state's variance exactly (x' = a x + b eps), so this is a closed form, not a Monte Carlo.
    Returns the largest factor (>= 1) by which a state's variance misses the true marginal's, the index of the
    step that lands there (the final move to 0 excluded), and the final sample's variance (data_variance for an
    exact sampler; with `final_step: denoise` the last move returns a posterior mean, whose variance is smaller).
    An Euler-Maruyama step with a large g overshoots."""
    dyn = Dynamics(spec, get_interpolant(spec.interpolant))
    path, grid, v = dyn.target, spec.grid_times(), float(data_variance)
    one = torch.ones(1, 1, dtype=torch.float64)
    var, worst, where = 1.0, 1.0, 0  # the sampler starts from N(0, I), the marginal at s_0 = 1

    def velocity(k: int) -> tuple[Tensor, Tensor]:  # (s_k, u at x = 1): the exact velocity is u = c(s) x
        s = torch.full((1,), grid[k], dtype=torch.float64)
        a, sig = path.alpha(s), path.sigma(s)
        return s, (path.d_alpha(s) * a * v + path.d_sigma(s) * sig) / (a * a * v + sig * sig) * one

    for k in range(len(grid) - 2):
        s, u = velocity(k)
        s_next = torch.full((1,), grid[k + 1], dtype=torch.float64)
        gain = float(dyn.step(one, u, s, s_next, torch.zeros_like(one)))
        spread = float(dyn.step(0 * one, 0 * one, s, s_next, one)) if spec.sde else 0.0
        var = gain * gain * var + spread * spread
        want = float(path.alpha(s_next) ** 2 * v + path.sigma(s_next) ** 2)
        factor = max(var / want, want / var)
        if factor > worst:
            worst, where = factor, k + 1
    s, u = velocity(len(grid) - 2)  # the final move to 0: deterministic
    gain = float(dyn.final(one, u, s))
    return worst, where, gain * gain * var
