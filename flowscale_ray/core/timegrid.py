"""Time grids s_0 = 1 > s_1 > ... > s_M = 0 (spec 1.5).

'uniform': s_k = 1 - k/M. 'sqrt': the paper's adaptive schedule s = sqrt(1 - (1 - t)^2) applied to the
uniform grid, which takes small steps at high noise and larger ones near the data.

`shift` (default 1, no change) then maps every grid time through s -> shift s / (1 + (shift - 1) s), the
rectified-flow timestep shift of SD3 and FLUX: FLUX.1-dev's resolution-dependent shift is shift = exp(mu),
and diffusers' FlowMatchEulerDiscreteScheduler applies the same map to its sigmas (so a uniform grid with
the same shift reproduces a diffusers pipeline's sigmas).
"""

from __future__ import annotations

import math
from collections.abc import Callable


def _uniform(t: float) -> float:
    return t


def _sqrt(t: float) -> float:
    return math.sqrt(max(0.0, 1.0 - (1.0 - t) ** 2))


TIME_GRIDS: dict[str, Callable[[float], float]] = {"uniform": _uniform, "sqrt": _sqrt}


def shift_time(t: float, shift: float) -> float:
    """The timestep shift s = shift t / (1 + (shift - 1) t); fixes 0 and 1, shift > 1 moves times towards noise."""
    return shift * t / (1.0 + (shift - 1.0) * t)


def time_grid(name: str, steps: int, shift: float = 1.0) -> tuple[float, ...]:
    """The M+1 grid times for `steps` = M denoising steps, from 1 down to exactly 0 (then shifted)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not shift > 0 or math.isinf(shift):
        raise ValueError(f"shift must be a finite number > 0, got {shift}")
    try:
        warp = TIME_GRIDS[name]
    except KeyError:
        raise ValueError(f"unknown time grid {name!r}; allowed: {', '.join(TIME_GRIDS)}") from None
    grid = [shift_time(warp(1.0 - k / steps), shift) for k in range(steps + 1)]
    grid[0], grid[-1] = 1.0, 0.0
    return tuple(grid)
