"""Time grids s_0 = 1 > s_1 > ... > s_M = 0 (spec 1.5).

'uniform': s_k = 1 - k/M. 'sqrt': the paper's adaptive schedule s = sqrt(1 - (1 - t)^2) applied to the
uniform grid, which takes small steps at high noise and larger ones near the data.
"""

from __future__ import annotations

import math
from collections.abc import Callable


def _uniform(t: float) -> float:
    return t


def _sqrt(t: float) -> float:
    return math.sqrt(max(0.0, 1.0 - (1.0 - t) ** 2))


TIME_GRIDS: dict[str, Callable[[float], float]] = {"uniform": _uniform, "sqrt": _sqrt}


def time_grid(name: str, steps: int) -> tuple[float, ...]:
    """The M+1 grid times for `steps` = M denoising steps, from 1 down to exactly 0."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    try:
        warp = TIME_GRIDS[name]
    except KeyError:
        raise ValueError(f"unknown time grid {name!r}; allowed: {', '.join(TIME_GRIDS)}") from None
    grid = [warp(1.0 - k / steps) for k in range(steps + 1)]
    grid[0], grid[-1] = 1.0, 0.0
    return tuple(grid)
